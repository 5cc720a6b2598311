"""Kill a training run with SIGKILL at random moments, some of them in the middle of writing a checkpoint,
resume it with --resume, and check that it ends with bit-identical weights and optimizer state to a run
never interrupted (CPU). Prints how many trials recovered exactly.

    python bench/kill_recovery.py [--data DIR] [--trials 20] [--kills-per-trial 1] [--seed 0] [--json]

tests/test_crash.py runs the same harness with several kills in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# A model small enough that a run takes a few seconds; checkpoints every 5 steps so that kills often
# land near (or inside) a checkpoint write. One thread: the figures must not depend on the thread count.
RUN_FLAGS = ["--model.n_layer", "2", "--model.n_head", "2", "--model.d_model", "64", "--model.block_size", "64",
             "--train.batch_size", "8", "--train.max_steps", "120", "--train.ckpt_every", "5",
             "--train.eval_every", "0", "--train.eval_tokens", "2048", "--optim.warmup_steps", "10",
             "--train.threads", "1", "--log.progress", "off", "--log.sample_tokens", "0"]


@dataclass
class Trial:
    kills: int = 0
    mid_write: int = 0  # kills that left a half-written checkpoint behind
    resumes: int = 0
    exact: bool = False
    notes: list[str] = field(default_factory=list)


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nextoken", "train", *args]


def state_digest(run: Path) -> str:
    """sha256 over the final checkpoint's tensors (weights, AdamW moments and step, RNG state)."""
    import torch
    from safetensors.torch import load_file

    from nextoken.checkpoint import resolve

    ckpt = resolve(run)
    h = hashlib.sha256()
    for fname in ("model.safetensors", "state.safetensors"):
        tensors = load_file(str(ckpt / fname))
        for k in sorted(tensors):
            h.update(k.encode())
            h.update(tensors[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return f"{ckpt.name}:{h.hexdigest()[:16]}"


def reference(data: Path, run: Path, extra: list[str]) -> tuple[str, float]:
    """An uninterrupted run; returns its digest and how long its training part took."""
    proc = subprocess.Popen(_cmd("--data", str(data), "--out", str(run), *RUN_FLAGS, *extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    while not metrics.exists() and proc.poll() is None:
        time.sleep(0.01)
    t0 = time.perf_counter()
    _, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"the reference run failed:\n{err}")
    return state_digest(run), time.perf_counter() - t0


def _kill_while_writing(proc: subprocess.Popen, ckpts: Path, timeout: float) -> bool:
    """Poll for a temporary checkpoint directory and SIGKILL the moment one appears."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.startswith(".tmp-") for p in os.scandir(ckpts)):
            proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.0005)
    return False


def survive(data: Path, run: Path, kills: int, train_s: float, rng: random.Random, extra: list[str]) -> Trial:
    """Start the run, SIGKILL it `kills` times (resuming after each), let the last resume finish."""
    trial = Trial()
    first = True
    while True:
        args = ["--data", str(data), *RUN_FLAGS, *extra] if first else ["--resume"]
        metrics = run / "metrics.jsonl"
        size0 = metrics.stat().st_size if metrics.exists() else -1
        proc = subprocess.Popen(_cmd("--out", str(run), *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        trial.resumes += 0 if first else 1
        first = False
        if trial.kills < kills:
            while proc.poll() is None and (not metrics.exists() or metrics.stat().st_size <= size0):
                time.sleep(0.005)  # wait until this process is training (or resuming)
            if rng.random() < 0.35:
                killed = _kill_while_writing(proc, run / "checkpoints", timeout=train_s)
            else:
                time.sleep(rng.uniform(0, 0.8 * train_s / kills))
                killed = proc.poll() is None
                if killed:
                    proc.send_signal(signal.SIGKILL)
            proc.wait()
            if killed:
                trial.kills += 1
                ckpts = run / "checkpoints"
                if ckpts.is_dir() and any(p.name.startswith(".tmp-") for p in os.scandir(ckpts)):
                    trial.mid_write += 1
                continue
        _, err = proc.communicate()
        if proc.returncode == 0:
            return trial
        trial.notes.append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
        return trial


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="prepared data (default: a bytes-tokenized copy of a few stdlib modules)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--kills-per-trial", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--extra", default="", help="more train flags, space-separated")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    extra = args.extra.split()
    work = Path(tempfile.mkdtemp(prefix="kill-recovery-"))
    try:
        data = Path(args.data) if args.data else _small_data(work)
        ref, train_s = reference(data, work / "reference", extra)
        trials = []
        for i in range(args.trials):
            for _attempt in range(3):  # a trial whose run finished before the kill landed is run again
                shutil.rmtree(work / f"trial-{i:02d}", ignore_errors=True)
                trial = survive(data, work / f"trial-{i:02d}", args.kills_per_trial, train_s, rng, extra)
                if trial.kills:
                    break
            got = state_digest(work / f"trial-{i:02d}") if not trial.notes else None
            trial.exact = got == ref
            trials.append(trial)
            if not args.json:
                print(f"trial {i:2d}: {trial.kills} kill(s), {trial.mid_write} mid-checkpoint-write, "
                      f"{trial.resumes} resume(s): {'bit-identical' if trial.exact else 'DIFFERENT'} "
                      f"{'; '.join(trial.notes)}", flush=True)
        exact = sum(t.exact for t in trials)
        summary = {"trials": len(trials), "exact": exact, "kills": sum(t.kills for t in trials),
                   "mid_write_kills": sum(t.mid_write for t in trials), "reference": ref,
                   "reference_train_s": round(train_s, 2)}
        print(json.dumps(summary) if args.json else
              f"{exact}/{len(trials)} recovered bit-identically ({summary['kills']} SIGKILLs, "
              f"{summary['mid_write_kills']} of them mid-checkpoint-write)")
        return 0 if exact == len(trials) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _small_data(work: Path) -> Path:
    from nextoken.data.prepare import PrepareOptions, prepare
    from nextoken.data.sources import stdlib_files

    files = [str(f) for f in stdlib_files()[:60]]
    out = work / "data"
    prepare(files, out, PrepareOptions(tokenizer="bytes", val_fraction=0.1, progress=False), log=lambda m: None)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
