"""A diverged run (issue 15, fault 4): it finishes and saves, its perplexity is inf (never an OverflowError), and
every place that writes, prints, plots or fits a non-finite figure handles it: metrics.jsonl and `--json` stay
strict JSON, the display and the CLI say inf and that the model diverged, the plot marks the point without
squashing its axes, and the fit leaves the run out with a note (docs/metrics.md)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import tiny_config

from nextoken.cli import main
from nextoken.config import Config
from nextoken.run import Run
from nextoken.training import loop
from nextoken.training.loop import train

DIVERGE = "lr@5x1e6"  # a million times the LR for one step: the loss passes 709 nats, where exp() overflows


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def diverged_cfg(data, **kw):
    kw = {"train__max_steps": 12, "train__ckpt_every": 6, "train__eval_every": 6, **kw}
    cfg = tiny_config(data, **kw)
    cfg.stability.policy, cfg.stability.inject = "warn", DIVERGE
    return cfg


@pytest.fixture(scope="module")
def diverged(bytes_data, tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("nonfinite") / "run"
    return run, train(diverged_cfg(bytes_data), run, quiet=True)


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict JSON (RFC 8259) and JavaScript do."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- the run finishes and saves ----

def test_a_diverged_run_finishes_and_saves_its_final_checkpoint(diverged):
    run, res = diverged
    assert res["loss"] > 709.79 and res["ppl"] == math.inf  # exp(709.79) is past the float range
    assert res["step"] == 12 and res["checkpoint"].endswith("step_00000012")
    assert Run(run).checkpoint().name == "step_00000012"


def test_the_final_checkpoint_is_written_before_the_final_eval(bytes_data, tmp_path, monkeypatch):
    cfg = tiny_config(bytes_data, train__max_steps=6, train__ckpt_every=0, train__eval_every=0)

    def failing(*args, **kw):
        raise RuntimeError("the evaluation failed")

    monkeypatch.setattr(loop, "evaluate", failing)
    with pytest.raises(RuntimeError, match="the evaluation failed"):
        train(cfg, tmp_path / "run", quiet=True)
    assert Run(tmp_path / "run").checkpoint().name == "step_00000006"  # nothing trained is lost


def test_perplexity_above_the_float_range_is_inf():
    from nextoken.eval.evaluate import perplexity

    assert perplexity(1.0) == pytest.approx(math.e)
    assert perplexity(709.0) == pytest.approx(math.exp(709.0))
    assert perplexity(710.0) == math.inf and perplexity(1e8) == math.inf and perplexity(math.inf) == math.inf
    assert math.isnan(perplexity(math.nan))


# ---- metrics.jsonl ----

def test_every_metrics_line_of_a_diverged_run_is_strict_json(diverged):
    run, _ = diverged
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rows = [strict_loads(line) for line in lines]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12] and all(r["ppl"] == "Infinity" for r in evals)
    assert not any(v in (1e308, -1e308) for r in rows for v in r.values())
    back = Run(run).metrics("eval")  # the reader turns the strings back into floats
    assert all(r["ppl"] == math.inf and r["loss"] > 709.79 for r in back)


def test_metrics_log_writes_non_finite_figures_as_strings_and_mirrors_floats(tmp_path):
    from nextoken.run import read_metrics
    from nextoken.training.logger import MetricsLog

    class Board:  # TensorBoard's SummaryWriter, as MetricsLog uses it
        scalars: dict = {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = value

        def add_text(self, *a):
            pass

    log = MetricsLog(tmp_path, Config())
    log.tb = Board()
    log.write("train", step=3, tokens=9, loss=math.inf, lr=1e-3, grad_norm=math.nan, tokens_per_s=1.0, mfu=None,
              elapsed_s=0.1)
    log.write("eval", step=3, tokens=9, split="val", loss=800.0, ppl=math.inf, bits_per_token=1154.2,
              bits_per_byte=-math.inf)
    log.write("event", step=3, type="nan", detail={"loss": math.nan, "grad_norm": [1.0, math.inf]})
    text = (tmp_path / "metrics.jsonl").read_text()
    train_row, eval_row, event = map(strict_loads, text.splitlines())
    assert (train_row["loss"], train_row["grad_norm"], train_row["mfu"]) == ("Infinity", "NaN", None)
    assert (eval_row["ppl"], eval_row["bits_per_byte"]) == ("Infinity", "-Infinity")
    assert event["detail"] == {"loss": "NaN", "grad_norm": [1.0, "Infinity"]}
    assert log.tb.scalars["train/loss"] == math.inf and math.isnan(log.tb.scalars["train/grad_norm"])
    assert log.tb.scalars["val/ppl"] == math.inf  # the mirrors take floats: never 1e308

    # metrics.jsonl of nextoken before the strings: ±inf as ±1e308, NaN as null
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "step": 4, "loss": 1e308, "grad_norm": -1e308, "lr": null}\n')
    rows = read_metrics(tmp_path)
    assert rows[0]["loss"] == math.inf and math.isnan(rows[0]["grad_norm"]) and rows[0]["mfu"] is None
    assert rows[2]["detail"]["grad_norm"] == [1.0, math.inf]
    assert (rows[3]["loss"], rows[3]["grad_norm"], rows[3]["lr"]) == (math.inf, -math.inf, None)


def test_the_progress_line_shows_an_infinite_perplexity_not_a_capped_one(capsys):
    from nextoken.training.logger import Display

    d = Display(10, 0, mode="off")
    d.update(10, 800.0, 1000.0)
    assert "loss 800.0000  ppl inf" in capsys.readouterr().err
    d.last_plain = 0.0
    d.update(10, 60.0, 1000.0)
    assert f"ppl {math.exp(60.0):.1f}" in capsys.readouterr().err  # e^60, not e^50


# ---- the commands ----

def test_train_and_eval_of_a_diverged_run_print_inf_and_strict_json(bytes_data, diverged, tmp_path, capsys):
    run, _ = diverged
    code, out, err = run_cli(["eval", run, "--json"], capsys)
    res = strict_loads(out)
    assert code == 0 and res["ppl"] == "Infinity" and res["step"] == 12
    code, out, err = run_cli(["eval", run, "--step", "6"], capsys)
    assert code == 0 and "ppl inf" in err and "the model diverged" in err and "Traceback" not in err

    flags = ["--data", bytes_data, "--model.n_layer", "2", "--model.n_head", "2", "--model.d_model", "32",
             "--model.block_size", "32", "--train.batch_size", "4", "--train.max_steps", "8",
             "--train.eval_tokens", "2048", "--train.threads", "1", "--log.progress", "off",
             "--stability.policy", "warn", "--stability.inject", DIVERGE]
    code, out, err = run_cli(["train", "--out", tmp_path / "j", "--json", *flags], capsys)
    res = strict_loads(out)
    assert code == 0 and res["ppl"] == "Infinity" and res["checkpoint"].endswith("step_00000008")
    code, out, err = run_cli(["train", "--out", tmp_path / "t", *flags], capsys)
    assert code == 0, err
    assert "perplexity inf" in err and "the model diverged" in err and "Traceback" not in err
    assert "sample (" not in err and (tmp_path / "t" / "loss.png").is_file()


def test_sampling_a_model_with_non_finite_logits_is_one_line(diverged, capsys):
    from nextoken.api import next_token, sample
    from nextoken.errors import NextokenError

    loaded = Run(diverged[0]).load()
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.fill_(math.nan)
    for call in (lambda: sample(loaded, "def", max_new_tokens=4, seed=0), lambda: next_token(loaded, "def")):
        with pytest.raises(NextokenError, match="logits are not finite"):
            call()


# ---- the plot ----

def test_plot_marks_non_finite_points_without_squashing_the_axes(tmp_path, monkeypatch):
    import matplotlib.figure

    from nextoken.plot import plot_run

    rows = [{"kind": "train", "step": s, "tokens": 100 * s, "loss": 5.0 - 0.2 * s, "lr": 1e-3} for s in range(1, 11)]
    rows += [{"kind": "train", "step": 11, "tokens": 1100, "loss": "Infinity", "lr": 1e-3},
             {"kind": "train", "step": 12, "tokens": 1200, "loss": "NaN", "lr": 1e-3},
             {"kind": "train", "step": 13, "tokens": 1300, "loss": 1e308, "lr": 1e-3},  # ±inf as written before
             {"kind": "eval", "step": 13, "tokens": 1300, "split": "val", "loss": "Infinity", "ppl": "Infinity",
              "bits_per_byte": "Infinity"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figs = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *a, **kw):
        figs.append(fig)
        return real(fig, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    out = plot_run(tmp_path)
    assert out.is_file()
    ax = figs[0].axes[0]
    assert ax.get_ylim()[1] < 10  # the finite losses set the scale
    assert "loss inf or nan (off the scale)" in [t.get_text() for t in ax.get_legend().get_texts()]


# ---- sweep and fit ----

def _sweep_dir(root, data, losses: dict[str, float]):
    """A sweep directory whose runs finished with `losses`, laid out as `nextoken sweep` writes it."""
    from test_scaling_fit import synthetic_points

    from nextoken.scaling.laws import CHINCHILLA

    base = Config()
    base.data.path, base.model.vocab_size = str(data), 257
    points = synthetic_points(CHINCHILLA, [1e18, 1e19], sizes=5)
    runs = {}
    for i, p in enumerate(points):
        name = f"run{i}"
        runs[name] = {"name": name, "budget": p["flops"], "params": p["params"], "tokens": p["tokens"],
                      "flops": p["flops"], "max_steps": 10}
        loss = losses.get(name, p["loss"])
        loss = loss if math.isfinite(loss) else "NaN" if math.isnan(loss) else "Infinity"
        (root / name).mkdir(parents=True)
        (root / name / "metrics.jsonl").write_text(
            json.dumps({"kind": "eval", "step": 10, "split": "val", "loss": loss, "bits_per_byte": 1.0}) + "\n")
    (root / "sweep.json").write_text(json.dumps({"version": 1, "base": base.to_dict(), "runs": runs}))
    return root


def test_fit_leaves_diverged_runs_out_and_says_which(bytes_data, tmp_path, capsys):
    sweep = _sweep_dir(tmp_path / "sweep", bytes_data, {"run0": math.inf, "run3": math.nan, "run7": 8.9e7})
    code, out, err = run_cli(["fit", sweep, "--bootstrap", "0", "--json"], capsys)
    assert code == 0, err
    res = strict_loads(out)
    assert res["n_points"] == 7 and {p["name"] for p in res["points"]}.isdisjoint({"run0", "run3", "run7"})
    why = {p["name"]: p["reason"] for p in res["excluded"]}
    assert set(why) == {"run0", "run3", "run7"} and all(w.startswith("diverged") for w in why.values())
    assert "ln(257)" in why["run7"]
    assert all(math.isfinite(res[k]) for k in ("E", "A", "B", "alpha", "beta"))
    strict_loads((sweep / "fit.json").read_text())

    code, _, err = run_cli(["fit", sweep, "--bootstrap", "0"], capsys)
    assert code == 0 and "left out of the fit: run0: diverged: its loss is inf" in err
    assert "left out of the fit: run7" in err


def test_fit_of_a_csv_leaves_non_finite_losses_out(tmp_path, capsys):
    from test_scaling_fit import synthetic_points

    from nextoken.errors import NextokenError
    from nextoken.scaling.fit import fit_points
    from nextoken.scaling.laws import CHINCHILLA

    points = synthetic_points(CHINCHILLA, [1e18, 1e19], sizes=5)
    points[2]["loss"], points[5]["loss"] = math.inf, math.nan
    path = tmp_path / "points.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["params", "tokens", "loss"], extrasaction="ignore")
        w.writeheader()
        w.writerows(points)
    code, out, err = run_cli(["fit", "--points", path, "--bootstrap", "0", "--json"], capsys)
    res = strict_loads(out)
    assert code == 0 and res["n_points"] == 8 and len(res["excluded"]) == 2
    with pytest.raises(NextokenError, match="have 4 \\(2 more left out: diverged"):
        fit_points(points[:6], bootstrap=0)


def test_sweep_notes_a_diverged_run_and_prints_strict_json(bytes_data, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(cfg, run_dir, resume=False, quiet=False):
        calls.append(run_dir.name)
        return {"loss": math.inf if len(calls) == 2 else 3.0, "bits_per_byte": 1.0, "elapsed_s": 0.0}

    monkeypatch.setattr(loop, "train", fake_train)
    code, out, err = run_cli(["sweep", "--data", bytes_data, "--out", tmp_path / "sw", "--budgets", "4e8",
                              "--sizes", "3", "--spread", "6", "--tokens-per-param", "1", "--model.block_size", "32",
                              "--train.batch_size", "4", "--rules", "fixed", "--json"], capsys)
    assert code == 0, err
    points = strict_loads(out)["points"]
    assert [p["loss"] for p in points].count("Infinity") == 1
    assert f"{calls[1]}: diverged: its loss is inf; `nextoken fit` leaves it out" in err
