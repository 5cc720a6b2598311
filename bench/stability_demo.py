"""The stability demonstration (issue 3): one short CPU run three times, clean, with injected faults and
no policy (warn only logs), and with rollback; plots with the incidents marked, and the final val losses.

    python bench/stability_demo.py --out runs/stability-demo [--img docs/img]

Prints one line per run and the rollback run's gap to the clean one (the goal: under 2%).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from nextoken.run import Run

FAULTS = "lr@500x100,nan@700"  # a 100x LR step (the loss spikes at the next step), then a non-finite loss
COMMON = ["--model.n_layer", "4", "--model.n_head", "4", "--model.d_model", "128", "--model.block_size", "128",
          "--train.batch_size", "8", "--train.max_steps", "1000", "--optim.warmup_steps", "100",
          "--train.eval_every", "100", "--train.eval_tokens", "32768", "--train.ckpt_every", "500",
          "--train.threads", "1", "--log.progress", "off", "--log.sample_tokens", "0"]
RUNS = {"clean": ["--stability.policy", "warn"],
        "faults-no-policy": ["--stability.policy", "warn", "--stability.inject", FAULTS],
        "faults-rollback": ["--stability.policy", "rollback", "--stability.inject", FAULTS]}


def nextoken(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "nextoken", *args], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"nextoken {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/stability-demo")
    ap.add_argument("--img", default=None, help="also write the plots here as stability-NAME.png")
    ap.add_argument("--data", default=None, help="prepared data (default: the built-in stdlib corpus)")
    args = ap.parse_args()
    data = ["--data", args.data] if args.data else []
    finals = {}
    for name, flags in RUNS.items():
        run = Path(args.out) / name
        if not (run / "checkpoints").is_dir():  # an existing run is only plotted again
            nextoken("train", *data, "--out", str(run), "--json", *COMMON, *flags)
        opened = Run(run)
        finals[name] = opened.metrics("eval")[-1]["loss"]
        events = [f"{e['type']}@{e['step']}" for e in opened.events
                  if e["type"] in ("spike", "nan", "skip", "rollback")]
        png = Path(args.img) / f"stability-{name}.png" if args.img else run / "loss.png"
        nextoken("plot", str(run), "--out", str(png))
        print(f"{name:18s} final val loss {finals[name]:.4f}  incidents: {', '.join(events) or 'none'}  plot {png}")
    for name in ("faults-no-policy", "faults-rollback"):
        print(f"{name}: {100 * (finals[name] / finals['clean'] - 1):+.2f}% val loss vs clean")


if __name__ == "__main__":
    main()
