"""A committed reference loss curve (issue 10): the tiny preset's model and optimizer as they were when the file
was written (AdamW, 4 x 128 with 4 heads; the preset moved to Muon in issue 14, so its fields are spelled out
here), 40 steps on the CPU in fp32 with a fixed seed, must reproduce `tests/data/reference_curve.json`.

The tolerance is not bit-identity, and threads alone cannot pin the numerics: one thread is pinned (so the
machine's core count does not enter), but which kernels run depends on the CPU (AVX-512, AVX2 or none; MKL's
own dispatch), and each sums in another fp32 order. Issue 23: on another AMD EPYC grad_norm came out 3.8e-6
relative from the file. Measured here by running the same test under other kernels (docs/LOG.md,
2026-12-06), the widest drift over the 40 steps: ATEN_CPU_CAPABILITY=default 2.5e-6 on the train loss, 4.2e-7
on the eval loss and bits per byte, 3.7e-5 on grad_norm (a norm of small late gradients, the most sensitive);
avx2 6e-7 / 2e-7 / 1.2e-5; MKL_CBWR=COMPATIBLE 7e-7 / 2e-7 / 1.3e-5; two threads 1.9e-7 / 0 / 1.5e-6. The
tolerances below sit 5-8x above those; a real change is far above them (optim.lr 3e-3 -> 3.003e-3, +0.1%, moves
the train loss 1.8e-3, the eval loss 8.4e-4 and grad_norm 6.4e-2). The LR is computed in Python doubles: exact.
A change that moves the numerics fails here, and must regenerate the file on purpose and say why in its commit:

    NEXTOKEN_WRITE_REFERENCE=1 python -m pytest -q tests/test_reference_curve.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nextoken.config import build_config
from nextoken.training.loop import train

REFERENCE = Path(__file__).parent / "data" / "reference_curve.json"
# relative tolerance of each column: train (loss, grad_norm, lr), eval (loss, bits_per_byte)
REL_TOL = {"train": (2e-5, 2e-4, 1e-12), "eval": (2e-5, 2e-5)}


def _config(data: Path):
    cfg = build_config(None, overrides=[
        ("model.pos", "rope"), ("model.n_layer", "4"), ("model.n_head", "4"), ("model.d_model", "128"),
        ("optim.name", "adamw"), ("optim.lr", "3e-3"), ("train.batch_size", "16"),
        ("train.max_steps", "40"), ("optim.warmup_steps", "10"), ("train.eval_every", "20"),
        ("train.eval_tokens", "4096"), ("train.ckpt_every", "0"), ("train.log_every", "1"),
        ("train.threads", "1"), ("train.compile", "off"), ("train.precision", "fp32"), ("train.device", "cpu"),
        ("log.progress", "off"), ("log.sample_tokens", "0"),
    ])
    cfg.data.path = str(data)
    return cfg


def _curve(run: Path) -> dict[str, list]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"train": [[r["step"], r["loss"], r["grad_norm"], r["lr"]] for r in rows if r["kind"] == "train"],
            "eval": [[r["step"], r["loss"], r["bits_per_byte"]] for r in rows if r["kind"] == "eval"]}


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-12)


def test_tiny_preset_reproduces_the_reference_curve(bytes_data, tmp_path):
    train(_config(bytes_data), tmp_path / "run", quiet=True)
    got = _curve(tmp_path / "run")
    if os.environ.get("NEXTOKEN_WRITE_REFERENCE"):
        rows = {k: ",\n  ".join(json.dumps(r) for r in v) for k, v in got.items()}
        about = "tests/test_reference_curve.py; train: step, loss, grad_norm, lr; eval: step, loss, bits_per_byte"
        REFERENCE.write_text(f'{{"about": "{about}",\n "train": [\n  {rows["train"]}],\n'
                             f' "eval": [\n  {rows["eval"]}]}}\n')
    ref = json.loads(REFERENCE.read_text())
    for kind in ("train", "eval"):
        assert [r[0] for r in got[kind]] == [r[0] for r in ref[kind]], kind
        for g, r in zip(got[kind], ref[kind], strict=True):
            assert all(_close(a, b, t) for a, b, t in zip(g[1:], r[1:], REL_TOL[kind], strict=True)), (kind, g, r)


@pytest.mark.slow
def test_the_reference_curve_holds_under_other_cpu_kernels():
    """Another CPU, as far as one machine can play it: PyTorch's portable (non-vectorized) kernels, whose fp32
    sums run in another order. Failed at the old 1e-6 (grad_norm 3.7e-5 relative)."""
    env = {k: v for k, v in os.environ.items() if k != "NEXTOKEN_WRITE_REFERENCE"} | {"ATEN_CPU_CAPABILITY": "default"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"{__file__}::test_tiny_preset_reproduces_the_reference_curve"],
                         env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:]
