"""Muon's Newton–Schulz step on the CPU: fp32 against bf16 (torch.optim.Muon's dtype), for the tiny preset's
block matrices. Prints the time of one optimizer step's orthogonalizations and each dtype's distance from an
fp64 run of the same iteration. Timings are only quotable on a quiet machine.

    python bench/muon_newton_schulz.py [--threads 1] [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

import torch

from nextoken.config import build_config
from nextoken.model import GPT
from nextoken.training.optim import muon_params, orthogonalize

ARGS = (5, (3.4445, -4.7750, 2.0315), 1e-7)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = build_config("tiny")
    cfg.model.vocab_size = 4096
    shapes = [tuple(p.shape) for _, p in muon_params(GPT(cfg.model))]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen) for s in shapes]
    print(f"tiny preset: {len(shapes)} Muon matrices {sorted(set(shapes))}, {a.threads} thread(s)")
    for dtype in (torch.float32, torch.bfloat16):
        err = max((orthogonalize(g, *ARGS, dtype).double() - orthogonalize(g.double(), *ARGS, torch.float64))
                  .abs().max().item() for g in grads)
        best = float("inf")
        for _ in range(a.repeats):  # the minimum: the least disturbed by other load
            t0 = time.perf_counter()
            for g in grads:
                orthogonalize(g, *ARGS, dtype)
            best = min(best, time.perf_counter() - t0)
        print(f"{str(dtype):15s} {best * 1e3:7.2f} ms per step   max |X - X_fp64| {err:.2e}")


if __name__ == "__main__":
    main()
