"""Fit a scaling law to your own runs: Chinchilla's approaches 2 and 3 (Hoffmann et al. 2022, §3.2-3.3).

Approach 2: per IsoFLOP profile (runs of one compute budget), a parabola of the loss in log N; its
minima give N_opt(C) and D_opt(C), fitted as power laws N_opt ∝ C^a, D_opt ∝ C^b.
Approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimizing the Huber loss (delta 1e-3) of
log LSE(a - alpha log N, b - beta log D, e) - log L with L-BFGS from a grid of initializations
(Hoffmann et al. 2022, eq. 2 and appendix D.2), A = e^a, B = e^b, E = e^e. Confidence intervals come
from refitting on bootstrap resamples of the runs; the same resamples, each with a resampled residual, give
the prediction interval of a new run (`FittedLaw.interval`).

N is N_eff = training FLOPs per token / 6 by default (model/counting.py: effective_params), which makes
C = 6·N·D exact; `count="non-embedding"` fits Kaplan's N instead (docs/scaling.md says why the default moved).
The fit warns where it should not be trusted (`red_flags`), and `backtest` refits without the largest budget
and predicts it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from nextoken.config import ModelConfig
from nextoken.errors import NextokenError
from nextoken.model.counting import effective_params, param_counts, training_flops_per_token
from nextoken.nonfinite import dumps
from nextoken.scaling.laws import CHINCHILLA, ParametricLaw
from nextoken.scaling.shapes import (
    FAMILY_ASPECT,
    RULE_REF_N,
    TINY_N_EFF,
    Family,
    batch_for,
    count_params,
    family_ladder,
    family_of_shapes,
    shape_for_params,
)
from nextoken.scaling.sweep import collect_points, excluded_why

HUBER_DELTA = 1e-3
# Chinchilla's initialization grid (appendix D.2): alpha, beta, e, a, b.
GRID = (np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5), np.arange(-1, 1.01, 0.5), np.arange(0, 26, 5),
        np.arange(0, 26, 5))
KEYS = ("E", "A", "B", "alpha", "beta")


# ---- approach 3 ------------------------------------------------------------------------------------

def _objective(x: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float):
    """Sum of Huber(delta) of the log residuals, divided by delta, and its gradient in (a, b, e, alpha, beta).
    Dividing by delta keeps the objective of order |r| so that L-BFGS's tolerances do not stop it early,
    the failure Besiroglu et al. 2024 (§3) found in the original fit."""
    a, b, e, alpha, beta = x
    t1, t2 = a - alpha * logN, b - beta * logD
    m = np.maximum(np.maximum(t1, t2), e)
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    total = w1 + w2 + w3
    r = m + np.log(total) - logL
    absr = np.abs(r)
    f = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum() / delta
    dr = np.clip(r, -delta, delta) / (delta * total)  # d f / d LSE, times the softmax denominator
    g1, g2 = w1 * dr, w2 * dr
    grad = np.array([g1.sum(), g2.sum(), (w3 * dr).sum(), -(g1 @ logN), -(g2 @ logD)])
    return f, grad


def _grid_objective(logN, logD, logL, delta):
    """The objective at every grid point at once: (n_grid,) values and the (n_grid, 5) grid in x order."""
    alpha, beta, e, a, b = (g.ravel() for g in np.meshgrid(*GRID, indexing="ij"))
    X = np.stack([a, b, e, alpha, beta], axis=1)
    terms = np.stack([X[:, :1] - X[:, 3:4] * logN, X[:, 1:2] - X[:, 4:5] * logD,
                      np.repeat(X[:, 2:3], len(logN), axis=1)])
    r = logsumexp(terms, axis=0) - logL
    f = np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1) / delta
    return f, X


def _lbfgs(x0, logN, logD, logL, delta):
    res = minimize(_objective, x0, args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-8})
    return res.x, float(res.fun)


def grid_starts(N, D, L, delta: float = HUBER_DELTA, n_starts: int = 10) -> list[np.ndarray]:
    """The `n_starts` best points of the initialization grid. The whole grid is scored at once and L-BFGS
    runs only from these (on our tests all 4,500 starts reach the same optimum, ~400x slower)."""
    f, X = _grid_objective(np.log(N), np.log(D), np.log(L), delta)
    return list(X[np.argsort(f)[:n_starts]])


def fit_parametric(N, D, L, delta: float = HUBER_DELTA, starts: list[np.ndarray] | None = None
                   ) -> tuple[np.ndarray, float]:
    """Best (a, b, e, alpha, beta) over L-BFGS runs from `starts` (default: the grid's best), and its objective."""
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    best = None
    for x0 in starts if starts is not None else grid_starts(N, D, L, delta):
        x, fun = _lbfgs(x0, logN, logD, logL, delta)
        # A, B and E are e^a, e^b, e^e: a start that ran off past e^700 has no finite law
        if np.all(np.isfinite(x)) and np.all(np.abs(x[:3]) < 700) and (best is None or fun < best[1]):
            best = (x, fun)
    return best


def _as_law(x: np.ndarray, name: str = "fit") -> ParametricLaw:
    a, b, e, alpha, beta = x
    return ParametricLaw(name, math.exp(e), math.exp(a), math.exp(b), float(alpha), float(beta))


def fit_approach3(N, D, L, bootstrap: int = 100, seed: int = 0, delta: float = HUBER_DELTA) -> dict:
    # BLAS at one thread while L-BFGS runs: on a 5-parameter problem its threads only wait on each other, and
    # on a busy 2-core machine scipy's L-BFGS-B ran 40x slower with them (docs/LOG.md, scaling).
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_approach3(N, D, L, bootstrap, seed, delta)


def _fit_approach3(N, D, L, bootstrap: int, seed: int, delta: float) -> dict:
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    starts = grid_starts(N, D, L, delta)
    x, fun = fit_parametric(N, D, L, delta, starts)
    law = _as_law(x)
    residuals = np.log(L) - np.log(law.loss(N, D))
    out = {**law.to_dict(), "a": law.a, "b": law.b, "objective": fun, "huber_delta": delta,
           "rms_log_residual": float(np.sqrt(np.mean(residuals ** 2))), "log_residuals": residuals.tolist()}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(L), len(L))
            fitted = fit_parametric(N[idx], D[idx], L[idx], delta, [x, *starts[:2]])
            if fitted is None:  # every start of this resample ran off (fit_parametric)
                continue
            lb = _as_law(fitted[0])
            samples.append([lb.E, lb.A, lb.B, lb.alpha, lb.beta, lb.a, lb.b])
        if not samples:
            return out
        s = np.array(samples)
        out["samples"] = s[:, :5].tolist()  # (E, A, B, alpha, beta) per resample: FittedLaw.interval
        out["ci90"] = {k: [float(np.percentile(s[:, i], 5)), float(np.percentile(s[:, i], 95))]
                       for i, k in enumerate((*KEYS, "a", "b"))}
        out["bootstrap"] = len(samples)  # resamples whose fit stayed finite
    return out


# ---- approach 2 ------------------------------------------------------------------------------------

def budget_of(p: dict) -> float | None:
    """A point's compute budget in FLOPs: its sweep's nominal budget, else its own FLOPs; None for neither."""
    return p.get("budget") or p.get("flops")


def group_profiles(points: list[dict]) -> list[list[dict]]:
    """Points of one compute budget together: by the sweep's nominal budget, else by FLOPs within 10%."""
    key = "budget" if all(p.get("budget") for p in points) else "flops"
    groups: list[list[dict]] = []
    for p in sorted(points, key=lambda p: p[key]):
        if groups and abs(math.log(p[key] / groups[-1][0][key])) < math.log(1.1):
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def fit_approach2(points: list[dict]) -> dict | None:
    profiles = []
    for group in group_profiles(points):
        if len({p["params"] for p in group}) < 3:
            continue
        x = np.log([p["params"] for p in group])
        c2, c1, c0 = np.polyfit(x, [p["loss"] for p in group], 2)
        flops = float(np.exp(np.mean(np.log([p["flops"] for p in group]))))
        prof = {"flops": flops, "n_points": len(group), "parabola": [float(c2), float(c1), float(c0)]}
        if c2 > 0:
            xs = -c1 / (2 * c2)
            logD = np.polyfit(x, np.log([p["tokens"] for p in group]), min(2, len(group) - 1))
            prof.update(params_opt=float(np.exp(xs)), tokens_opt=float(np.exp(np.polyval(logD, xs))),
                        loss_opt=float(np.polyval([c2, c1, c0], xs)), bracketed=bool(x.min() <= xs <= x.max()))
        profiles.append(prof)
    # A minimum outside the sampled sizes is an extrapolation of a parabola, not a measurement: it is
    # reported but left out of the power laws (Hoffmann et al. 2022 centre their profiles on the minimum).
    minima = [p for p in profiles if p.get("bracketed")]
    if len(minima) < 2:
        return {"profiles": profiles} if profiles else None
    logC = np.log([p["flops"] for p in minima])
    a, log_kN = np.polyfit(logC, np.log([p["params_opt"] for p in minima]), 1)
    b, log_kD = np.polyfit(logC, np.log([p["tokens_opt"] for p in minima]), 1)
    return {"a": float(a), "b": float(b), "kN": float(np.exp(log_kN)), "kD": float(np.exp(log_kD)),
            "profiles": profiles}


def fit_frontier(a2: dict | None, E: float) -> dict | None:
    """The minima's losses as a power of compute above the irreducible loss, L_opt(C) = E + kL · C^-gamma
    (Kaplan et al. 2020, eq. 1.4, with the offset of Henighan et al. 2020), E from approach 3. It predicts
    the loss of the compute-optimal model from the profiles' minima alone, without approach 3's split of the
    loss into N and D terms, which three or four budgets cannot pin down (docs/LOG.md, scaling laws).
    None with fewer than 3 bracketed minima, or where a minimum lies at or below E."""
    minima = [p for p in (a2 or {}).get("profiles", []) if p.get("bracketed")]
    if len(minima) < 3 or any(p["loss_opt"] <= E for p in minima):
        return None
    logC = np.log([p["flops"] for p in minima])
    neg_gamma, log_kL = np.polyfit(logC, np.log([p["loss_opt"] - E for p in minima]), 1)
    return {"E": float(E), "kL": float(np.exp(log_kL)), "gamma": float(-neg_gamma), "n_minima": len(minima)}


# ---- both, from points -----------------------------------------------------------------------------

COUNT_NAMES = {"eff": "N_eff = training FLOPs per token / 6", "non-embedding": "non-embedding parameters",
               "given": "the N of the points file"}
MAX_EXPONENT_RATIO = 2.0  # alpha and beta further apart than this: a red flag (Chinchilla's are 1.2 apart)
MIN_MINIMA = 3


def fit_points(points: list[dict], bootstrap: int = 100, seed: int = 0, vocab_size: int | None = None,
               count: str = "given") -> dict:
    """Approaches 2 and 3 on points with params, tokens, loss (and flops, budget where known). N is the points'
    `params_eff` with count "eff", `params` (non-embedding) with "non-embedding", and `params` as given with
    "given" (a points file). Points of runs that diverged are left out and listed under `excluded`, each with
    its reason (`excluded_why`)."""
    excluded = [{**{k: p.get(k) for k in ("name", "params", "tokens", "loss")}, "reason": why}
                for p in points if (why := excluded_why(p, vocab_size))]
    points = [dict(p) for p in points if not excluded_why(p, vocab_size)]
    if len(points) < 5:
        raise NextokenError(f"a fit of L(N, D) = E + A/N^alpha + B/D^beta needs at least 5 finished runs; "
                            f"have {len(points)}" + (f" ({len(excluded)} more left out: "
                                                     f"{excluded[0]['reason']})" if excluded else ""))
    for p in points:
        if count == "eff":
            if not p.get("params_eff"):
                raise NextokenError("--count eff needs each point's params_eff (a sweep records it); use "
                                    "--count non-embedding for this sweep")
            p["params_non_embedding"], p["params"] = p["params"], float(p["params_eff"])
        p.setdefault("flops", 6.0 * p["params"] * p["tokens"])
    a3 = fit_approach3([p["params"] for p in points], [p["tokens"] for p in points],
                       [p["loss"] for p in points], bootstrap, seed)
    a2 = fit_approach2(points)
    use2 = a2 is not None and "a" in a2
    result = {
        **{k: a3[k] for k in KEYS},
        "count": count,
        "a": a2["a"] if use2 else a3["a"],
        "b": a2["b"] if use2 else a3["b"],
        "a_source": "approach2" if use2 else "approach3",
        "approach2": a2,
        "approach3": a3,
        "frontier": fit_frontier(a2, a3["E"]),
        "chinchilla": {"alpha": CHINCHILLA.alpha, "beta": CHINCHILLA.beta, "a": CHINCHILLA.a, "b": CHINCHILLA.b},
        "n_points": len(points),
        "points": [{k: p.get(k) for k in ("params", "tokens", "flops", "loss", "budget", "name",
                                          "params_non_embedding", "params_eff")} for p in points],
        "excluded": excluded,
    }
    result["red_flags"] = red_flags(result)
    return result


def red_flags(r: dict) -> list[str]:
    """Reasons not to trust a fit's extrapolation, one line each (docs/scaling.md): E run to a bound (to zero,
    or up to the lowest measured loss, where the fit has swapped E for a power-law term), alpha and beta far
    apart (Chinchilla's 0.34 and 0.28; a ratio past MAX_EXPONENT_RATIO means one of them is carried by the
    noise), fewer than MIN_MINIMA IsoFLOP profiles with their minimum inside the sampled sizes, and approaches 2
    and 3 disagreeing on the allocation exponent a by more than 0.1 (Hoffmann et al. 2022, Table 2: theirs agree
    within 0.04), and the measured frontier still steepening where the law has flattened (`steepening`). `fit
    --backtest` adds one more: the refit missing its left-out budget's best run by over BACKTEST_TOLERANCE."""
    flags = []
    low = min(p["loss"] for p in r["points"])
    if r["E"] < 0.05 * low:
        flags.append(f"E = {r['E']:.3g} ran to zero (the lowest loss measured is {low:.3f}): the irreducible loss "
                     "is not pinned down")
    elif r["E"] > 0.97 * low:
        flags.append(f"E = {r['E']:.3g} is at the lowest loss measured, {low:.3f}: a power-law term took its place")
    ratio = max(r["alpha"], r["beta"]) / max(min(r["alpha"], r["beta"]), 1e-9)
    if ratio > MAX_EXPONENT_RATIO:
        flags.append(f"alpha {r['alpha']:.3f} and beta {r['beta']:.3f} are {ratio:.1f}x apart: one of them is "
                     "carried by too few or too noisy points")
    minima = sum(1 for p in (r.get("approach2") or {}).get("profiles", []) if p.get("bracketed"))
    if minima < MIN_MINIMA:
        flags.append(f"{minima} IsoFLOP profile(s) with a minimum inside the sampled sizes; at least {MIN_MINIMA} "
                     "are needed (centre the sizes on this fit: `nextoken sweep --around FIT`)")
    a2 = r.get("approach2") or {}
    if "a" in a2 and abs(a2["a"] - r["approach3"]["a"]) > 0.1:
        flags.append(f"approaches 2 and 3 disagree on N_opt ∝ C^a: {a2['a']:.3f} against "
                     f"{r['approach3']['a']:.3f}")
    if steep := steepening(r):
        flags.append(f"the best runs' loss falls as C^-{steep['measured']:.3f} over the top {steep['budgets']} "
                     f"budgets, {steep['ratio']:.1f}x faster than the law allows at the largest "
                     f"(C^-{steep['law']:.3f}): the data have not reached the law's bend, so E = {r['E']:.3g} is "
                     "likely too high and the extrapolation pessimistic (refit from a higher budget: `fit "
                     "--min-budget C`)")
    return flags


BACKTEST_TOLERANCE = 0.02  # a backtest's best-run error beyond this (the goal of a 10x check): a red flag
MAX_STEEPENING = 1.5  # the measured top-budget slope this many times the law's: a red flag


def frontier_slope(E: float, A: float, B: float, alpha: float, beta: float, C: float) -> float:
    """-d ln L_opt / d ln C of L(N, D) = E + A/N^alpha + B/D^beta along its compute-optimal frontier at C = 6ND
    (Hoffmann et al. 2022, eq. 4: N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)));
    a dimensionless slope, 0 where the loss has reached E."""
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))

    def L(c: float) -> float:
        n = G * (c / 6) ** (beta / (alpha + beta))
        return E + A / n ** alpha + B / (c / (6 * n)) ** beta

    return float(math.log(L(C) / L(C * 1.1)) / math.log(1.1))


def steepening(r: dict) -> dict | None:
    """Whether the measured frontier is still steepening where the law has already flattened: the log-log slope
    of the best run's loss over the top three budgets (at least three budgets) against frontier_slope at the
    largest; a dict with both and their ratio when it exceeds MAX_STEEPENING, else None. A sum of power laws
    with an offset can only flatten with C; data that fall faster at the top budgets than at the bottom are
    below the scale where the law holds (at byte level on CPU budgets: docs/LOG.md, session 13), and every
    extrapolation of such a fit under-predicts the gain."""
    pts = [p for p in r.get("points", []) if p.get("loss") and budget_of(p)]
    groups = group_profiles(pts) if pts else []
    if len(groups) < 3:
        return None
    top = groups[-3:]
    logC = [float(np.mean(np.log([budget_of(p) for p in g]))) for g in top]
    logL = [math.log(min(p["loss"] for p in g)) for g in top]
    measured = -float(np.polyfit(logC, logL, 1)[0])
    law = frontier_slope(r["E"], r["A"], r["B"], r["alpha"], r["beta"], math.exp(logC[-1]))
    if measured > 0 and measured > MAX_STEEPENING * max(law, 1e-9):
        return {"measured": measured, "law": law, "ratio": measured / max(law, 1e-9), "budgets": len(top)}
    return None


def backtest(points: list[dict], vocab_size: int | None = None, count: str = "given",
             bootstrap: int = 100) -> dict:
    """Refit without the largest budget and predict its runs: the error of a one-budget extrapolation, measured
    before any money is spent on the real one. Per left-out run the predicted and measured loss; for the
    budget's best run, also its prediction interval (FittedLaw.interval). Raises NextokenError with fewer than
    two budgets or too few runs left."""
    groups = group_profiles([dict(p) for p in points])
    if len(groups) < 2:
        raise NextokenError("--backtest needs runs of at least two budgets")
    held = groups[-1]
    names = {id(p) for p in held}
    rest = [p for g in groups[:-1] for p in g if id(p) not in names]
    r = fit_points(rest, bootstrap, vocab_size=vocab_size, count=count)
    law = FittedLaw(_as_law_from(r), None, "backtest", samples=r["approach3"].get("samples"),
                    residuals=r["approach3"]["log_residuals"])
    rows = []
    for p in held:
        n = float(p["params_eff"]) if count == "eff" else float(p["params"])
        pred = float(law.loss(n, p["tokens"]))
        rows.append({"name": p.get("name"), "params": n, "tokens": p["tokens"], "loss": p["loss"],
                     "predicted": pred, "error": pred / p["loss"] - 1, "interval": law.interval(n, p["tokens"])})
    best = min(rows, key=lambda x: x["loss"])
    return {"budget": float(np.exp(np.mean(np.log([p["flops"] if p.get("flops") else 6 * p["params"] * p["tokens"]
                                                  for p in held])))),
            "refit_on": len(rest), "red_flags": r["red_flags"], "runs": rows, "best": best,
            "mean_abs_error": float(np.mean([abs(x["error"]) for x in rows])),
            "law": {k: r[k] for k in KEYS}}


def format_backtest(bt: dict) -> str:
    lines = [f"backtest: refit on {bt['refit_on']} runs without the largest budget ({bt['budget']:.3g} FLOPs), "
             f"then predicted its {len(bt['runs'])} runs:"]
    for x in sorted(bt["runs"], key=lambda x: x["params"]):
        lo, hi = x["interval"] or (float("nan"), float("nan"))
        lines.append(f"  N {x['params']:.4g}, D {x['tokens']:.4g}: predicted {x['predicted']:.4f} "
                     f"[{lo:.4f}, {hi:.4f}], measured {x['loss']:.4f} ({x['error']:+.1%})"
                     + ("" if lo <= x["loss"] <= hi else "  outside the interval"))
    b = bt["best"]
    lines.append(f"  the budget's best run: predicted {b['predicted']:.4f}, measured {b['loss']:.4f} "
                 f"({b['error']:+.1%}); mean |error| {bt['mean_abs_error']:.1%}")
    lines += [f"  red flag of the refit: {f}" for f in bt["red_flags"]]
    return "\n".join(lines)


def read_points_csv(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise NextokenError(f"--points {path} does not exist") from None
    except UnicodeDecodeError:
        raise NextokenError(f"--points {path} is not a text CSV file") from None
    need = {"params", "tokens", "loss"}
    if not rows or not need <= set(rows[0]):
        raise NextokenError(f"--points {path} needs a header with params,tokens,loss (and rows under it)")
    points = []
    for i, row in enumerate(rows, 2):
        try:
            p = {k: float(row[k]) for k in need}
            for opt in ("flops", "budget"):
                if row.get(opt):
                    p[opt] = float(row[opt])
        except (TypeError, ValueError):
            raise NextokenError(f"--points {path}, line {i}: params, tokens and loss must be numbers") from None
        points.append(p)
    return points


def write_fit(result: dict, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(dumps(result, indent=1))  # strict JSON (docs/metrics.md)
    tmp.replace(path)
    return path


# ---- the plot ----------------------------------------------------------------------------------------

def plot_fit(result: dict, path: str | Path, law=None) -> Path:
    """IsoFLOP profiles with their parabolas and minima (left); the minima against C with the fitted
    frontiers of approaches 2 and 3 (right). `law` allocates for approach 3 (default: 6ND closed form)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    a2 = result.get("approach2") or {}
    law = law or _as_law_from(result)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    profiles = a2.get("profiles", [])
    groups = group_profiles([dict(p) for p in points])
    cmap = plt.get_cmap("viridis")
    for i, group in enumerate(groups):
        color = cmap(i / max(1, len(groups) - 1))
        C = float(np.exp(np.mean(np.log([p["flops"] for p in group]))))
        ax1.scatter([p["params"] for p in group], [p["loss"] for p in group], color=color, s=22,
                    label=f"C = {C:.2g}", zorder=3)
        prof = next((p for p in profiles if abs(math.log(p["flops"] / C)) < 0.1), None)
        if prof:
            xs = np.linspace(math.log(min(p["params"] for p in group)) - 0.3,
                             math.log(max(p["params"] for p in group)) + 0.3, 100)
            ax1.plot(np.exp(xs), np.polyval(prof["parabola"], xs), color=color, lw=1)
            if prof.get("bracketed"):
                ax1.scatter([prof["params_opt"]], [prof["loss_opt"]], color=color, marker="*", s=160,
                            edgecolor="black", zorder=4)
    xlabel = {"eff": "N_eff (training FLOPs per token / 6)",
              "non-embedding": "non-embedding parameters N"}.get(result.get("count"), "parameters N")
    ax1.set(xscale="log", xlabel=xlabel, ylabel="val loss (nats/token)",
            title="IsoFLOP profiles (approach 2)")
    ax1.legend(fontsize=8)
    minima = [p for p in profiles if p.get("bracketed")]
    Cs = np.array([p["flops"] for p in points])
    grid = np.geomspace(Cs.min() / 2, Cs.max() * 8, 30)
    for p in minima:
        ax2.scatter([p["flops"]], [p["params_opt"]], color="C0", zorder=3)
        ax2.scatter([p["flops"]], [p["tokens_opt"]], color="C1", zorder=3)
    if "a" in a2:
        ax2.plot(grid, a2["kN"] * grid ** a2["a"], color="C0", lw=1, label=f"N_opt ∝ C^{a2['a']:.2f} (IsoFLOP minima)")
        ax2.plot(grid, a2["kD"] * grid ** a2["b"], color="C1", lw=1, label=f"D_opt ∝ C^{a2['b']:.2f} (IsoFLOP minima)")
    opt = np.array([law.optimal(c) for c in grid])
    ax2.plot(grid, opt[:, 0], color="C0", ls="--", lw=1, label="N_opt, approach 3")
    ax2.plot(grid, opt[:, 1], color="C1", ls="--", lw=1, label="D_opt, approach 3")
    ax2.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="N (params) or D (tokens)",
            title=f"frontier: alpha {result['alpha']:.3f}, beta {result['beta']:.3f}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _as_law_from(result: dict) -> ParametricLaw:
    return ParametricLaw("fit", *(float(result[k]) for k in KEYS))


# ---- a fit, read back --------------------------------------------------------------------------------

PI_LEVEL = 90  # the prediction interval's coverage, percent


LADDER_MAX_N = 1e11  # the largest N whose optimum FittedLaw.optimal searches over shapes


@dataclass(frozen=True)
class FittedLaw:
    """A law fitted by `nextoken fit`. When it comes from a sweep, its budgets were counted exactly
    (training_flops_per_token of each model), so it allocates C over the sweep's shape family (its `family`, or
    for older fits shapes.shape_for_params) of the sweep's vocabulary and context, not by 6ND; N is counted as
    the fit counted it (`count`: eff, non-embedding or given)."""

    law: ParametricLaw
    base: ModelConfig | None
    path: str
    frontier: tuple[float, float, float] | None = None  # (E, kL, gamma): L_opt(C) = E + kL * C^-gamma
    train_tokens: int | None = None  # the sweep's train split: a plan past one pass over it is warned about
    train: dict | None = None  # how the sweep trained: plan's command trains its model the same way
    count: str = "given"
    family: Family | None = None
    samples: list | None = None  # bootstrap resamples' (E, A, B, alpha, beta)
    residuals: list | None = None  # the fit's log residuals
    red_flags: tuple[str, ...] = ()
    bytes_per_token: float | None = None  # of the sweep's data: per-byte ratios in plan
    max_flops: float | None = None  # the largest budget fitted: how far `plan` extrapolates
    backtested: bool = False  # whether `fit --backtest` ran, whose miss is one of the red flags

    def optimal_loss(self, C: float) -> float | None:
        """The loss of the compute-optimal model at C from the power law through the sweep's IsoFLOP minima
        (fit_frontier), or None where the fit has fewer than 3 of them. `plan --fit` prints it beside its
        prediction, approach 3's L(N, D) of the planned model: checked at 4x the largest budget of sweeps with 3+
        budgets, this law missed by -3.0, -3.7, -3.7 and -0.3%, approach 3 by -2.3, -0.8, -0.9 and +1.4%
        (docs/LOG.md, "on twice the data" and "a GPU at last")."""
        if self.frontier is None:
            return None
        E, kL, gamma = self.frontier
        return E + kL * C**-gamma

    @property
    def name(self) -> str:
        return f"fit:{self.path}"

    def loss(self, N, D):
        return self.law.loss(N, D)

    def n_of(self, cfg: ModelConfig) -> float:
        """A shape's N as this fit counts it."""
        return count_params(cfg, "non-embedding" if self.count == "given" else self.count)

    def interval(self, N: float, D: float, level: float = PI_LEVEL) -> tuple[float, float] | None:
        """The prediction interval of one new run's loss at (N, D): each bootstrap resample's law plus a
        residual drawn from the fit's own (the run-to-run scatter); None without resamples."""
        if not self.samples or not self.residuals:
            return None
        rng = np.random.default_rng(0)
        s = np.asarray(self.samples, dtype=float)
        pred = s[:, 0] + s[:, 1] / N ** s[:, 3] + s[:, 2] / D ** s[:, 4]
        res = np.asarray(self.residuals, dtype=float)
        res = res * math.sqrt(len(res) / max(1, len(res) - 5))  # residuals of a 5-constant fit understate the scatter
        draws = np.log(np.repeat(pred, 20)) + rng.choice(res, 20 * len(pred))
        lo, hi = np.percentile(np.exp(draws), [(100 - level) / 2, (100 + level) / 2])
        return float(lo), float(hi)

    def optimal(self, C: float) -> tuple[float, float]:
        """The compute-optimal (N, D) at C: over the family's shapes where N is within LADDER_MAX_N, else the
        law's own 6ND optimum (there the embeddings and attention the shapes account for are a vanishing share
        of the FLOPs, and a ladder of one-head steps would be millions of shapes long)."""
        if self.base is None or self.law.optimal(C)[0] > LADDER_MAX_N:
            return self.law.optimal(C)
        cfg = self.optimal_shape(C)
        return self.n_of(cfg), C / training_flops_per_token(cfg)

    def optimal_shape(self, C: float) -> ModelConfig:
        """The shape minimizing the predicted loss at C, each shape trained for C / its FLOPs per token: over
        the family's ladder (or, for fits without one, shape_for_params over 4 decades of N) around the 6ND
        optimum, which embeddings and attention move when N is not N_eff."""
        N0, _ = self.law.optimal(C)
        if self.family is not None:
            shapes = family_ladder(self.base, self.family, N0 * 100)
        else:
            shapes = [shape_for_params(n, self.base) for n in np.exp(np.linspace(math.log(N0 / 100),
                                                                                 math.log(N0 * 100), 321))]
        return min(shapes, key=lambda cfg: self.law.loss(self.n_of(cfg), C / training_flops_per_token(cfg)))


def load_fit(path: str | Path) -> FittedLaw:
    """A fit.json written by `nextoken fit` (or the sweep directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "fit.json"
    if not p.is_file():
        raise NextokenError(f"--fit {path}: no fit.json there; run `nextoken fit SWEEP` first")
    try:
        data = json.loads(p.read_text())
        law = ParametricLaw(f"fit:{p}", *(float(data[k]) for k in KEYS))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise NextokenError(f"--fit {p} is not a fit.json written by `nextoken fit` ({type(e).__name__}: {e}); "
                            "fit again") from None
    if not all(math.isfinite(v) and v > 0 for v in (law.A, law.B, law.alpha, law.beta)) or not math.isfinite(law.E):
        raise NextokenError(f"--fit {p} holds non-finite or non-positive constants; fit again")
    fr = data.get("frontier")
    frontier = None
    if isinstance(fr, dict) and all(isinstance(fr.get(k), int | float) for k in ("E", "kL", "gamma")):
        frontier = (float(fr["E"]), float(fr["kL"]), float(fr["gamma"]))
    base = None
    if isinstance(data.get("model"), dict):
        base = ModelConfig()
        for k, v in data["model"].items():
            if hasattr(base, k):
                setattr(base, k, v)
    train_tokens = data.get("train_tokens") if isinstance(data.get("train_tokens"), int) else None
    train = data.get("train")
    if not (isinstance(train, dict) and isinstance(train.get("config"), str)
            and isinstance(train.get("tokens_per_step"), int) and isinstance(train.get("warmup_steps"), int)):
        train = None
    # fits from before the count was recorded counted a sweep's N as non-embedding
    count = data.get("count") or ("non-embedding" if base is not None else "given")
    fam = data.get("family")
    family = Family(int(fam["head_size"]), int(fam.get("aspect", FAMILY_ASPECT))) if isinstance(fam, dict) else None
    a3 = data.get("approach3") if isinstance(data.get("approach3"), dict) else {}
    budgets = [budget_of(pt) for pt in data.get("points") or () if isinstance(pt, dict)]
    max_flops = max((float(b) for b in budgets if isinstance(b, int | float)), default=None)
    return FittedLaw(law, base, str(p), frontier, train_tokens, train, count, family, a3.get("samples"),
                     a3.get("log_residuals"), tuple(data.get("red_flags") or ()), data.get("bytes_per_token"),
                     max_flops, isinstance(data.get("backtest"), dict))


# Bytes of text per token of the built-in stdlib corpus under its default tokenizer, BPE with 4096 entries
# (data/builtin.py), measured on its train split (docs/LOG.md, session 12): what a byte-level run's tokens per
# parameter are divided by to compare with a subword ratio such as Chinchilla's 20.
BPE_BYTES_PER_TOKEN = 3.48


def _bytes_per_token(manifest: dict) -> float:
    train = manifest["splits"]["train"]
    return float(train["bytes"]) / float(train["tokens"])


def ratios(tokens: float, n: float, n_other: float | None, bytes_per_token: float | None) -> dict:
    """Tokens per parameter both ways (per N_eff and per non-embedding N, where both are known), and for data
    not tokenized by a BPE, per byte and per BPE-token equivalent (BPE_BYTES_PER_TOKEN bytes a token)."""
    out = {"per_param": tokens / n}
    if n_other:
        out["per_other_param"] = tokens / n_other
    if bytes_per_token and bytes_per_token < 0.8 * BPE_BYTES_PER_TOKEN:
        out["bytes_per_param"] = tokens * bytes_per_token / n
        out["bpe_tokens_per_param"] = tokens * bytes_per_token / BPE_BYTES_PER_TOKEN / n
    return out


def format_ratios(r: dict, count: str) -> str:
    """`ratios` in words: "59.0 tokens per N_eff = 118 per non-embedding N; 59 bytes = 16.9 BPE-token equivalents"."""
    name, other = ("N_eff", "non-embedding N") if count == "eff" else ("non-embedding N", "N_eff")
    if count == "given":
        name = "N"
    text = f"{r['per_param']:.1f} tokens per {name}"
    extra = []
    if "per_other_param" in r:
        extra.append(f"{r['per_other_param']:.1f} per {other}")
    if "bytes_per_param" in r:
        extra.append(f"{r['bytes_per_param']:.1f} bytes = {r['bpe_tokens_per_param']:.1f} BPE-token equivalents "
                     f"at {BPE_BYTES_PER_TOKEN} bytes a BPE token")
    return text + (f" = {'; '.join(extra)}" if extra else "")


def _family_of(points: list[dict]) -> Family | None:
    """The sweep's family, read off its runs (sweeps from before the family, and --dial sweeps, have none)."""
    return family_of_shapes((p.get("d_model"), p.get("n_head")) for p in points)


def _capped_scale(spec: dict, block_size: int) -> float:
    """The factor shapes.size_rules multiplied a sweep run's LRs by where the step cap cut its batch below N's:
    (its batch / N's batch)^lr_batch_exponent; 1 where it had none."""
    rules = spec["rules"]
    if not (exponent := rules.get("lr_batch_exponent", 0.0)):
        return 1.0
    micro, accum = batch_for(spec["params_eff"], block_size)
    return (rules["batch_size"] * rules["grad_accum"] / (micro * accum)) ** exponent


def lr_at_ref_of(spec: dict, block_size: int) -> float:
    """The AdamW LR constant at RULE_REF_N a sweep's run was trained under (shapes.lr_for), its capped-batch scale
    undone."""
    return spec["rules"]["lr"] * (spec["params_eff"] / RULE_REF_N) ** (1 / 3) / _capped_scale(spec, block_size)


def muon_lr_at_tiny_of(spec: dict, block_size: int) -> float:
    """The Muon LR constant at TINY_N_EFF a sweep's run was trained under (shapes.muon_lr_for), its capped-batch
    scale undone: so that `plan` trains Muon as the sweep did, whatever the constant is today."""
    return spec["rules"]["muon_lr"] * (spec["params_eff"] / TINY_N_EFF) ** (1 / 3) / _capped_scale(spec, block_size)


def fit_run(sweep: str | Path | None = None, points_csv: str | Path | None = None, bootstrap: int = 100,
            out: str | Path | None = None, plot: str | Path | None = None, count: str = "eff",
            backtest_too: bool = False, min_budget: float | None = None) -> tuple[dict, object]:
    """Fit a sweep directory (its finished runs) or a CSV of points (header params,tokens,loss), write fit.json
    (default SWEEP/fit.json, or beside the CSV) and the IsoFLOP figure (default isoflop.png beside a fit.json, else
    the fit's own name with .png). A sweep's N is counted by `count` (eff: N_eff, the default; non-embedding:
    Kaplan's), a points file's as given. With `backtest_too`, also `backtest` (under "backtest"). With `min_budget`,
    only the runs of budgets (else FLOPs) of at least that many FLOPs are fitted: the way past budgets that sit
    below the law's regime (the `steepening` red flag). Returns (the fit's figures, the law `plan --fit` loads from
    it). Raises NextokenError for neither or both sources, a negative bootstrap count, a min_budget that leaves
    fewer than 5 runs, or unreadable inputs."""
    from nextoken.data.prepare import read_manifest

    if count not in ("eff", "non-embedding"):
        raise NextokenError(f"--count must be eff or non-embedding, got {count!r}")
    if (sweep is None) == (points_csv is None):
        raise NextokenError("give a sweep directory or --points FILE.csv (one of them)")
    if bootstrap < 0:
        raise NextokenError(f"--bootstrap must be >= 0, got {bootstrap}")
    model = None
    if sweep is not None:
        points, base = collect_points(sweep)
        model = vars(base.model)
        out = Path(out or Path(sweep) / "fit.json")
    else:
        points = read_points_csv(points_csv)
        out = Path(out or Path(points_csv).with_suffix(".fit.json"))
        count = "given"
    if min_budget is not None:
        def budget(p: dict) -> float:  # a points file may give neither: then C = 6ND
            return budget_of(p) or 6.0 * p["params"] * p["tokens"]

        kept = [p for p in points if budget(p) >= min_budget * (1 - 1e-9)]
        if len(kept) < 5:
            raise NextokenError(f"--min-budget {min_budget:g} keeps {len(kept)} of {len(points)} runs; a fit needs "
                                "at least 5: choose a lower budget")
        left_out = sorted({budget(p) for p in points if budget(p) < min_budget * (1 - 1e-9)})
        dropped = len(points) - len(kept)
        points = kept
    vocab = model["vocab_size"] if model else None
    note = None
    if count == "eff" and model:
        for p in points:  # sweeps from before N_eff was recorded: their shapes give it, where they give their N
            if not p.get("params_eff") and all(k in p for k in ("n_layer", "n_head", "d_model")):
                shape = dataclasses.replace(base.model, n_layer=p["n_layer"], n_head=p["n_head"], d_model=p["d_model"])
                if param_counts(shape).non_embedding == p["params"]:
                    p["params_eff"] = effective_params(shape)
        if not all(p.get("params_eff") for p in points):
            count, note = "non-embedding", "the sweep's runs do not record N_eff, so N is their non-embedding count"
    result = fit_points(points, bootstrap, vocab_size=vocab, count=count)
    if note:
        result["count_note"] = note
    result["flops_convention"] = "exact" if model else "6ND"
    if model:
        result["model"] = model
        if (family := _family_of(points)) is not None and not base.model.depth:
            result["family"] = family.to_dict()
        with contextlib.suppress(NextokenError, KeyError, TypeError):  # only a warning in `plan` depends on it
            manifest = read_manifest(base.data.path)
            result["train_tokens"] = int(manifest["splits"]["train"]["tokens"])
            result["bytes_per_token"] = _bytes_per_token(manifest)
        if points:  # how `plan` can print the command that trains its model the way the sweep trained its own
            largest = max(points, key=lambda p: (p["budget"], p["params"]))
            result["train"] = {"config": str((Path(sweep) / largest["name"] / "config.toml").resolve()),
                               "tokens_per_step": base.train.batch_size * base.train.grad_accum
                               * base.model.block_size, "warmup_steps": base.optim.warmup_steps,
                               "rules": "per-size" if largest.get("rules") else "fixed",
                               "schedule": largest.get("schedule", "cosine")}
            if largest.get("rules") and largest.get("params_eff"):  # the LR constant the sweep ran with
                result["train"]["lr_at_ref"] = lr_at_ref_of(largest, base.model.block_size)
                result["train"]["muon_lr_at_tiny"] = muon_lr_at_tiny_of(largest, base.model.block_size)
            if largest.get("rules"):  # the horizon cap its batch rule ran with (0 or absent: by N alone)
                result["train"]["min_steps"] = int(largest["rules"].get("min_steps", 0))
                result["train"]["lr_batch_exponent"] = float(largest["rules"].get("lr_batch_exponent", 0.0))
    if min_budget is not None:
        result["min_budget"] = float(min_budget)
        result["left_out"] = {"runs": dropped, "budgets": [float(b) for b in left_out]}
    if backtest_too:
        result["backtest"] = bt = backtest(points, vocab, count, bootstrap)
        best, iv = bt["best"], bt["best"].get("interval")
        if abs(best["error"]) > BACKTEST_TOLERANCE or (iv and not iv[0] <= best["loss"] <= iv[1]):
            result["red_flags"].append(
                f"the backtest missed: refitted without the {bt['budget']:.3g} budget, the law predicted its best "
                f"run {best['predicted']:.4f}, measured {best['loss']:.4f} ({best['error']:+.1%}"
                + ("" if not iv or iv[0] <= best["loss"] <= iv[1] else ", outside its interval")
                + "): a law that misses one budget ahead is no guide ten times ahead")
    write_fit(result, out)
    law = load_fit(out)
    # isoflop.png beside a fit.json; a fit named otherwise gets its own figure, so two fits in one folder keep both
    default_plot = out.with_name("isoflop.png") if out.name == "fit.json" else out.with_suffix(".png")
    figure = plot_fit(result, plot or default_plot, law)
    result.update(fit_json=str(out), plot=str(figure))
    return result, law


def format_fit(r: dict, law) -> str:
    """What `nextoken fit` prints: the count of N, the fitted constants with their intervals, the IsoFLOP
    minima, the prediction at 4x the largest budget with its interval, red flags, and a backtest if run."""
    a3, a2 = r["approach3"], r.get("approach2") or {}
    ci = a3.get("ci90", {})

    def show(k: str) -> str:
        return f"{r[k]:.4g}" + (f"  [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "")

    ch = r["chinchilla"]
    count = r.get("count", "given")
    lines = []
    if "min_budget" in r:
        lo = r.get("left_out", {})
        lines.append(f"--min-budget {r['min_budget']:g}: left out {lo.get('runs', 0)} runs of the budgets "
                     + (", ".join(f"{b:.3g}" for b in lo.get("budgets", [])) or "(none)"))
    lines += [f"{r['n_points']} runs; N counted as {COUNT_NAMES[count]}; approach 3, L(N, D) = E + A/N^alpha + "
             f"B/D^beta, Huber loss on log L, L-BFGS from a grid of starts"
             + (f" (90% bootstrap intervals, {a3['bootstrap']} resamples of the runs)" if ci else "") + ":"]
    if r.get("count_note"):
        lines.append(f"  ({r['count_note']})")
    if len(group_profiles([p for p in r.get("points", []) if budget_of(p)])) < 3:
        lines.append("  (fewer than 3 budgets: whether the frontier still steepens cannot be checked)")
    lines += [f"  {k:<6} {show(k)}" for k in ("E", "A", "B", "alpha", "beta")]
    lines.append(f"  rms log residual {a3['rms_log_residual']:.4f};  N_opt ∝ C^{a3['a']:.3f}, D_opt ∝ C^{a3['b']:.3f}"
                 f"  (Chinchilla: alpha {ch['alpha']:.3f}, beta {ch['beta']:.3f}, a {ch['a']:.3f}, b {ch['b']:.3f})")
    if "a" in a2:
        k = sum(1 for p in a2.get("profiles", []) if p.get("bracketed"))
        lines.append(f"approach 2 (IsoFLOP minima): N_opt ∝ C^{a2['a']:.3f}, D_opt ∝ C^{a2['b']:.3f}, through {k} "
                     "minima inside their sizes" + (" (a line through two points: no check)" if k < 3 else ""))
    bpt = r.get("bytes_per_token")
    for p in a2.get("profiles", []):
        if "params_opt" in p:
            lines.append(f"  C {p['flops']:.3g}: N_opt {p['params_opt']:.4g}, D_opt {p['tokens_opt']:.4g} "
                         f"({format_ratios(ratios(p['tokens_opt'], p['params_opt'], None, bpt), count)}), "
                         f"loss {p['loss_opt']:.4f}"
                         + ("" if p["bracketed"] else "  (outside the sampled sizes: not used)"))
        else:
            lines.append(f"  C {p['flops']:.3g}: no minimum (the profile is not convex)")
    C = max(p["flops"] for p in r["points"])
    N, D = law.optimal(4 * C)
    L2 = law.optimal_loss(4 * C)
    iv = law.interval(N, D)
    lines.append(f"at 4x the largest budget ({4 * C:.3g} FLOPs): N {N:.4g}, D {D:.4g} "
                 f"({format_ratios(ratios(D, N, None, bpt), count)}), predicted loss {law.loss(N, D):.4f}"
                 + (f" [{iv[0]:.4f}, {iv[1]:.4f}] ({PI_LEVEL}% prediction interval)" if iv else "")
                 + " (approach 3's L(N, D))"
                 + (f"; the IsoFLOP minima's L_opt = E + k·C^-{r['frontier']['gamma']:.3f} says {L2:.4f}"
                    if L2 is not None else "; fewer than 3 IsoFLOP minima, so no minima's law"))
    for p in r.get("excluded", []):
        which = p.get("name") or f"N {p['params']:.4g}, D {p['tokens']:.4g}"
        lines.append(f"left out of the fit: {which}: {p['reason']}")
    lines += [f"RED FLAG: {f}" for f in r.get("red_flags", [])]
    if "backtest" in r:
        lines.append(format_backtest(r["backtest"]))
    lines.append(f"wrote {r['fit_json']} and {r['plot']}; next: nextoken plan --fit {r['fit_json']} --flops C")
    return "\n".join(lines)
