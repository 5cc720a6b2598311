"""The miniature check of docs/scaling.md, run as a new user would: sweep, fit, plan, then the planned command.

    python bench/mini_check.py --out runs/mini [--budgets 1e10,1.8e10,3.2e10,5.6e10,1e11] [--target 1e12]
                               [--tokenizer bytes|bpe] [--schedule cosine|wsd] [--jobs 2] [--dry-run]
                               [--predict-only] [SWEEP CONFIG FLAGS, e.g. --model.block_size 64]

1. `nextoken sweep` on the built-in stdlib corpus (the `scaling` preset: byte-level; --tokenizer bpe for the
   default BPE-4096 corpus) over the budgets;
2. `nextoken fit` of that sweep, with --backtest;
3. `nextoken plan --fit SWEEP --flops TARGET --json`: the prediction, its interval and red flags, and the
   `nextoken train` command it prints;
4. that command, as printed (RUN replaced by OUT/check), then the predicted against the measured val loss.

Each step is a subprocess of the installed CLI, so this is what a user's shell would do; OUT keeps everything,
and the same command continues an interrupted check (the sweep resumes; a finished check run is read back).
Flags it does not know (`--model.block_size 64`) go to the sweep, and so into the config its planned command
trains with. --predict-only stops after the plan, so the prediction can be registered in docs/LOG.md before the
run that checks it; the same command without it then continues. Prints figures; asserts nothing. --dry-run
prints the sweep's runs and an estimate of the wall time from the
FLOPs at --flops-per-s (default 3e10: the project's quiet-core rate on these tiny models, docs/LOG.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def nextoken(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "nextoken", *args]
    print("$ nextoken " + " ".join(shlex.quote(a) for a in args), flush=True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if res.returncode != 0:
        raise SystemExit(f"step failed (exit {res.returncode}); rerun the same command to continue")
    return res.stdout or ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Flags it does not know (e.g. "
                                "--model.block_size 64, --tokens-per-param 15) go to `nextoken sweep`.")
    p.add_argument("--out", required=True, help="directory for the sweep (OUT/sweep), the check run (OUT/check) "
                   "and prediction.json")
    p.add_argument("--budgets", default="1e10,1.8e10,3.2e10,5.6e10,1e11",
                   help="sweep budgets (default: five a quarter decade apart over 1e10-1e11)")
    p.add_argument("--target", type=float, default=1e12, help="the budget predicted, then trained (default 1e12)")
    p.add_argument("--tokenizer", choices=("bytes", "bpe"), default="bytes")
    p.add_argument("--schedule", choices=("cosine", "wsd"), default="cosine", help="the sweep's schedule")
    p.add_argument("--count", choices=("eff", "non-embedding"), default="eff", help="how fit counts N (default eff)")
    p.add_argument("--jobs", type=int, default=1, help="sweep runs trained at once, one core each (default 1)")
    p.add_argument("--seeds", type=int, default=1, help="runs per size with different seeds (default 1)")
    p.add_argument("--flops-per-s", type=float, default=5e9,
                   help="for the --dry-run estimate (default 5e9: what one core sustains on these tiny models, "
                   "per-step overhead included; docs/LOG.md, session 13)")
    p.add_argument("--dry-run", action="store_true", help="print the sweep's runs and a time estimate; train nothing")
    p.add_argument("--predict-only", action="store_true", help="stop after the plan (register it, then rerun)")
    args, extra = p.parse_known_args()
    out = Path(args.out)
    sweep_dir, check_dir = out / "sweep", out / "check"
    common = ["--data.tokenizer", args.tokenizer, "--train.threads", "1", *extra]
    sweep_args = ["sweep", "--out", str(sweep_dir), "--budgets", args.budgets, "--schedule", args.schedule,
                  "--jobs", str(args.jobs), "--seeds", str(args.seeds), *common]
    if args.dry_run:
        print("$ nextoken " + " ".join(shlex.quote(a) for a in (*sweep_args, "--dry-run")), flush=True)
        res = subprocess.run([sys.executable, "-m", "nextoken", *sweep_args, "--dry-run"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        print(res.stdout, end="")
        if res.returncode != 0:
            raise SystemExit(f"the sweep's dry run failed (exit {res.returncode})")
        head = res.stdout.split(" FLOPs in all")[0]  # "sweep: R runs over B budgets, X FLOPs in all"
        sweep_flops = float(head.rsplit(" ", 1)[-1])
        sweep_min = sweep_flops / args.flops_per_s / 60 / max(1, args.jobs)
        print(f"about {sweep_min:.0f} minutes for the sweep ({sweep_flops:.3g} FLOPs at {args.flops_per_s:.2g} FLOPs/s "
              f"a job, {args.jobs} job(s)) and {args.target / args.flops_per_s / 60:.0f} for the check run "
              f"({args.target:.3g} FLOPs), plus evaluation; wsd sweeps less")
        return
    t0 = time.time()
    nextoken(*sweep_args)
    t_sweep = time.time() - t0
    nextoken("fit", str(sweep_dir), "--backtest", "--count", args.count)
    res = json.loads(nextoken("plan", "--fit", str(sweep_dir), "--flops", f"{args.target:g}", "--json",
                              capture=True))
    nextoken("plan", "--fit", str(sweep_dir), "--flops", f"{args.target:g}")
    if args.predict_only:
        (out / "prediction.json").write_text(json.dumps(res, indent=1))
        print(f"prediction written to {out / 'prediction.json'}; register it, then rerun without --predict-only")
        return
    cmd = shlex.split(res["train_command"].replace(" RUN ", f" {check_dir} "))
    t1 = time.time()
    done = check_dir / "metrics.jsonl"
    if done.is_file() and any('"kind": "eval"' in line and f'"step": {res["steps"]},' in line
                              for line in done.read_text().splitlines()):
        print(f"{check_dir} already finished; reading it back")
    else:
        nextoken(*cmd[1:], "--json", "--log.progress", "off")
    rows = [json.loads(line) for line in done.read_text().splitlines()]
    measured = [r for r in rows if r.get("kind") == "eval" and r.get("step") == res["steps"]][-1]["loss"]
    predicted, iv = res["loss"], res.get("interval")
    inside = iv is not None and iv[0] <= measured <= iv[1]
    print(f"\nminiature check ({args.tokenizer}, {args.schedule}, N counted as {res.get('count')}): sweep "
          f"{args.budgets} FLOPs, predicted at {args.target:g}")
    print(f"  planned   {res['shape']['n_layer']} x {res['shape']['d_model']}, N {res['params']:.4g}, "
          f"D {res['tokens']:.4g} ({res['tokens_per_param']:.1f} tokens per N), {res['steps']} steps")
    print(f"  predicted {predicted:.4f}" + (f"  interval [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else "")
          + (f"  RED FLAGS: {'; '.join(res['red_flags'])}" if res.get("red_flags") else ""))
    print(f"  measured  {measured:.4f}  error {predicted / measured - 1:+.2%}  "
          f"({'inside' if inside else 'outside'} the interval)")
    print(f"  wall time: sweep {t_sweep / 60:.1f} min, check run {(time.time() - t1) / 60:.1f} min (this machine, "
          "now: quote only from a quiet one)")


if __name__ == "__main__":
    main()
