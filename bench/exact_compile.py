"""What exactness costs on a CPU: a training micro-batch's forward and backward, eager against compiled, each with
and without `torch.use_deterministic_algorithms(True)` (what `nextoken train` runs under on a CPU:
device.exact_kernels), and whether repeated passes give the same gradient bits.

    python bench/exact_compile.py                   # the tiny preset's model and micro-batch, 2 threads
    python bench/exact_compile.py --threads 1 --passes 20

Each way is warmed up (compiled: compiled once per mode, as the flag is part of what inductor compiles for),
then the ways are timed in turn, pass by pass, and each one's fastest pass is printed, with the number of
distinct gradients over the passes (1: exact). Quote figures only from a quiet machine. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time

import torch
import torch.utils.deterministic

from nextoken.config import build_config
from nextoken.model import GPT
from nextoken.training.objective import loss_fn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.utils.deterministic.fill_uninitialized_memory = False  # as device.exact_kernels runs
    cfg = build_config(args.preset)
    m = cfg.model
    m.vocab_size = m.vocab_size or cfg.data.vocab_size
    torch.manual_seed(0)
    model = GPT(m)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(m.vocab_size, (cfg.train.batch_size, m.block_size + 1), generator=g)
    step = loss_fn(model, contextlib.nullcontext)
    ways = {"eager": (step, False), "eager, deterministic": (step, True),
            "compiled": (torch.compile(step), False), "compiled, deterministic": (torch.compile(step), True)}
    best = dict.fromkeys(ways, float("inf"))
    grads: dict[str, set] = {k: set() for k in ways}

    def one_pass(name: str) -> float:
        fn, det = ways[name]
        torch.use_deterministic_algorithms(det)
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss, _ = fn(x[:, :-1], x[:, 1:])
        loss.backward()
        dt = time.perf_counter() - t0
        h = hashlib.sha1()
        for p in model.parameters():
            h.update(p.grad.numpy().tobytes())
        grads[name].add(h.hexdigest())
        return dt

    for name in ways:  # warm-up (and the compiles)
        t0 = time.perf_counter()
        one_pass(name)
        print(f"{name}: first pass {time.perf_counter() - t0:.1f} s", flush=True)
    for _ in range(args.passes):
        for name in ways:
            best[name] = min(best[name], one_pass(name))
    torch.use_deterministic_algorithms(False)
    print(f"{args.preset}: micro-batch {tuple(x[:, :-1].shape)}, {args.threads} threads, fastest of {args.passes}")
    for name in ways:
        print(f"  {name:24s} {best[name] * 1e3:8.1f} ms  ({best[name] / best['eager']:.2f}x eager)  "
              f"distinct gradients over {args.passes + 1} passes: {len(grads[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
