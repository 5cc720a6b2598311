"""Model FLOPs utilization of the `gpt2-124m` preset at context 1024: tokens/s, MFU, peak memory.

    python bench/mfu.py                  # on a GPU: the preset as it stands (bf16, compiled, fused AdamW)
    python bench/mfu.py --small          # a CPU smoke check: 2 x 128 layers, context 128, same 50257 vocab
    torchrun --standalone --nproc_per_node=8 bench/mfu.py   # the same per GPU, data-parallel

It runs the library's own training loop (`nextoken.training.loop.train`) for --warmup + --steps steps
on synthetic text (tokens are tokens: the speed does not depend on what they say), and reads the
figures from the run's metrics.jsonl after the warm-up, where compilation happens. MFU is the exact
training FLOPs per token (nextoken/model/counting.py: 6 per matmul weight plus attention's 12LDT, PaLM
appendix B) times the job's tokens/s over the peak of all its devices (nextoken/hardware.py: the data-sheet
bf16 peak of a known GPU, else the measured matmul rate). Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nextoken.config import build_config
from nextoken.data.prepare import PrepareOptions, prepare
from nextoken.model import param_counts, training_flops_per_token
from nextoken.run import Run
from nextoken.training.distributed import exit_process, init_distributed, shutdown
from nextoken.training.loop import train


def synthetic_corpus(folder: Path, n_bytes: int = 1 << 20) -> Path:
    rng = random.Random(0)
    words = ["def", "return", "self", "import", "class", "for", "in", "if", "else", "value", "x", "y", "(", ")", ":"]
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(4):
        text = " ".join(rng.choice(words) for _ in range(n_bytes // 16))
        (folder / f"doc{d}.txt").write_text(text)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a small model for a CPU smoke check")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (compilation happens here)")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch (default: the preset's 16)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step (default: the preset's 32; 2 with --small)")
    p.add_argument("--compile", default="on", choices=("auto", "on", "off"),
                   help="default on: what `auto` picks for the preset's full-length run (a short benchmark "
                        "run would stay eager under auto, its compile being longer than the run)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    cfg = build_config("gpt2-124m")
    m, t = cfg.model, cfg.train
    m.vocab_size = cfg.data.vocab_size  # 50257: GPT-2's vocabulary, whatever the synthetic data uses
    if args.small:
        m.n_layer, m.n_head, m.d_model, m.block_size = 2, 2, 128, 128
        t.batch_size = 2
    t.batch_size = args.batch_size or t.batch_size
    t.grad_accum = args.grad_accum or (2 if args.small else t.grad_accum)
    t.compile = args.compile
    t.max_steps, t.log_every, t.eval_every, t.ckpt_every, t.eval_tokens = args.warmup + args.steps, 1, 0, 0, 4096
    cfg.optim.warmup_steps = 1
    cfg.log.progress, cfg.log.sample_tokens = "off", 0
    d = init_distributed(t)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp) if d.world == 1 else Path(tempfile.gettempdir()) / "nextoken-bench-mfu"
        data = tmp / "data"
        if d.is_main:
            opts = PrepareOptions(tokenizer="bytes", val_fraction=0.25, progress=False, force=True)
            prepare([str(synthetic_corpus(tmp / "text"))], data, opts, log=lambda s: None)
        d.barrier()
        cfg.data.path = str(data)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if d.is_main:
            shutil.rmtree(tmp / "run", ignore_errors=True)
        d.barrier()
        res = train(cfg, tmp / "run", quiet=True)
        wall = time.perf_counter() - t0
        if res.get("rank", 0) != 0:
            return
        rows = Run(res["run"]).metrics("train")
    timed = [r for r in rows if r["step"] > args.warmup]
    tps = statistics.median(r["tokens_per_s"] for r in timed)
    mfu = [r["mfu"] for r in timed if r["mfu"] is not None]
    if torch.cuda.is_available():
        peak_mem, where = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.get_device_name()
    else:
        peak_mem, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu (process max RSS)"
    out = {"device": where, "world": d.world, "params": param_counts(m).total, "block_size": m.block_size,
           "tokens_per_step": t.batch_size * t.grad_accum * m.block_size, "tokens_per_s": tps,
           "tokens_per_s_per_device": tps / d.world, "flops_per_token": training_flops_per_token(m),
           "mfu": statistics.median(mfu) if mfu else None, "peak_memory_gib": peak_mem, "wall_s": wall}
    if args.json:
        print(json.dumps(out))
        return
    mfu_text = f"{out['mfu']:.1%}" if out["mfu"] is not None else "unknown"
    print(f"{where}: {out['params'] / 1e6:.0f}M params, context {m.block_size}, {out['tokens_per_step']:,} "
          f"tokens/step x {d.world} process(es)\n  {tps:,.0f} tokens/s ({tps / d.world:,.0f} per device)   "
          f"MFU {mfu_text}   peak memory {peak_mem:.2f} GiB   ({wall:.0f}s wall)", file=sys.stdout)


if __name__ == "__main__":
    main()
    if shutdown():  # under torchrun: leave the process group, then the process, without the teardown
        exit_process(0)
