"""A tiny IsoFLOP sweep trains for real, resumes after an interruption, and feeds fit and plan."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import nextoken.training.loop as loop
from nextoken.cli import main
from nextoken.config import build_config
from nextoken.errors import NextokenError
from nextoken.model.counting import training_flops_per_token
from nextoken.scaling.sweep import collect_points, plan_sweep, read_plan, run_config, sweep

SWEEP_ARGS = ["--budgets", "4e8,1e9", "--sizes", "3", "--spread", "6", "--tokens-per-param", "1",
              "--model.block_size", "32", "--train.batch_size", "4", "--train.eval_tokens", "2048",
              "--train.threads", "1", "--rules", "fixed"]


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def calls():
    return []


def test_sweep_interrupted_then_continued(bytes_data, tmp_path_factory, monkeypatch, calls, capsys):
    out = tmp_path_factory.getbasetemp() / "sweep"
    real_train, raised = loop.train, []

    def flaky(cfg, run_dir, resume=False, quiet=False):
        calls.append((run_dir.name, resume))
        if len(calls) == 3 and not raised:
            raised.append(True)
            raise NextokenError("interrupted at step 7")
        return real_train(cfg, run_dir, resume=resume, quiet=quiet)

    monkeypatch.setattr(loop, "train", flaky)
    argv = ["sweep", "--data", str(bytes_data), "--out", str(out), *SWEEP_ARGS]
    assert main(argv) != 0
    assert "continues the sweep" in capsys.readouterr().err
    first = [name for name, _ in calls[:2]]

    # the same command continues: the finished runs are not trained again
    calls.clear()
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["points"]) == 6
    assert not {name for name, _ in calls} & set(first)
    assert calls[0][1] is False  # the interrupted run had no checkpoint yet: it starts again

    plan = read_plan(out)
    base = collect_points(out)[1]
    for p in res["points"]:
        run = out / p["name"]
        cfg = run_config(base, next(s for s in _specs(plan) if s.name == p["name"]))
        # the run trained for exactly its budget, and its LR schedule ended there
        assert cfg.train.max_steps == p["max_steps"]
        assert p["tokens"] == p["max_steps"] * 4 * 32
        assert p["flops"] == pytest.approx(p["tokens"] * training_flops_per_token(cfg.model))
        assert abs(p["flops"] - p["budget"]) <= training_flops_per_token(cfg.model) * 4 * 32 / 2 + 1
        train_rows = [m for m in _metrics(run) if m["kind"] == "train"]
        assert train_rows[-1]["step"] == p["max_steps"]
        assert train_rows[-1]["lr"] == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio, rel=1e-6)


def _specs(plan):
    from nextoken.scaling.sweep import RunSpec

    return [RunSpec(**spec) for spec in plan["runs"].values()]


def test_sweep_resumes_a_partial_run_and_restarts_a_dead_one(tmp_path_factory, monkeypatch, calls):
    out = tmp_path_factory.getbasetemp() / "sweep"
    points, base = collect_points(out)
    partial, dead = points[0], points[1]
    # a run killed after its last checkpoint but before its final eval line
    metrics = out / partial["name"] / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if '"kind": "eval"' not in line))
    # a run killed before its first checkpoint
    shutil.rmtree(out / dead["name"] / "checkpoints")
    (out / dead["name"] / "metrics.jsonl").write_text("")

    real_train = loop.train
    calls.clear()
    monkeypatch.setattr(loop, "train", lambda cfg, run_dir, resume=False, quiet=False: (
        calls.append((run_dir.name, resume)) or real_train(cfg, run_dir, resume=resume, quiet=quiet)))
    budgets = sorted({p["budget"] for p in points})
    again = sweep(base, out, budgets, sizes=3, spread=6, tokens_per_param=1, log=lambda m: None,
                  rules="fixed")
    assert sorted(calls) == sorted([(partial["name"], True), (dead["name"], False)])
    by_name = {p["name"]: p for p in again}
    assert by_name[partial["name"]]["loss"] == pytest.approx(partial["loss"], rel=1e-5)  # same weights
    assert by_name[dead["name"]]["loss"] == pytest.approx(dead["loss"], rel=1e-4)  # same seed, same data


def test_fit_and_plan_on_the_sweep(tmp_path_factory, capsys):
    out = tmp_path_factory.getbasetemp() / "sweep"
    assert main(["fit", str(out), "--bootstrap", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"E", "A", "B", "alpha", "beta", "a", "b"} <= set(res)
    assert all(math.isfinite(res[k]) for k in ("E", "A", "B", "alpha", "beta", "a", "b"))
    assert res["flops_convention"] == "exact" and res["model"]["vocab_size"] == 257
    assert (out / "fit.json").is_file() and (out / "isoflop.png").is_file()

    assert main(["plan", "--fit", str(out), "--flops", "8e9", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"params", "tokens", "flops", "loss", "tokens_per_param", "shape"} <= set(plan)
    shape = plan["shape"]
    assert shape["vocab_size"] == 257 and shape["block_size"] == 32
    assert plan["count"] == "eff" and plan["params"] == pytest.approx(shape["params_eff"])  # N_eff by default
    assert plan["tokens"] * shape["flops_per_token"] == pytest.approx(8e9, rel=1e-6)
    assert math.isfinite(plan["loss"])
    assert plan["loss"] == plan["loss_parametric"] and "loss_minima" in plan  # approach 3 leads (docs/LOG.md)
    train_tokens = res["train_tokens"]  # the sweep's train split, kept in fit.json for plan's warning
    assert train_tokens > 0 and plan["data_passes"] == pytest.approx(plan["tokens"] / train_tokens)
    assert main(["plan", "--fit", str(out), "--flops", "8e12"]) == 0  # ~1000x the tokens: past one pass
    assert "passes over the sweep's" in capsys.readouterr().err

    # the printed command trains the planned model as the sweep trained its own: same data, batch, rules
    assert plan["steps"] * plan["tokens_per_step"] == pytest.approx(plan["tokens"], rel=0.05)
    run = tmp_path_factory.mktemp("check") / "run"
    argv = shlex.split(plan["train_command"].replace(" RUN ", f" {run} "))
    assert argv[:2] == ["nextoken", "train"]
    assert main(argv[1:] + ["--json", "--train.eval_tokens", "256", "--log.progress", "off"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["step"] == plan["steps"] and trained["tokens"] == plan["steps"] * plan["tokens_per_step"]


def test_sweep_dry_run_and_bad_budgets(bytes_data, tmp_path, capsys):
    assert main(["sweep", "--data", str(bytes_data), "--out", str(tmp_path / "s"), "--dry-run", *SWEEP_ARGS]) == 0
    assert "runs over 2 budgets" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["sweep", "--data", str(bytes_data), "--out", str(tmp_path / "s"), "--budgets", "1e3"]) != 0
    assert "shorter than" in capsys.readouterr().err
    assert main(["sweep", "--data", str(bytes_data), "--out", str(tmp_path / "s"), "--budgets=-1e9"]) != 0
    assert "positive" in capsys.readouterr().err
    assert main(["sweep", "--data", str(bytes_data), "--out", str(tmp_path / "s"), "--seeds", "0"]) != 0
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_seeds_repeat_each_size_with_another_seed(bytes_data):
    base = build_config("scaling")
    base.data.path, base.model.vocab_size, base.model.block_size = str(bytes_data), 257, 32
    one = plan_sweep(base, [1e9], 3, 6, 1.0)
    two = plan_sweep(base, [1e9], 3, 6, 1.0, seeds=2)
    assert [s.name for s in two[::2]] == [s.name for s in one]  # seed 0 keeps the names of a one-seed sweep
    assert [s.name for s in two[1::2]] == [s.name + "-s1" for s in one]
    assert all(a.params == b.params and a.max_steps == b.max_steps for a, b in zip(two[::2], two[1::2], strict=True))
    seeds = [run_config(base, s).train.seed for s in two[:2]]
    assert seeds == [base.train.seed, base.train.seed + 1]


def test_sweep_in_two_processes_gives_the_points_of_one(bytes_data, tmp_path, capsys):
    args = ["sweep", "--data", str(bytes_data), "--budgets", "4e8", *SWEEP_ARGS[2:], "--json"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)["points"]
    assert main([*args, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    two = json.loads(capsys.readouterr().out)["points"]
    assert [p["name"] for p in one] == [p["name"] for p in two] and len(one) == 3
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_a_sweep_continued_with_more_budgets_keeps_its_family(tmp_path):
    from nextoken.scaling.shapes import family_of_shapes
    from nextoken.scaling.sweep import _family_of_plan, _write_plan

    base = build_config("scaling")
    base.model.vocab_size = 257
    low = plan_sweep(base, [3e10, 1e13])
    alone = plan_sweep(base, [1e13])  # planned on its own, the top budget's smallest size picks wider heads
    width = {s.d_model // s.n_head for s in low}
    assert len(width) == 1 and {s.d_model // s.n_head for s in alone} != width

    first = [s for s in low if s.budget == 3e10]
    _write_plan(tmp_path, base, first, family_of_shapes((s.d_model, s.n_head) for s in low))
    family = _family_of_plan(tmp_path)
    assert family is not None and {family.head_size} == width
    more = plan_sweep(base, [1e13], family=family)
    assert [(s.name, s.n_head) for s in more] == [(s.name, s.n_head) for s in low if s.budget == 1e13]

    plan = read_plan(tmp_path)  # a sweep from before the family was recorded: its runs' one head width
    del plan["family"]
    (tmp_path / "sweep.json").write_text(json.dumps(plan))
    assert _family_of_plan(tmp_path) == family

    clash = [dataclasses.replace(low[0], n_head=low[0].n_head * 2)]
    with pytest.raises(NextokenError, match="another shape"):
        _write_plan(tmp_path, base, clash)


def test_a_sweeps_pool_processes_end_with_the_sweep(tmp_path):
    # the sweep's own process killed outright (no Ctrl-C reaching its pool): its runs must not train on as orphans
    script = tmp_path / "pool.py"
    script.write_text(
        "import os, sys, time\n"
        "from nextoken.scaling.sweep import _pool\n"
        "if __name__ == '__main__':\n"
        "    pool = _pool(1)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    os.kill(worker, 0)  # alive while the sweep is
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the pool's process outlived the sweep")
