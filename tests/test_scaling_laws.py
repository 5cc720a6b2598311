"""Published laws, FLOP accounting and shapes: the paper's own numbers, and PyTorch's FLOP counter."""

from __future__ import annotations

import math

import pytest

from nextoken.config import ModelConfig
from nextoken.model.counting import flops_6nd, measured_flops_per_token, param_counts, training_flops_per_token
from nextoken.scaling.laws import CHINCHILLA, CHINCHILLA_TABLE3, EPOCH, KAPLAN, LAWS
from nextoken.scaling.plan import plan
from nextoken.scaling.shapes import shape_for_params


def test_gpt3_training_compute():
    # Brown et al. 2020, Table D.1: 174.6B parameters on 300B tokens, 3.14e23 FLOPs.
    assert flops_6nd(174.6e9, 300e9) == pytest.approx(3.14e23, rel=0.005)


@pytest.mark.parametrize("params,flops,tokens", CHINCHILLA_TABLE3)
def test_plan_reproduces_chinchilla_table3(params, flops, tokens):
    by_flops = plan("chinchilla-table3", flops=flops)
    assert by_flops["params"] == pytest.approx(params, rel=0.06)
    assert by_flops["tokens"] == pytest.approx(tokens, rel=0.06)
    by_params = plan("chinchilla-table3", params=params)
    assert by_params["flops"] == pytest.approx(flops, rel=0.1)
    assert by_params["tokens_per_param"] == pytest.approx(tokens / params, rel=0.1)


def test_chinchilla_approach3_exponents_and_closed_form():
    # Hoffmann et al. 2022, Table 2, approach 3: a = 0.46, b = 0.54.
    assert CHINCHILLA.a == pytest.approx(0.46, abs=0.005)
    assert CHINCHILLA.b == pytest.approx(0.54, abs=0.005)
    C = 5.76e23  # Gopher's budget
    N, D = CHINCHILLA.optimal(C)
    assert 6 * N * D == pytest.approx(C, rel=1e-9)
    # the closed form (eq. 4) is the minimum of L along 6ND = C
    for f in (0.9, 1.1):
        assert CHINCHILLA.loss(N * f, D / f) > CHINCHILLA.loss(N, D)
    assert EPOCH.a == pytest.approx(0.51, abs=0.01)  # Besiroglu et al. 2024: a and b near 0.5, as approaches 1-2


def test_kaplan_frontier_and_loss():
    N, D = KAPLAN.optimal(1e21)
    assert 6 * N * D == pytest.approx(1e21)
    N2, _ = KAPLAN.optimal(1e22)
    assert math.log10(N2 / N) == pytest.approx(0.73, abs=1e-6)
    # eq. 1.5 reduces to eq. 1.1 when data is unlimited
    assert KAPLAN.loss(1e9, 1e30) == pytest.approx((8.8e13 / 1e9) ** 0.076, rel=1e-6)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_plan_round_trips(name):
    a = plan(name, flops=1e21)
    b = plan(name, params=a["params"])
    c = plan(name, tokens=a["tokens"])
    for other in (b, c):
        assert other["flops"] == pytest.approx(1e21, rel=1e-3)
    assert set(a) >= {"params", "tokens", "flops", "loss", "tokens_per_param", "shape"}


@pytest.mark.parametrize("kw", [{}, {"mlp": "swiglu", "pos": "rope", "tie_embeddings": False, "bias": True},
                                {"norm": "post", "norm_type": "rmsnorm", "n_layer": 3}])
def test_exact_flops_match_pytorch_flop_counter(kw):
    cfg = ModelConfig(**{"n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 64, "vocab_size": 300, **kw})
    exact, measured = training_flops_per_token(cfg), measured_flops_per_token(cfg)
    assert exact == pytest.approx(measured, rel=0.05)


def test_6nd_is_close_to_exact_for_large_models():
    cfg = shape_for_params(1e9, ModelConfig(vocab_size=50257, block_size=2048))
    ratio = training_flops_per_token(cfg) / (6 * param_counts(cfg).total)
    # the attention term 12·L·D·T over 6N ≈ 6·12·L·D² is about T / (6 D)
    assert 1.0 < ratio < 1 + cfg.block_size / (6 * cfg.d_model) + 0.02


@pytest.mark.parametrize("target", [3e4, 1e5, 1e6, 1.3e7, 1e8, 7e10])
def test_shape_hits_the_target_with_a_sane_aspect_ratio(target):
    cfg = shape_for_params(target, ModelConfig(vocab_size=1024))
    n = param_counts(cfg).non_embedding
    assert n == pytest.approx(target, rel=0.2)
    assert cfg.d_model % cfg.n_head == 0
    if target >= 1e6:
        assert 20 <= cfg.d_model / cfg.n_layer <= 200  # Kaplan et al. 2020, Fig. 5
        assert cfg.d_model // cfg.n_head in range(32, 129)
