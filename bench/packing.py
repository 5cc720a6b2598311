"""Document-aligned packing against the default run's random windows: what each does to the loss.

    python bench/packing.py                          # the default run (1400 steps) three ways, 1 seed each
    python bench/packing.py --steps 300 --seeds 2    # an indicative short comparison

Trains `nextoken train` (preset tiny, the built-in stdlib corpus) as
  windows   random windows of the token stream (the default),
  bestfit   rows that start at a document, best-fit packed with a BOS (data.packing bestfit),
  masked    bestfit with attention kept inside documents (data.doc_mask),
and reports each run's val bits per byte on the whole val split (the same windows for every variant; a masked
model is scored with its mask, as it was trained), the packer's row statistics (rows, the share that start at
a document, padding) and the loop's training seconds. Prints figures; asserts nothing. Timings are only
comparable on a quiet machine; the losses are comparable anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {"windows": [], "bestfit": ["--data.packing", "bestfit"],
            "masked": ["--data.packing", "bestfit", "--data.doc_mask", "true"]}


def nextoken(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "nextoken", *args, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"nextoken {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def packer_stats(data: Path, block_size: int) -> dict:
    """Rows of the packing plan, the share of them that start at a document, and the share of padding."""
    from nextoken.data.loader import PackedSampler, TokenData

    s = PackedSampler(TokenData(data, "train"), block_size, seed=0)
    starts = s.segments[s.row_start[:-1]]
    shards = [s.data.shards[int(i)] for i in starts[:, 0]]
    at_doc = sum(int(st) < 0 or int(sh[int(st)]) == s.eot for sh, st in zip(shards, starts[:, 1], strict=True))
    real = int(s.segments[:, 2].sum())
    return {"rows": s.n_rows, "start_at_document": at_doc / s.n_rows,
            "padding": 1 - real / (s.n_rows * (block_size + 1)), "train_tokens": s.data.n_tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=0, help="train.max_steps (default 0: the preset's, 1400)")
    p.add_argument("--seeds", type=int, default=1, help="runs per variant, seeds 1337, 1338, ... (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--work", help="directory for the runs (default: a temporary one)")
    args = p.parse_args()
    steps = ["--train.max_steps", str(args.steps), "--train.eval_every", str(args.steps)] if args.steps else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rows = []
        for seed in range(1337, 1337 + args.seeds):  # interleaved, so that every variant sees the same machine
            for name in args.variants.split(","):
                run = work / f"{name}-{seed}"
                res = nextoken("train", "--out", str(run), "--log.progress", "off", "--log.sample_tokens", "0",
                               "--train.threads", str(args.threads), "--train.seed", str(seed), *steps,
                               *VARIANTS[name])
                val = nextoken("eval", str(run))  # the whole val split
                rows.append({"variant": name, "seed": seed, "val_loss": val["loss"], "val_bpb": val["bits_per_byte"],
                             "train_s": res["elapsed_s"], "steps": res["step"]})
                print(json.dumps(rows[-1]), flush=True)
        from nextoken.data.builtin import stdlib_data

        print("packer:", json.dumps(packer_stats(stdlib_data(), 128)))
        for name in args.variants.split(","):
            mine = [r for r in rows if r["variant"] == name]
            each = ", ".join(f"{r['val_bpb']:.4f}" for r in mine)
            print(f"{name:>8}: val {sum(r['val_bpb'] for r in mine) / len(mine):.4f} bits/byte ({each}), "
                  f"train {sum(r['train_s'] for r in mine) / len(mine):.0f} s, {mine[0]['steps']} steps")


if __name__ == "__main__":
    main()
