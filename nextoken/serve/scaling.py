"""The scaling page's data: a sweep's points and IsoFLOP profiles, its fit (SWEEP/fit.json where
`nextoken fit` wrote one; else fitted here in memory, without bootstrap, and never written), and the plan
calculator (scaling.plan.plan, the same function as `nextoken plan`)."""

from __future__ import annotations

import json
from pathlib import Path

from nextoken.errors import NextokenError


def sweep_view(sweep_dir: Path, sweep_id: str) -> dict:
    from nextoken.scaling.fit import fit_points, group_profiles
    from nextoken.scaling.sweep import collect_points, read_plan

    plan = read_plan(sweep_dir)
    points, _ = collect_points(sweep_dir)
    count = "eff" if points and all(p.get("params_eff") for p in points) else "non-embedding"  # docs/scaling.md
    fit, source = None, None
    fit_json = sweep_dir / "fit.json"
    if fit_json.is_file():
        try:
            fit, source = json.loads(fit_json.read_text()), "fit.json"
        except (ValueError, UnicodeDecodeError):
            raise NextokenError(f"{sweep_id}/fit.json is corrupt; run `nextoken fit` on it again") from None
    elif len(points) >= 5:
        fit = fit_points([dict(p) for p in points], bootstrap=0, count=count)
        source = "computed here, without intervals"
    # N as the fit counts it (N_eff where the sweep recorded it), the non-embedding count beside it
    profiles = [[{**{k: p.get(k) for k in ("name", "tokens", "flops", "budget", "loss")},
                  "params": p["params_eff"] if count == "eff" else p.get("params"),
                  "params_non_embedding": p.get("params")} for p in g]
                for g in group_profiles(points)] if points else []
    keep = ("E", "A", "B", "alpha", "beta", "a", "b", "a_source", "approach2", "frontier", "n_points", "count",
            "red_flags", "flops_convention", "chinchilla")
    out_fit = None
    if fit:
        out_fit = {k: fit.get(k) for k in keep}
        out_fit["ci90"] = (fit.get("approach3") or {}).get("ci90")
    return {"id": sweep_id, "runs_planned": len(plan.get("runs", {})), "runs_finished": len(points),
            "profiles": profiles, "fit": out_fit, "fit_source": source, "has_fit_json": fit_json.is_file()}


def plan_for(law: str, flops: float | None, params: float | None, tokens: float | None, fit: Path | None,
             tokens_per_s: float | None) -> dict:
    from nextoken.scaling.plan import plan, ratio_notes

    res = plan(law, flops, params, tokens, str(fit) if fit else None, tokens_per_s=tokens_per_s)
    res["notes"] = ratio_notes(res)  # why its tokens per parameter need not be the ~20 taught
    return res
