"""A small learning-rate sweep at three sizes of the sweep family: the constant of `shapes.lr_for`.

    python bench/lr_sweep.py --out runs/lr-sweep [--sizes 8e3,2e4,5e4] [--factors 0.0625,0.125,0.25,0.5,1]
                             [--tokens-per-param 20] [--optim adamw|muon] [--data DIR] [--jobs 1]

Each size is the family's model nearest that N_eff (scaling/shapes.py: family_shape) with its per-size batch
(capped, as in sweeps, to leave MIN_RUN_STEPS steps), warmup and beta2 (size_rules); only the peak LR moves,
over `factors` x the rule's LR (lr_for at LR_AT_REF, Porian et al. 2024's constant; with --optim muon, Muon's
LR around muon_lr_for, over 0.25-4x by default). Each run trains
tokens_per_param x N_eff tokens on a cosine schedule on the `scaling` preset's data (byte-level stdlib) and is
scored by its final val loss. Per size, a parabola in log LR through the best point and its neighbours gives
eta*(N); a least-squares line of log eta* on log N gives the exponent (against Porian et al.'s -1/3) and the
constant at -1/3 that `shapes.LR_FITTED` records. Runs already finished in OUT are read back, so the same
command continues a sweep. Prints; asserts nothing. docs/scaling.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from nextoken.config import build_config
from nextoken.data.builtin import stdlib_data
from nextoken.data.prepare import read_manifest
from nextoken.model.counting import effective_params
from nextoken.run import final_eval, read_metrics
from nextoken.scaling.shapes import (
    LR_AT_REF,
    LR_FITTED,
    MUON_LR_FITTED,
    RULE_REF_N,
    TINY_N_EFF,
    Family,
    family_head_size,
    family_shape,
    lr_for,
    muon_lr_for,
    size_rules,
)


def _numbers(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def run_one(cfg, run_dir: Path) -> float:
    from nextoken.training import loop

    done = final_eval(read_metrics(run_dir), cfg.train.max_steps)
    if done is not None:
        return done["loss"]
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    return loop.train(cfg, run_dir, quiet=True)["loss"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", type=_numbers, default=[8e3, 2e4, 5e4], help="N_eff of the three sizes")
    p.add_argument("--factors", type=_numbers, default=None,
                   help="LRs as multiples of the rule's (default 0.0625,0.125,0.25,0.5,1 for AdamW, whose rule is "
                   "Porian's constant; 0.25,0.5,1,2,4 for Muon, whose rule is already this project's)")
    p.add_argument("--tokens-per-param", type=float, default=20.0)
    p.add_argument("--optim", choices=("adamw", "muon"), default="adamw")
    p.add_argument("--data", help="prepared data (default: the scaling preset's byte-level stdlib)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit-only", action="store_true", help="train nothing: fit the finished runs in OUT")
    args = p.parse_args()
    if args.factors is None:
        args.factors = [0.0625, 0.125, 0.25, 0.5, 1.0] if args.optim == "adamw" else [0.25, 0.5, 1.0, 2.0, 4.0]

    base = build_config("scaling")
    base.data.path = args.data or str(stdlib_data(base.data.tokenizer, base.data.vocab_size))
    base.model.vocab_size = read_manifest(base.data.path)["vocab_size"]
    family = Family(family_head_size(min(args.sizes)))
    out = Path(args.out)
    if args.fit_only and not out.is_dir():
        raise SystemExit(f"{out} does not exist; give the --out of an earlier lr_sweep run")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n_target in [] if args.fit_only else args.sizes:
        model = family_shape(n_target, base.model, family)
        n = effective_params(model)
        rules = size_rules(model, tokens=args.tokens_per_param * n)  # the sweeps' rules, the step cap included
        centre = lr_for(n, LR_AT_REF) if args.optim == "adamw" else muon_lr_for(n)  # the grid: Porian's rule
        tokens_per_step = rules.batch_size * rules.grad_accum * model.block_size
        steps = max(20, round(args.tokens_per_param * n / tokens_per_step))
        for f in args.factors:
            cfg = build_config("scaling")
            cfg.data.path = base.data.path
            cfg.model = model
            rules.apply(cfg)
            cfg.optim.name = args.optim
            if args.optim == "adamw":
                cfg.optim.lr = centre * f
            else:
                cfg.optim.muon_lr = centre * f
            cfg.optim.warmup_steps = min(rules.warmup_steps, steps // 5)
            cfg.train.max_steps, cfg.train.eval_every, cfg.train.ckpt_every = steps, 0, 0
            cfg.train.threads, cfg.log.progress, cfg.log.sample_tokens = args.threads, "off", 0
            name = f"{args.optim}-{model.n_layer}x{model.d_model}-lr{centre * f:.3g}"
            loss = run_one(cfg, out / name)
            results.append({"n_eff": n, "shape": [model.n_layer, model.d_model], "lr": centre * f, "loss": loss,
                            "steps": steps, "tokens_per_step": tokens_per_step})
            print(f"N_eff {n:>9.0f} ({model.n_layer}x{model.d_model}) lr {centre * f:.4g}: val loss {loss:.4f} "
                  f"({steps} steps of {tokens_per_step})", flush=True)
    results = _all_finished(out, args.optim, results)  # also those of earlier grids in OUT
    if not results:
        raise SystemExit(f"{out}: no finished {args.optim} runs to fit; run without --fit-only first")
    (out / "lr_sweep.json").write_text(json.dumps(results, indent=1))
    best = []
    for n in sorted({r["n_eff"] for r in results}):
        rows = sorted((r for r in results if r["n_eff"] == n), key=lambda r: r["lr"])
        i = min(range(len(rows)), key=lambda k: rows[k]["loss"])
        lo, hi = max(0, i - 1), min(len(rows), i + 2)
        x = np.log([r["lr"] for r in rows[lo:hi]])
        y = [r["loss"] for r in rows[lo:hi]]
        eta = rows[i]["lr"]
        if len(x) == 3:
            c2, c1, _ = np.polyfit(x, y, 2)
            if c2 > 0:
                eta = float(math.exp(min(max(-c1 / (2 * c2), x.min()), x.max())))
        edge = " (at the edge of the grid)" if i in (0, len(rows) - 1) else ""
        best.append((n, eta))
        print(f"N_eff {n:.0f}: eta* {eta:.4g}{edge}")
    if len(best) >= 2:
        slope, icpt = np.polyfit(np.log([b[0] for b in best]), np.log([b[1] for b in best]), 1)
        ref = RULE_REF_N if args.optim == "adamw" else TINY_N_EFF
        at_ref = float(np.exp(np.mean([math.log(e) + math.log(n / ref) / 3 for n, e in best])))
        # the rule as a sweep applies it (the step cap's sqrt LR scale included) against each size's eta*
        applied = []
        for n, eta in best:
            model = family_shape(n, base.model, family)
            r = size_rules(model, tokens=args.tokens_per_param * n)
            applied.append(eta / (r.lr if args.optim == "adamw" else r.muon_lr))
        off = float(np.exp(np.mean(np.log(applied))))
        rule_points = [(n, eta / a) for (n, eta), a in zip(best, applied, strict=True)]
        _plot(results, best, at_ref, ref, args.optim, rule_points, out / "lr_sweep.png")
        print(f"wrote {out / 'lr_sweep.png'}")
        if args.optim == "adamw":
            print(f"fit: eta* ∝ N_eff^{slope:.3f} (Porian et al. 2024: -1/3); at the exponent -1/3, eta*(108M) = "
                  f"{at_ref:.4g} (Porian's 0.0047), i.e. lr_for(N) = {at_ref:.4g} x (N/108M)^(-1/3); at N_eff 2e4: "
                  f"{lr_for(2e4, at_ref):.4g}")
            now, name = LR_FITTED, "LR_FITTED"
        else:
            print(f"fit: Muon's eta* ∝ N_eff^{slope:.3f} (the rule's exponent: -1/3)")
            now, name = MUON_LR_FITTED, "MUON_LR_FITTED"
        print("eta* over the rule as sweeps apply it (cap's sqrt scale included): "
              + ", ".join(f"{a:.3g}" for a in applied) + f"; geometric mean {off:.3g}, so {name} = {now:.3g} "
              f"would be {now * off:.2g}")


def _all_finished(out: Path, optim: str, results: list[dict]) -> list[dict]:
    """Every finished run of this optimizer in OUT (earlier grids' too), as results rows."""
    from nextoken.config import config_from_dict, load_toml

    seen = {(tuple(r["shape"]), round(r["lr"], 12)) for r in results}
    for run in sorted(out.glob(f"{optim}-*")):
        if not (run / "config.toml").is_file():
            continue
        cfg = config_from_dict(load_toml(run / "config.toml"))
        done = final_eval(read_metrics(run), cfg.train.max_steps)
        lr = cfg.optim.lr if optim == "adamw" else cfg.optim.muon_lr
        key = ((cfg.model.n_layer, cfg.model.d_model), round(lr, 12))
        if done is None or key in seen:
            continue
        seen.add(key)
        results.append({"n_eff": effective_params(cfg.model), "shape": list(key[0]), "lr": lr, "loss": done["loss"],
                        "steps": cfg.train.max_steps,
                        "tokens_per_step": cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size})
    return results


def _plot(results: list[dict], best: list, at_ref: float, ref: float, optim: str, rule_points: list,
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, n in enumerate(sorted({r["n_eff"] for r in results})):
        rows = sorted((r for r in results if r["n_eff"] == n), key=lambda r: r["lr"])
        ax1.plot([r["lr"] for r in rows], [r["loss"] for r in rows], "o-", color=f"C{k}",
                 label=f"N_eff {n:,.0f} ({rows[0]['shape'][0]}x{rows[0]['shape'][1]})")
    ax1.set(xscale="log", xlabel=f"peak LR ({'AdamW' if optim == 'adamw' else 'Muon'})",
            ylabel="final val loss (nats/byte)", title="LR sweep per size")
    ax1.legend(fontsize=8)
    ns = np.array([b[0] for b in best])
    ax2.scatter(ns, [b[1] for b in best], color="black", zorder=3, label="eta* (parabola in log LR)")
    grid = np.geomspace(ns.min() / 2, ns.max() * 2, 20)
    where = "108M" if optim == "adamw" else f"{ref:.3g}"
    ax2.plot(grid, [at_ref * (n / ref) ** (-1 / 3) for n in grid],
             label=f"-1/3 through eta* as measured: {at_ref:.2g} (N/{where})^-1/3")
    if optim == "adamw":
        ax2.plot(grid, [lr_for(n, 0.0047) for n in grid], ls="--", label="Porian et al. 2024: 0.0047 (N/108M)^-1/3")
    else:
        ax2.plot(grid, [muon_lr_for(n) for n in grid], ls="--",
                 label=f"the rule: {MUON_LR_FITTED} (N/{where})^-1/3, before the step cap's scale")
    ax2.scatter([r[0] for r in rule_points], [r[1] for r in rule_points], marker="x", color="C3", zorder=3,
                label="the rule as the sweep applied it (step cap's sqrt scale)")
    ax2.set(xscale="log", yscale="log", xlabel="N_eff", ylabel="optimal peak LR", title="eta*(N)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
