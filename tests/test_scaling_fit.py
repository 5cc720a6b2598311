"""Fits recover known laws from synthetic points; the fit and plan commands keep their JSON contracts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nextoken.cli import main
from nextoken.scaling.fit import fit_approach2, fit_approach3, fit_frontier, fit_points
from nextoken.scaling.laws import CHINCHILLA, EPOCH, ParametricLaw


def synthetic_points(law: ParametricLaw, budgets, sizes: int = 7, noise: float = 1e-3, seed: int = 0) -> list[dict]:
    """IsoFLOP profiles drawn from `law` under C = 6ND, with log-normal noise on the loss."""
    rng = np.random.default_rng(seed)
    points = []
    for C in budgets:
        n_opt, _ = law.optimal(C)
        for f in np.geomspace(1 / 6, 6, sizes):
            N = n_opt * f
            D = C / (6 * N)
            points.append({"params": N, "tokens": D, "flops": C,
                           "loss": float(law.loss(N, D) * np.exp(rng.normal(0, noise)))})
    return points


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH], ids=["chinchilla", "epoch"])
def test_approach3_recovers_the_law(law):
    pts = synthetic_points(law, np.geomspace(1e18, 1e21, 6))
    fit = fit_approach3([p["params"] for p in pts], [p["tokens"] for p in pts], [p["loss"] for p in pts],
                        bootstrap=0)
    for k in ("E", "alpha", "beta"):
        assert fit[k] == pytest.approx(getattr(law, k), rel=0.03), k
    for k in ("A", "B"):  # A and B trade off with the exponents; a few percent of exponent is many of A
        assert fit[k] == pytest.approx(getattr(law, k), rel=0.15), k
    assert fit["a"] == pytest.approx(law.a, rel=0.02)
    assert fit["rms_log_residual"] < 2e-3


def test_approach2_recovers_the_allocation_exponents():
    pts = synthetic_points(CHINCHILLA, np.geomspace(1e18, 1e21, 5), sizes=9, noise=0)
    fit = fit_approach2(pts)
    assert fit["a"] == pytest.approx(CHINCHILLA.a, abs=0.02)
    assert fit["b"] == pytest.approx(CHINCHILLA.b, abs=0.02)
    assert all(p["bracketed"] for p in fit["profiles"])


def test_the_minima_frontier_predicts_the_optimal_loss_beyond_the_sweep():
    pts = synthetic_points(CHINCHILLA, np.geomspace(1e18, 1e20, 3), sizes=7, noise=0)
    frontier = fit_frontier(fit_approach2(pts), CHINCHILLA.E)
    assert frontier["n_minima"] == 3 and frontier["gamma"] > 0
    for C in (4e20, 1e21):  # 4x and 10x the largest budget
        N, D = CHINCHILLA.optimal(C)
        predicted = frontier["E"] + frontier["kL"] * C ** -frontier["gamma"]
        assert predicted == pytest.approx(float(CHINCHILLA.loss(N, D)), rel=0.01)
    assert fit_frontier(fit_approach2(pts[:10]), CHINCHILLA.E) is None  # two minima are not a law


def test_bootstrap_intervals_cover_the_truth():
    pts = synthetic_points(CHINCHILLA, np.geomspace(1e18, 1e21, 4), sizes=5, noise=3e-3, seed=1)
    res = fit_points(pts, bootstrap=8, seed=0)
    ci = res["approach3"]["ci90"]
    for k in ("alpha", "beta", "E"):
        lo, hi = ci[k]
        assert lo <= res[k] <= hi
        assert lo < hi
        assert hi - lo < 0.5 * res[k]


def _write_csv(path, points):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["params", "tokens", "loss"], extrasaction="ignore")
        w.writeheader()
        w.writerows(points)
    return path


def test_fit_and_plan_cli_json(tmp_path, capsys):
    csv_path = _write_csv(tmp_path / "points.csv", synthetic_points(EPOCH, np.geomspace(1e18, 1e20, 4), sizes=5))
    assert main(["fit", "--points", str(csv_path), "--bootstrap", "3", "--json"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out)
    assert {"E", "A", "B", "alpha", "beta", "a", "b"} <= set(res)
    assert res["alpha"] == pytest.approx(EPOCH.alpha, rel=0.05)
    fit_json = tmp_path / "points.fit.json"
    assert fit_json.is_file() and (tmp_path / "points.fit.png").stat().st_size > 10_000  # the fit's own figure

    assert main(["plan", "--fit", str(fit_json), "--flops", "1e21", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"params", "tokens", "flops", "loss", "tokens_per_param", "shape"} <= set(plan)
    assert plan["loss"] == pytest.approx(float(EPOCH.loss(plan["params"], plan["tokens"])), rel=0.01)
    assert {"n_layer", "n_head", "d_model"} <= set(plan["shape"])
    assert plan["extrapolation"] == pytest.approx(10, rel=0.01)  # 1e21 over the largest budget fitted, 1e20
    assert main(["plan", "--fit", str(fit_json), "--flops", "1e21"]) == 0
    err = capsys.readouterr().err
    assert "the fit's largest budget" not in err  # checked that far: no note
    assert "the fit ran no --backtest" in err  # "no red flag" without the backtest says what it did not look for
    assert main(["plan", "--fit", str(fit_json), "--flops", "1e23"]) == 0
    assert "1e+23 FLOPs is 1,000x the fit's largest budget" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["plan"], "none given"),
    (["plan", "--flops", "1e20", "--params", "1e9", "--tokens", "1e12"], "disagrees"),  # 6ND = 6e21
    (["plan", "--flops", "-5"], "positive"),
    (["plan", "--params", "0"], "positive"),
    (["plan", "--flops", "1e20", "--law", "gpt5"], "unknown --law"),
    (["plan", "--flops", "1e20", "--fit", "/nonexistent/fit.json"], "no fit.json"),
    (["plan", "--flops", "1e20", "--device", "abacus"], "unknown --device"),
    (["fit"], "sweep directory or --points"),
    (["fit", "/nonexistent-sweep"], "/nonexistent-sweep does not exist"),
    (["fit", "/"], "not a sweep directory"),
    (["fit", "--points", "/nonexistent.csv"], "does not exist"),
])
def test_bad_input_is_one_line(argv, needle, capsys):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_corrupt_fit_json_and_short_csv(tmp_path, capsys):
    bad = tmp_path / "fit.json"
    bad.write_text("{not json")
    assert main(["plan", "--flops", "1e20", "--fit", str(bad)]) != 0
    assert "not a fit.json" in capsys.readouterr().err
    bad.write_text(json.dumps({"E": 1.0, "A": 1.0}))
    assert main(["plan", "--flops", "1e20", "--fit", str(tmp_path)]) != 0
    assert "not a fit.json" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    short.write_text("params,tokens,loss\n1e6,2e7,3.0\n")
    assert main(["fit", "--points", str(short)]) != 0
    assert "at least 5" in capsys.readouterr().err
    (tmp_path / "nohead.csv").write_text("a,b\n1,2\n")
    assert main(["fit", "--points", str(tmp_path / "nohead.csv")]) != 0
    assert "params,tokens,loss" in capsys.readouterr().err


def test_plan_time_estimates(capsys):
    assert main(["plan", "--flops", "1e21", "--tokens-per-s", "1e6", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["time_s"] == pytest.approx(res["tokens"] / 1e6)
    assert main(["plan", "--flops", "1e21", "--device", "H100", "--mfu", "0.5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["time_s"] == pytest.approx(res["flops_exact"] / (989e12 * 0.5))
