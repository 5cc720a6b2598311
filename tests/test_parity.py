"""Parity with independent references (issue 10): top-k / top-p filtering against a plain
NumPy reading of their definitions, RoPE against the complex-number rotation of Su et al. (2021, eq. 34),
and the FLOP count MFU divides by against PyTorch's FlopCounterMode (tests/test_scaling_laws.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nextoken.generate import filter_logits
from nextoken.model.gpt import apply_rope, rope_tables


def _reference_keep(logits: np.ndarray, top_k: int | None, top_p: float | None) -> set[int]:
    """Top-k keeps every token whose logit is at least the k-th largest; top-p (Holtzman et al. 2020, §3.1)
    then keeps, of those, the smallest most-likely prefix whose renormalized probability reaches p."""
    keep = np.arange(logits.size)
    if top_k is not None and top_k < logits.size:
        kth = np.sort(logits)[::-1][top_k - 1]
        keep = keep[logits >= kth]
    if top_p is not None and top_p < 1:
        order = keep[np.argsort(-logits[keep], kind="stable")]
        p = np.exp(logits[order] - logits[order].max())
        p /= p.sum()
        cum = np.cumsum(p)
        n = int(np.searchsorted(cum, top_p - 1e-12)) + 1  # the first prefix whose mass reaches p
        keep = order[:n]
    return set(keep.tolist())


@pytest.mark.parametrize("top_k, top_p", [(1, None), (5, None), (50, None), (None, 0.1), (None, 0.5), (None, 0.9),
                                          (None, 1.0), (20, 0.8), (3, 0.99)])
def test_top_k_top_p_match_their_definitions(top_k, top_p):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        logits = torch.randn(300, generator=gen) * (0.5 + trial / 5)  # flat to peaked distributions
        got = filter_logits(logits, top_k, top_p)
        kept = set(torch.nonzero(torch.isfinite(got)).flatten().tolist())
        assert kept == _reference_keep(logits.double().numpy(), top_k, top_p), (trial, top_k, top_p)
        assert torch.equal(got[list(kept)], logits[list(kept)])  # kept logits are untouched


def _rope_complex(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as a complex rotation: channel i and channel i + K/2 of a head form z = x_i + j x_{i+K/2}, turned
    by the angle t * base^(-2i/K) at position t (Su et al. 2021, eq. 34, with nextoken's half-split pairing)."""
    B, H, T, K = x.shape
    z = torch.complex(x[..., : K // 2].double(), x[..., K // 2:].double())
    theta = base ** (-torch.arange(0, K, 2, dtype=torch.float64) / K)
    angle = torch.outer(torch.arange(T, dtype=torch.float64), theta)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


@pytest.mark.parametrize("K, T, base", [(8, 16, 10000.0), (32, 128, 10000.0), (64, 40, 500000.0)])
def test_rope_is_the_complex_rotation(K, T, base):
    x = torch.randn(2, 3, T, K, generator=torch.Generator().manual_seed(1))
    got = apply_rope(x, *rope_tables(K, T, base))
    assert torch.allclose(got.double(), _rope_complex(x, base), atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    K, T = 16, 32
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(K, generator=gen), torch.randn(K, generator=gen)
    cos, sin = rope_tables(K, T, 10000.0)
    rq = apply_rope(q.expand(1, 1, T, K).contiguous(), cos, sin)[0, 0]
    rk = apply_rope(k.expand(1, 1, T, K).contiguous(), cos, sin)[0, 0]
    scores = rq @ rk.T  # scores[t, s] = <R_t q, R_s k>
    for offset in (0, 3, 11):
        diag = torch.diagonal(scores, offset)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-4)


def test_the_peak_mfu_divides_by_is_the_best_rate_this_machine_has_shown(tmp_path, monkeypatch):
    # A matmul rate measured while other work runs reads low, and MFU against it read above 100% on a shared CPU.
    from nextoken import hardware

    monkeypatch.setenv("NEXTOKEN_CACHE", str(tmp_path))
    assert hardware._best_known("cpu|x", 50e9) == 50e9  # the first figure is the best known
    assert hardware._best_known("cpu|x", 30e9) == 50e9  # a loaded machine's lower figure does not replace it
    assert hardware._best_known("cpu|x", 70e9) == 70e9  # a better one does
    assert hardware._best_known("cpu|y", 10e9) == 10e9  # per device, dtype, size, threads and torch
    (tmp_path / "matmul-peaks.json").write_text("not json")
    assert hardware._best_known("cpu|x", 20e9) == 20e9  # an unreadable file only loses the memory
