"""`nextoken plan`, `nextoken sweep`, `nextoken fit`: parse, call nextoken.scaling, print.

Human output goes to stderr; `--json` prints one JSON object on stdout (ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from nextoken.errors import NextokenError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _number(s: str) -> float:
    try:
        return float(s.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number (write e.g. 1e21)") from None


def _numbers(s: str) -> list[float]:
    return [_number(x) for x in s.split(",") if x.strip()]


def add_parsers(sub) -> None:
    from nextoken.scaling.laws import LAWS

    pl = sub.add_parser("plan", help="compute-optimal model size, tokens and loss for a budget; given two of C, N, "
                        "D, the third and what that allocation costs against the optimum")
    pl.add_argument("--flops", type=_number, help="training compute C in FLOPs")
    pl.add_argument("--params", type=_number, help="parameters N")
    pl.add_argument("--tokens", type=_number, help="training tokens D")
    pl.add_argument("--law", default="chinchilla", help=f"{', '.join(LAWS)} (default chinchilla)")
    pl.add_argument("--fit", help="a fit.json from `nextoken fit` (or its sweep directory); overrides --law. The "
                    "loss is approach 3's L(N, D) of the planned model, the power law through the sweep's IsoFLOP "
                    "minima beside it")
    pl.add_argument("--vocab-size", type=int, default=None, help="vocabulary of the shape (default 4096)")
    pl.add_argument("--block-size", type=int, default=None, help="context of the shape (default 128)")
    pl.add_argument("--tokens-per-s", type=_number, help="training throughput, for the time estimate")
    pl.add_argument("--device", help="GPU name (H100, A100, ...) for a time estimate at --mfu")
    pl.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization for --device (default 0.4)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(handler=cmd_plan)

    sw = sub.add_parser("sweep", help="IsoFLOP sweep: models of several sizes per compute budget")
    sw.add_argument("--data", help="prepared data directory (default: the built-in stdlib corpus)")
    sw.add_argument("--out", required=True, help="sweep directory (rerun the same command to continue)")
    sw.add_argument("--budgets", type=_numbers, default=None,
                    help="comma-separated FLOP budgets (default 1e11,3e11,1e12,3e12: 26 runs, about 16 minutes of "
                    "one quiet CPU core; half that with --jobs 2)")
    sw.add_argument("--sizes", type=int, default=7, help="model sizes per budget (default 7)")
    sw.add_argument("--spread", type=float, default=30.0,
                    help="ratio of the largest to the smallest N in a budget (default 30)")
    sw.add_argument("--tokens-per-param", type=float, default=150.0,
                    help="centre each budget's sizes where D = this x N (default 150, measured on CPU budgets; "
                    "Chinchilla's 20 holds at far larger ones)")
    sw.add_argument("--seeds", type=int, default=1,
                    help="runs per size with different seeds (default 1); the fit sees each size's scatter, which at "
                    "CPU budgets is about as large as the differences between neighbouring sizes")
    sw.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once, each in its own process at --train.threads (default 1 thread)")
    sw.add_argument("--preset", help="base config preset (default scaling: byte-level, 16 x 128 tokens a step)")
    sw.add_argument("--config", help="base config TOML file")
    sw.add_argument("--dry-run", action="store_true", help="print the runs and stop")
    sw.add_argument("--json", action="store_true", help="print the points as JSON")
    sw.set_defaults(handler=cmd_sweep, config_overrides=True)  # --section.field VALUE set the base config

    ft = sub.add_parser("fit", help="fit your own scaling law to a sweep (approaches 2 and 3 of Chinchilla)")
    ft.add_argument("sweep", nargs="?", metavar="SWEEP", help="a sweep directory")
    ft.add_argument("--points", help="a CSV with header params,tokens,loss (optional flops,budget)")
    ft.add_argument("--out", help="fit.json path (default SWEEP/fit.json or next to the CSV)")
    ft.add_argument("--plot", help="PNG path (default beside fit.json: isoflop.png)")
    ft.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals (0: none)")
    ft.add_argument("--json", action="store_true")
    ft.set_defaults(handler=cmd_fit)


# ---- plan ------------------------------------------------------------------------------------------

def cmd_plan(args, extra) -> int:
    from nextoken.config import ModelConfig
    from nextoken.scaling.plan import format_plan, plan

    base = ModelConfig()
    if args.vocab_size is not None:
        base.vocab_size = args.vocab_size
    if args.block_size is not None:
        base.block_size = args.block_size
    if base.vocab_size < 1 and args.vocab_size is not None or base.block_size < 2:
        raise NextokenError("--vocab-size must be >= 1 and --block-size >= 2")
    res = plan(args.law, args.flops, args.params, args.tokens, args.fit, base, args.tokens_per_s, args.device,
               args.mfu)
    if args.json:
        print(json.dumps(res))
        return 0
    _err(format_plan(res))
    return 0


# ---- sweep -----------------------------------------------------------------------------------------

def cmd_sweep(args, extra) -> int:
    from nextoken.config import build_config, parse_overrides
    from nextoken.data.builtin import stdlib_data
    from nextoken.scaling.sweep import DEFAULT_BUDGETS, sweep

    cfg = build_config(args.preset or "scaling", args.config, parse_overrides(extra))
    if args.data:
        cfg.data.path = args.data
    if not cfg.data.path:
        cfg.data.path = str(stdlib_data(cfg.data.tokenizer, cfg.data.vocab_size, log=_err))
    cfg.data.path = str(Path(cfg.data.path).resolve())
    if args.jobs < 1:
        raise NextokenError(f"--jobs must be >= 1, got {args.jobs}")
    points = sweep(cfg, args.out, list(args.budgets or DEFAULT_BUDGETS), args.sizes, args.spread,
                   args.tokens_per_param, log=_err, dry_run=args.dry_run, jobs=args.jobs, seeds=args.seeds)
    if args.json:
        print(json.dumps({"sweep": str(args.out), "points": points}))
    elif not args.dry_run:
        _err(f"done: {len(points)} runs in {args.out}; next: nextoken fit {args.out}")
    return 0


# ---- fit -------------------------------------------------------------------------------------------

def cmd_fit(args, extra) -> int:
    from nextoken.data.prepare import read_manifest
    from nextoken.scaling.fit import fit_points, plot_fit, read_points_csv, write_fit
    from nextoken.scaling.plan import load_fit
    from nextoken.scaling.sweep import collect_points

    if (args.sweep is None) == (args.points is None):
        raise NextokenError("give a sweep directory or --points FILE.csv (one of them)")
    if args.bootstrap < 0:
        raise NextokenError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    model = None
    if args.sweep:
        points, base = collect_points(args.sweep)
        model = vars(base.model)
        out = Path(args.out or Path(args.sweep) / "fit.json")
    else:
        points = read_points_csv(args.points)
        out = Path(args.out or Path(args.points).with_suffix(".fit.json"))
    result = fit_points(points, args.bootstrap)
    result["flops_convention"] = "exact" if model else "6ND"
    if model:
        result["model"] = model
        with contextlib.suppress(NextokenError, KeyError, TypeError):  # only a warning in `plan` depends on it
            result["train_tokens"] = int(read_manifest(base.data.path)["splits"]["train"]["tokens"])
        if points:  # how `plan` can print the command that trains its model the way the sweep trained its own
            largest = max(points, key=lambda p: (p["budget"], p["params"]))
            result["train"] = {"config": str((Path(args.sweep) / largest["name"] / "config.toml").resolve()),
                               "tokens_per_step": base.train.batch_size * base.train.grad_accum
                               * base.model.block_size, "warmup_steps": base.optim.warmup_steps}
    write_fit(result, out)
    law = load_fit(out)
    plot = plot_fit(result, args.plot or out.with_name("isoflop.png"), law)
    result.update(fit_json=str(out), plot=str(plot))
    if args.json:
        print(json.dumps(result))
        return 0
    _print_fit(result, law)
    return 0


def _print_fit(r: dict, law) -> None:
    a3, a2 = r["approach3"], r.get("approach2") or {}
    ci = a3.get("ci90", {})

    def show(k: str) -> str:
        return f"{r[k]:.4g}" + (f"  [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "")

    ch = r["chinchilla"]
    lines = [f"{r['n_points']} runs; approach 3, L(N, D) = E + A/N^alpha + B/D^beta"
             + (f" (90% bootstrap intervals, {a3['bootstrap']} resamples)" if ci else "") + ":"]
    lines += [f"  {k:<6} {show(k)}" for k in ("E", "A", "B", "alpha", "beta")]
    lines.append(f"  rms log residual {a3['rms_log_residual']:.4f};  N_opt ∝ C^{a3['a']:.3f}, D_opt ∝ C^{a3['b']:.3f}"
                 f"  (Chinchilla: alpha {ch['alpha']:.3f}, beta {ch['beta']:.3f}, a {ch['a']:.3f}, b {ch['b']:.3f})")
    if "a" in a2:
        lines.append(f"approach 2 (IsoFLOP minima): N_opt ∝ C^{a2['a']:.3f}, D_opt ∝ C^{a2['b']:.3f}")
    for p in a2.get("profiles", []):
        if "params_opt" in p:
            lines.append(f"  C {p['flops']:.3g}: N_opt {p['params_opt']:.4g}, D_opt {p['tokens_opt']:.4g} "
                         f"({p['tokens_opt'] / p['params_opt']:.1f} tokens/param), loss {p['loss_opt']:.4f}"
                         + ("" if p["bracketed"] else "  (outside the sampled sizes: not used)"))
        else:
            lines.append(f"  C {p['flops']:.3g}: no minimum (the profile is not convex)")
    C = max(p["flops"] for p in r["points"])
    N, D = law.optimal(4 * C)
    L2 = law.optimal_loss(4 * C)
    lines.append(f"at 4x the largest budget ({4 * C:.3g} FLOPs): N {N:.4g}, D {D:.4g} ({D / N:.1f} tokens/param), "
                 + f"predicted loss {law.loss(N, D):.4f} (approach 3's L(N, D))"
                 + (f"; the IsoFLOP minima's L_opt = E + k·C^-{r['frontier']['gamma']:.3f} says {L2:.4f}"
                    if L2 is not None else "; fewer than 3 IsoFLOP minima, so no minima's law"))
    lines.append(f"wrote {r['fit_json']} and {r['plot']}; next: nextoken plan --fit {r['fit_json']} --flops C")
    _err("\n".join(lines))
