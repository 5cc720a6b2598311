"""Training throughput on this machine: tokens/s and achieved FLOP/s beside the measured matmul rate.

    python bench/throughput.py                       # tiny preset and 6x384x256, eager and compiled
    python bench/throughput.py --shapes tiny --compile off --steps 30 --repeat 3

Each figure is a real `nextoken train` run (the library's loop, optimizer and loader) on the
prepared built-in corpus (or --data), timed from its metrics.jsonl after the warm-up steps, so
what is measured is what users get. FLOPs per token come from nextoken.model.counting
(6N + 12LDT, PaLM appendix B). The matmul rate is re-measured beside every run, because on a
shared machine both move together; the ratio is the figure to quote. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nextoken import hardware
from nextoken.config import build_config
from nextoken.model import training_flops_per_token
from nextoken.run import Run
from nextoken.training.loop import train

SHAPES = {"tiny": None, "6x384x256": (6, 6, 384, 256)}  # tiny: the preset's own shape


def run_once(shape: str, compile_: str, steps: int, warmup: int, data: str, threads: int) -> dict:
    cfg = build_config("tiny")
    if SHAPES[shape]:
        cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.block_size = SHAPES[shape]
    cfg.data.path = data
    t = cfg.train
    t.max_steps, t.log_every, t.eval_every, t.ckpt_every, t.eval_tokens = warmup + steps, 1, 0, 0, 2048
    t.compile, t.device, t.threads = compile_, "cpu", threads
    cfg.optim.warmup_steps = 1
    cfg.log.progress, cfg.log.sample_tokens = "off", 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, Path(tmp) / "run", quiet=True)
        wall = time.perf_counter() - t0
        rows = Run(Path(tmp) / "run").metrics("train")
    tps = statistics.median(r["tokens_per_s"] for r in rows if r["step"] > warmup)
    hardware._MATMUL.clear()  # measure the ceiling again, now
    mm = hardware.matmul_flops(torch.device("cpu"))
    flops = training_flops_per_token(cfg.model) * tps
    return {"shape": shape, "compile": compile_, "tokens_per_s": tps, "flops_per_s": flops, "matmul_flops": mm,
            "of_matmul": flops / mm, "wall_s": wall, "batch": t.batch_size, "block_size": cfg.model.block_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="tiny,6x384x256", help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--compile", default="off,on", help="off, on, or both (off,on)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (compilation happens here)")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration; the median is printed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data", help="prepared data directory (default: the built-in corpus, BPE 4096)")
    p.add_argument("--json", action="store_true", help="one JSON object per configuration on stdout")
    args = p.parse_args()
    if not args.data:
        from nextoken.data.builtin import stdlib_data

        args.data = str(stdlib_data("bpe", 4096))
    for shape in args.shapes.split(","):
        for comp in args.compile.split(","):
            runs = [run_once(shape, comp, args.steps, args.warmup, args.data, args.threads)
                    for _ in range(args.repeat)]
            best = sorted(runs, key=lambda r: r["of_matmul"])[len(runs) // 2]
            if args.json:
                print(json.dumps(best))
            else:
                print(f"{shape:>10} compile={comp:<3}  {best['tokens_per_s']:>9,.0f} tok/s  "
                      f"{best['flops_per_s'] / 1e9:6.1f} GFLOP/s = {best['of_matmul']:4.0%} of the fp32 matmul rate "
                      f"({best['matmul_flops'] / 1e9:.0f} GFLOP/s)  [{len(runs)} run(s), {best['wall_s']:.0f}s each]",
                      flush=True)


if __name__ == "__main__":
    main()
