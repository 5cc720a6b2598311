"""The default run beside other work: its throughput on a quiet machine and with one core kept busy.

    python bench/busy_core.py                      # 40 steps of `nextoken train` (the tiny preset), quiet then busy
    python bench/busy_core.py --steps 100 --rounds 2 --extra "--train.threads 2"

Each round trains the same short run twice as a real `nextoken train` process (default settings: the thread
count it picks itself, compile auto), once with the machine as it is and once beside a busy-loop process pinned
to nothing (the scheduler places it), and reports tokens/s from metrics.jsonl after the first 5 steps, the
threads each run chose (its first line) and busy/quiet time. The goal (issue 23) is a ratio within 1.5. Quote
figures only from a machine with nothing else running: on a shared one "quiet" is not quiet. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP = 5  # steps left out of tokens/s: the first pay for the allocator, the data and any compile


def spin(stop) -> None:
    while not stop.is_set():
        pass


def run(out: Path, steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "nextoken", "train", "--out", str(out), "--train.max_steps", str(steps),
           "--train.log_every", "1", "--train.eval_every", "0", "--log.progress", "off", "--log.sample_tokens", "0",
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the run failed: {proc.stderr.strip().splitlines()[-1:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train" and r["step"] > WARMUP]
    hw = next(r["detail"] for r in rows if r.get("type") == "hardware")
    start = next(r for r in rows if r.get("kind") == "train" and r["step"] == WARMUP)
    seconds, tokens = train[-1]["elapsed_s"] - start["elapsed_s"], train[-1]["tokens"] - start["tokens"]
    return {"tokens_per_s": tokens / seconds, "threads": hw.get("threads"), "compiled": hw.get("compiled")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--extra", default="", help="more `nextoken train` flags, quoted")
    args = ap.parse_args(argv)
    extra = shlex.split(args.extra)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            quiet = run(Path(tmp) / f"quiet-{i}", args.steps, extra)
            stop = multiprocessing.Event()
            hog = multiprocessing.Process(target=spin, args=(stop,), daemon=True)
            hog.start()
            try:
                busy = run(Path(tmp) / f"busy-{i}", args.steps, extra)
            finally:
                stop.set()
                hog.join()
            print(f"round {i + 1}: quiet {quiet['tokens_per_s']:,.0f} tok/s (threads: {quiet['threads']}), "
                  f"one core busy {busy['tokens_per_s']:,.0f} tok/s (threads: {busy['threads']}): "
                  f"{quiet['tokens_per_s'] / busy['tokens_per_s']:.2f}x the quiet time (goal: within 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
