"""Wall-clock to a fixed val loss, AdamW against Muon: the speedrun measure of an optimizer.

    python bench/speedrun.py --data DATA                         # on a GPU: gpt2-124m on DATA, target 3.5
    python bench/speedrun.py --preset tiny --target-loss 5.5 --eval-every 20 --max-steps 300   # a CPU smoke check
    python bench/speedrun.py --depth 12 --data DATA              # the dial's depth 12 instead of the preset

DATA is a prepared directory (`nextoken prepare stdlib+tests --vocab-size 50257 --out DATA` for the GPU
figure). For each optimizer (--optims, default adamw,muon) it runs `nextoken train` with an evaluation every
--eval-every steps and watches metrics.jsonl: the first evaluation at or below --target-loss nats/token ends the
run (SIGINT: the loop saves and leaves) and its `elapsed_s` is the figure; a run that never gets there reports its
best loss. Same data, seed and schedule for both; only the optimizer differs (Muon's group at its own LR). Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def evals(run: Path) -> list[dict]:
    """The run's evaluations so far, each with `elapsed_s`: the training clock (wall time since the run began, its
    evaluations included) of the last train line at or before it."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows, clock = [], 0.0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if row.get("kind") == "train":
            clock = row.get("elapsed_s", clock)
        elif row.get("kind") == "eval" and isinstance(row.get("loss"), (int, float)):
            rows.append({**row, "elapsed_s": clock})
    return rows


def race(optim: str, args, work: Path) -> dict:
    run = work / optim
    cmd = [sys.executable, "-m", "nextoken", "train", "--out", str(run), "--log.progress", "off",
           "--optim.name", optim, "--train.eval_every", str(args.eval_every), "--train.log_every", "1",
           "--train.eval_tokens",
           str(args.eval_tokens), "--log.sample_tokens", "0"]
    cmd += ["--preset", args.preset] if not args.depth else ["--preset", args.preset, "--model.depth", str(args.depth)]
    if args.data:
        cmd += ["--data", args.data]
    if args.max_steps:
        cmd += ["--train.max_steps", str(args.max_steps)]
    cmd += shlex.split(args.flags)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hit = None
    while proc.poll() is None:
        time.sleep(1)
        hit = next((r for r in evals(run) if r["loss"] <= args.target_loss), None)
        if hit:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate()
    if proc.returncode not in (0, 130, -signal.SIGINT) and not hit:
        raise SystemExit(f"{optim}: nextoken train failed:\n{err[-2000:]}")
    rows = evals(run)
    best = min(rows, key=lambda r: r["loss"]) if rows else None
    return {"optim": optim, "reached": hit is not None, "step": (hit or best or {}).get("step"),
            "elapsed_s": (hit or {}).get("elapsed_s"), "loss": (hit or best or {}).get("loss")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="prepared data directory (default: the preset's, the built-in corpus)")
    p.add_argument("--preset", default="gpt2-124m", help="config preset (default gpt2-124m)")
    p.add_argument("--depth", type=int, default=0, help="the depth dial at this depth instead of the preset's shape")
    p.add_argument("--target-loss", type=float, default=3.5, help="val loss to reach, nats/token (default 3.5)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations (default 100)")
    p.add_argument("--eval-tokens", type=int, default=1 << 19, help="val tokens per evaluation (default 524288)")
    p.add_argument("--max-steps", type=int, default=0, help="give up after this many steps (default: the preset's)")
    p.add_argument("--optims", default="adamw,muon", help="comma-separated (default adamw,muon)")
    p.add_argument("--flags", default="", help="more `nextoken train` flags for every run")
    p.add_argument("--work", help="directory for the runs (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="one JSON object per optimizer on stdout")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for optim in args.optims.split(","):
            res = race(optim, args, work)
            if args.json:
                print(json.dumps(res), flush=True)
            elif res["reached"]:
                print(f"{optim:>6}: val loss {res['loss']:.4f} <= {args.target_loss} at step {res['step']}, "
                      f"{res['elapsed_s']:.1f} s", flush=True)
            else:
                print(f"{optim:>6}: did not reach {args.target_loss}; best {res['loss']} at step {res['step']}",
                      flush=True)


if __name__ == "__main__":
    main()
