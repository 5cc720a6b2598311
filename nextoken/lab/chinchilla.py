"""chinchilla: one IsoFLOP profile (scaling/sweep.py) at a small budget: loss against model size at fixed compute,
its minimum and the tokens per parameter there, against Chinchilla's ~20."""

from __future__ import annotations

import math

from nextoken.lab.base import HELD, INCONCLUSIVE, NOT_HELD, Context, Experiment, Verdict, base_config, text_data
from nextoken.run import Run
from nextoken.scaling.fit import fit_approach2
from nextoken.scaling.sweep import sweep

CHINCHILLA = 20.0  # tokens per parameter (Hoffmann et al. 2022, Table 3)
FACTOR = 2.5  # held if the measured ratio is within this factor of 20


class Chinchilla(Experiment):
    name = "chinchilla"
    claim = "at a fixed compute budget the loss is lowest at about 20 training tokens per parameter"
    source = "Hoffmann et al. 2022 (Chinchilla) §3.2, approach 2; the seed lesson §12.7"
    cost = {"smoke": "about 10 s", "small": "4 min on the shared 2-core CPU (5 runs)", "full": "a GPU sweep"}

    def budget_flops(self, ctx: Context) -> float:
        return ctx.pick(3e8, 2e11, 3e13)

    def measure(self, ctx: Context, runs) -> dict:
        base = base_config(ctx, text_data(ctx), **{"stability.policy": "warn"})
        points = sweep(base, ctx.out / "sweep", [self.budget_flops(ctx)], sizes=ctx.pick(3, 5, 7),
                       spread=ctx.pick(8.0, 30.0, 30.0), tokens_per_param=ctx.pick(20.0, 50.0, 20.0), log=ctx.log)
        a2 = fit_approach2(points) or {"profiles": []}
        prof = a2["profiles"][0] if a2["profiles"] else {}
        runs.update({p["name"]: Run(ctx.out / "sweep" / p["name"]) for p in points})
        return {"flops": self.budget_flops(ctx), "points": [
            {k: p[k] for k in ("name", "params", "params_total", "tokens", "flops", "loss")} for p in points],
            "profile": prof}

    def setup(self, f: dict) -> str:
        return (f"`nextoken sweep` at one budget, {f['flops']:.2g} FLOPs, {len(f['points'])} model sizes, each "
                "trained for exactly the budget (its cosine schedule ends there); a parabola in log N through the "
                "final val losses (Chinchilla's approach 2); N counts non-embedding parameters.")

    def table(self, f: dict):
        rows = [[p["name"], f"{p['params']:,}", f"{p['tokens']:,}", f"{p['tokens'] / p['params']:.1f}", p["loss"]]
                for p in f["points"]]
        pr = f["profile"]
        if "params_opt" in pr:
            rows.append(["parabola's minimum", f"{pr['params_opt']:,.0f}", f"{pr['tokens_opt']:,.0f}",
                         f"{pr['tokens_opt'] / pr['params_opt']:.1f}", pr["loss_opt"]])
        return ["run", "N (non-embedding)", "D (tokens)", "D / N", "val loss (nats)"], rows

    def draw(self, f: dict, fig) -> None:
        ax = fig.subplots(1, 1)
        xs = [p["params"] for p in f["points"]]
        ax.plot(xs, [p["loss"] for p in f["points"]], "o", label=f"runs at {f['flops']:.2g} FLOPs")
        pr = f["profile"]
        if pr.get("parabola"):
            lo, hi = math.log(min(xs)), math.log(max(xs))
            grid = [lo + (hi - lo) * i / 50 for i in range(51)]
            c2, c1, c0 = pr["parabola"]
            ax.plot([math.exp(g) for g in grid], [c2 * g * g + c1 * g + c0 for g in grid], "-", label="parabola")
        if "params_opt" in pr:
            ax.axvline(pr["params_opt"], color="tab:green", ls="--",
                       label=f"minimum: {pr['tokens_opt'] / pr['params_opt']:.0f} tokens/param")
        for p in f["points"]:
            ax.annotate(f"{p['tokens'] / p['params']:.3g}", (p["params"], p["loss"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("N, non-embedding parameters (labels: tokens per parameter)")
        ax.set_ylabel("final val loss (nats)")
        ax.legend()

    def verdict(self, f: dict) -> Verdict:
        pr = f["profile"]
        if "params_opt" not in pr:
            return Verdict(INCONCLUSIVE, "the profile has no minimum (the parabola opens downward): the sizes did not "
                           "bracket the optimum")
        ratio = pr["tokens_opt"] / pr["params_opt"]
        total = _total_at(f["points"], pr["params_opt"])
        why = (f"the IsoFLOP minimum lies at N = {pr['params_opt']:,.0f}, D = {pr['tokens_opt']:,.0f}: {ratio:.1f} "
               f"tokens per non-embedding parameter ({pr['tokens_opt'] / total:.1f} per parameter with the embeddings) "
               f"against Chinchilla's {CHINCHILLA:g} (rule: held within a factor {FACTOR})")
        if not pr.get("bracketed"):
            return Verdict(INCONCLUSIVE, why + "; the minimum lies outside the sampled sizes (an extrapolation)")
        if CHINCHILLA / FACTOR <= ratio <= CHINCHILLA * FACTOR:
            return Verdict(HELD, why)
        return Verdict(NOT_HELD, why)


def _total_at(points: list[dict], params: float) -> float:
    """All parameters (embeddings included) of a model of `params` non-embedding ones, interpolated in log-log."""
    import numpy as np

    x, y = np.log([p["params"] for p in points]), np.log([p["params_total"] for p in points])
    return float(np.exp(np.polyval(np.polyfit(x, y, 1), math.log(params))))


EXPERIMENT = Chinchilla()
