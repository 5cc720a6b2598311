"""Is a sweep's compute frontier shaped by its learning rates? Retune the best run of each budget and compare.

    python bench/frontier_lr.py --sweep runs/mini64c/sweep --out runs/frontier-lr [--factors 0.5,2] [--seeds 2]
                                [--also runs/mini64c/check] [--jobs 2]

For each budget of the sweep, its best run (lowest val loss) is trained again with its AdamW LR times each factor,
and every LR (the sweep's own included) with `--seeds` seeds; `--also` adds finished runs outside the sweep (a
check run at a larger budget) as extra budgets. Prints each budget's losses per LR (mean and half the range over
seeds, the noise the effect is compared to), the tuned frontier (the best mean per budget) beside the sweep's, and
the frontier's log-log slope between neighbouring budgets, -d ln L / d ln C, both ways. If the sweep's frontier
steepens because small budgets' runs are mistuned, the tuned slopes come out even; if the steepening is the
data's (a pre-asymptotic regime), they steepen as much. Each run is `nextoken train --config RUN/config.toml`
with the LR and seed overridden, one thread each, in OUT; a finished run is read back, so the same command
continues. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nextoken.config import config_from_dict, load_toml
from nextoken.model.counting import training_flops
from nextoken.scaling.sweep import collect_points, finished_result


def _result(run_dir: Path) -> dict | None:
    """A finished run's final eval line, else None."""
    if not (run_dir / "config.toml").is_file():
        return None
    return finished_result(run_dir, load_toml(run_dir / "config.toml")["train"]["max_steps"])


def _train(config: Path, out: Path, lr: float, seed: int) -> float:
    if (done := _result(out)) is not None:
        return done["loss"]
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nextoken", "train", "--config", str(config), "--out", str(out), "--optim.lr",
           f"{lr:.6g}", "--train.seed", str(seed), "--train.threads", "1", "--log.progress", "off"]
    with (out.parent / f"{out.name}.log").open("w") as log:
        res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if res.returncode != 0 or (done := _result(out)) is None:
        raise SystemExit(f"{out}: training failed (see {out.parent / (out.name + '.log')}); rerun to continue")
    return done["loss"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sweep", required=True, help="a finished `nextoken sweep` directory")
    p.add_argument("--out", required=True, help="directory for the retuned runs")
    p.add_argument("--factors", default="0.5,2", help="LR multipliers tried beside 1 (default 0.5,2)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per LR (default 2)")
    p.add_argument("--also", action="append", default=[], help="a finished run outside the sweep (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default 2)")
    args = p.parse_args()
    factors = sorted({1.0, *(float(f) for f in args.factors.split(","))})
    points, _ = collect_points(args.sweep)
    best: dict[float, dict] = {}
    for pt in points:
        if pt["budget"] not in best or pt["loss"] < best[pt["budget"]]["loss"]:
            best[pt["budget"]] = pt
    runs = [(b, Path(args.sweep) / pt["name"], pt["loss"]) for b, pt in sorted(best.items())]
    for extra in map(Path, args.also):
        if (r := _result(extra)) is None:
            raise SystemExit(f"--also {extra}: not a finished run")
        model = config_from_dict(load_toml(extra / "config.toml")).model
        runs.append((training_flops(model, r["tokens"]), extra, r["loss"]))  # its budget: exact FLOPs it trained
    runs.sort(key=lambda r: r[0])
    jobs = []
    for budget, run, loss in runs:
        cfg = load_toml(run / "config.toml")
        lr0, seed0 = cfg["optim"]["lr"], cfg["train"]["seed"]
        for f in factors:
            for s in range(args.seeds):
                if f == 1.0 and s == 0:
                    jobs.append((budget, f, s, loss, None))
                else:
                    jobs.append((budget, f, s, None, (run / "config.toml", Path(args.out) / f"{run.name}-lr{f:g}-s{s}",
                                                      lr0 * f, seed0 + s)))
    print(f"{sum(j[4] is not None for j in jobs)} runs to train or read back, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_train, *j[4]) if j[4] else None for j in jobs]
        losses = [j[3] if fut is None else fut.result() for j, fut in zip(jobs, futures, strict=True)]
    table: dict[float, dict[float, list[float]]] = {}
    for (budget, f, _, _, _), loss in zip(jobs, losses, strict=True):
        table.setdefault(budget, {}).setdefault(f, []).append(loss)
    print(f"\n{'budget':>9} {'run':>28} " + " ".join(f"{'lr x' + format(f, 'g'):>15}" for f in factors)
          + f" {'sweep':>7} {'tuned':>7}")
    frontier = []
    for (budget, run, loss), (_, by_f) in zip(runs, sorted(table.items()), strict=True):
        means = {f: sum(v) / len(v) for f, v in by_f.items()}
        cells = " ".join(f"{means[f]:.4f} ±{(max(v) - min(v)) / 2:.4f}" for f, v in by_f.items())
        tuned = min(means.values())
        frontier.append((budget, loss, tuned))
        print(f"{budget:9.3g} {run.name[-28:]:>28} {cells} {loss:7.4f} {tuned:7.4f}")
    print("\nslope -d ln L / d ln C between neighbouring budgets (sweep's runs as trained; tuned):")
    for (c0, l0, t0), (c1, l1, t1) in zip(frontier, frontier[1:], strict=False):
        dc = math.log(c1 / c0)
        print(f"  {c0:.3g} -> {c1:.3g}: {math.log(l0 / l1) / dc:.4f}; {math.log(t0 / t1) / dc:.4f}")


if __name__ == "__main__":
    main()
