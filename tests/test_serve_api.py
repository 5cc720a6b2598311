"""`nextoken serve`'s JSON API through Starlette's TestClient: every endpoint, and the bad inputs the issue
names (paths that leave the roots, half-written metrics, checkpoints mid-rename, corrupt and foreign
directories, a port in use)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from nextoken.errors import NextokenError
from nextoken.run import Run
from nextoken.serve import bind
from nextoken.serve.app import create_app
from nextoken.serve.runs import downsample, run_state

starlette_testclient = pytest.importorskip("starlette.testclient")


@pytest.fixture(scope="session")
def served(tmp_path_factory, bytes_data) -> Path:
    """A folder of runs: `clean` (finished), `faults` (with injected incidents), both tiny."""
    from nextoken.api import train

    root = tmp_path_factory.mktemp("serve") / "runs"
    train(tiny_config(bytes_data, train__max_steps=30), root / "clean", quiet=True)
    train(tiny_config(bytes_data, train__max_steps=30, stability__inject="lr@15x100,nan@20"), root / "faults",
          quiet=True)
    return root


@pytest.fixture()
def client(served):
    return starlette_testclient.TestClient(create_app([served]))


def copy_run(served: Path, tmp_path: Path, name: str = "copy") -> Path:
    root = tmp_path / "root"
    shutil.copytree(served / "clean", root / name)
    return root


# ---- runs and a run ----

def test_runs_lists_both_with_state_and_summary(client):
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"runs/clean", "runs/faults"}
    clean = runs["runs/clean"]
    assert clean["state"] == "finished" and clean["step"] == 30 and clean["max_steps"] == 30
    assert clean["best_val_loss"] > 0 and clean["best_val_bpb"] > 0 and clean["tokens_per_s"] > 0
    assert clean["checkpoints"] == [20, 30]
    assert runs["runs/faults"]["last_incident"]["type"] in ("rollback", "nan", "spike", "skip")


def test_run_detail_has_config_and_state(client):
    r = client.get("/api/run", params={"run": "runs/clean"})
    assert r.status_code == 200
    body = r.json()
    assert body["config"]["train"]["max_steps"] == 30 and body["state"] == "finished"
    assert r.headers["content-security-policy"].startswith("default-src 'self'")


@pytest.mark.parametrize("x", ["step", "tokens", "time"])
def test_curves_on_each_axis_with_events(client, x):
    body = client.get("/api/curves", params={"run": "runs/faults", "x": x}).json()
    assert {"train_loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens_per_s"} <= set(body["series"])
    loss = body["series"]["train_loss"]
    assert len(loss["x"]) == len(loss["y"]) > 0 and loss["x"] == sorted(loss["x"])
    types = {e["type"] for e in body["events"]}
    assert {"checkpoint", "nan"} <= types
    if x == "tokens":  # events sit on the same axis as the curves: step s at s * tokens per step
        nan = next(e for e in body["events"] if e["type"] == "nan")
        assert nan["x"] == pytest.approx(nan["step"] * 4 * 32)


@pytest.mark.parametrize("url,status", [
    ("/api/run?run=runs/../runs/clean", 403), ("/api/run?run=/etc", 403), ("/api/run?run=runs/clean/../../x", 403),
    ("/api/run?run=elsewhere/clean", 404), ("/api/run?run=runs/none", 404), ("/api/run", 400),
    ("/api/curves?run=runs/clean&x=epochs", 400), ("/api/curves?run=runs/clean&buckets=abc", 400),
    ("/api/curves?run=runs/clean&buckets=1", 400), ("/api/compare", 400), ("/api/nothing", 404),
])
def test_bad_queries_are_one_line_errors(client, url, status):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert "\n" not in r.json()["error"]


def test_symlink_out_of_the_root_is_refused_and_not_listed(served, tmp_path):
    root = copy_run(served, tmp_path)
    (root / "link").symlink_to(served / "faults", target_is_directory=True)
    c = starlette_testclient.TestClient(create_app([root]))
    assert [r["id"] for r in c.get("/api/runs").json()["runs"]] == ["root/copy"]
    r = c.get("/api/run", params={"run": "root/link"})
    assert r.status_code == 403 and "symlink" in r.json()["error"]


def test_half_written_line_and_checkpoint_mid_rename_never_break_a_page(served, tmp_path):
    root = copy_run(served, tmp_path)
    run = root / "copy"
    c = starlette_testclient.TestClient(create_app([root]))
    before = len(c.get("/api/curves", params={"run": "root/copy"}).json()["series"]["train_loss"]["x"])
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "step": 31, "tokens": 3968, "loss": 2.5, "lr"')  # cut mid-line
    (run / "checkpoints" / ".tmp-step_00000031").mkdir()  # a checkpoint being written
    (run / "checkpoints" / "step_00000032").mkdir()  # renamed, trainer.json not there: not complete
    for url in ("/api/runs", "/api/run?run=root/copy", "/api/curves?run=root/copy"):
        assert c.get(url).status_code == 200, url
    assert len(c.get("/api/curves", params={"run": "root/copy"}).json()["series"]["train_loss"]["x"]) == before
    assert c.get("/api/run", params={"run": "root/copy"}).json()["checkpoints"] == [20, 30]
    with (run / "metrics.jsonl").open("a") as fh:  # the writer finishes the line: the next poll shows it
        fh.write(': 0.001, "grad_norm": 1.0, "tokens_per_s": 1.0, "mfu": null, "elapsed_s": 9.0}\n')
    series = c.get("/api/curves", params={"run": "root/copy"}).json()["series"]["train_loss"]
    assert series["x"][-1] == 31 and series["y"][-1] == 2.5


def test_corrupt_and_foreign_directories_are_one_line_messages(served, tmp_path):
    root = copy_run(served, tmp_path)
    (root / "copy" / "config.toml").write_text("this is [not toml")
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "metrics.jsonl").write_bytes(b"\x00\xff garbage\nnot json either\n")
    c = starlette_testclient.TestClient(create_app([root]))
    runs = {r["id"]: r for r in c.get("/api/runs").json()["runs"]}
    assert runs["root/copy"]["state"] == "unreadable" and "\n" not in runs["root/copy"]["error"]
    assert runs["root/foreign"]["state"] == "unreadable"
    for rid in ("root/copy", "root/foreign"):
        r = c.get("/api/run", params={"run": rid})
        assert r.status_code in (400, 404) and r.json()["error"]


# ---- state from the files ----

def _rows(last_step: int, final_eval: int | None = None) -> list[dict]:
    rows = [{"kind": "train", "step": s, "loss": 1.0} for s in range(1, last_step + 1)]
    if final_eval:
        rows.append({"kind": "eval", "step": final_eval, "split": "val", "loss": 1.0})
    return rows


def test_run_state_from_files(served, tmp_path):
    run = Run(copy_run(served, tmp_path) / "copy")
    (run.path / ".lock").unlink(missing_ok=True)  # a run from before the writer lock: state from the files alone
    old = time.time() - 3600
    assert run_state(run, _rows(30, 30), 30, [20, 30], old)[0] == "finished"
    assert run_state(run, _rows(17), 30, [10, 17], old)[0] == "interrupted"
    state, why = run_state(run, _rows(17), 30, [10], old)
    assert state == "crashed" and "repeats 7 steps" in why
    assert run_state(run, _rows(17), 30, [10], time.time())[0] == "running"  # no lock: recent writes
    assert run_state(run, [], 30, [], old)[0] == "new"
    imported = [{"kind": "event", "step": 0, "type": "import", "detail": {"source": "hf/x"}}]
    assert run_state(run, imported, 30, [0], old) == ("imported",
                                                      "imported from hf/x; train it further with --init-from")
    assert run_state(run, imported, 30, [0], time.time())[0] == "imported"  # just imported: not "running"


def test_run_state_uses_the_writer_lock(served, tmp_path):
    run = Run(copy_run(served, tmp_path) / "copy")
    lock = run.path / ".lock"
    lock.write_text(str(os.getpid()))
    old = time.time() - 3600
    with lock.open("r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # as the writer holds it
        assert run_state(run, _rows(17), 30, [10], old)[0] == "running"
        fcntl.flock(fh, fcntl.LOCK_UN)
    # an unheld lock: the writer is gone, even though metrics were written a moment ago
    assert run_state(run, _rows(17), 30, [10], time.time())[0] == "crashed"


def test_downsample_keeps_spikes_and_bounds_points():
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 1000) + 2
    y[54_321] = 50.0
    dx, dy = downsample(x, y, 500)
    assert len(dx) <= 1002 and dy.max() == 50.0 and dx[0] == 0 and dx[-1] == 99_999
    assert list(dx) == sorted(dx)


def test_curves_of_100k_lines_are_quick_and_small(tmp_path, served):
    root = copy_run(served, tmp_path)
    with (root / "copy" / "metrics.jsonl").open("a") as fh:
        for s in range(31, 100_031):
            fh.write(json.dumps({"kind": "train", "step": s, "tokens": s * 128, "loss": 2 + math.sin(s), "lr": 1e-3,
                                 "grad_norm": 1.0, "tokens_per_s": 1e4, "mfu": None, "elapsed_s": s / 100}) + "\n")
    c = starlette_testclient.TestClient(create_app([root]))
    c.get("/api/curves", params={"run": "root/copy"})  # the first read parses the file once
    body = c.get("/api/curves", params={"run": "root/copy", "x": "time"}).json()
    assert len(body["series"]["train_loss"]["x"]) <= 2002  # the time it takes is bench material, not a test's


def test_curves_carry_each_tasks_scores(tmp_path, served):
    """`--train.eval_tasks` lines become task/NAME/{acc,acc_norm,bpb} series, the last line of a step counting."""
    root = copy_run(served, tmp_path)
    rows = [("nextline", 10, 0.3, 0.3), ("nextline", 20, 0.5, 0.4), ("nextline", 20, 0.6, 0.5),
            ("fill", 20, 0.25, None)]
    with (root / "copy" / "metrics.jsonl").open("a") as fh:
        for task, step, acc, norm in rows:
            fh.write(json.dumps({"kind": "task", "step": step, "tokens": step * 128, "task": task, "n": 4, "acc": acc,
                                 "acc_norm": norm, "bits_per_byte": 2.0}) + "\n")
    c = starlette_testclient.TestClient(create_app([root]))
    series = c.get("/api/curves", params={"run": "root/copy"}).json()["series"]
    assert series["task/nextline/acc"] == {"x": [10, 20], "y": [0.3, 0.6], "n": 2}
    assert series["task/nextline/acc_norm"]["y"] == [0.3, 0.5] and series["task/fill/bpb"]["y"] == [2.0]
    assert "task/fill/acc_norm" not in series  # cloze: no per-byte choice
    tokens = c.get("/api/curves", params={"run": "root/copy", "x": "tokens"}).json()["series"]
    assert tokens["task/nextline/acc"]["x"] == [10 * 128, 20 * 128]


# ---- compare ----

def test_compare_diffs_configs(client):
    body = client.get("/api/compare", params=[("run", "runs/clean"), ("run", "runs/faults")]).json()
    assert set(body["runs"]) == {"runs/clean", "runs/faults"}
    fields = {d["field"]: d["values"] for d in body["diff"]}
    assert fields["stability.inject"] == {"runs/clean": "", "runs/faults": "lr@15x100,nan@20"}
    assert "model.d_model" not in fields


# ---- next token ----

def test_next_token_logits_let_the_client_renormalize(client):
    body = client.post("/api/next", json={"run": "runs/clean", "prompt": "def alpha", "top": 8,
                                          "target": "_"}).json()
    logits = np.array([t["logit"] for t in body["top"]])
    assert len(logits) == 8 and list(logits) == sorted(logits, reverse=True)
    lse = np.logaddexp.reduce(np.append(logits, body["lse_rest"]))
    assert lse == pytest.approx(body["lse"], abs=1e-4)
    hist = body["rest_hist"]
    assert sum(hist["count"]) == body["vocab_size"] - 8
    approx = np.logaddexp.reduce(np.log(hist["count"]) + np.array(hist["mean"]))  # the rest at T = 1, binned
    assert approx == pytest.approx(body["lse_rest"], abs=0.1)
    assert "".join(t["text"] for t in body["prompt_tokens"]) == "def alpha"
    t = body["target"]
    assert t["text"] == "_" and t["neg_log_p"] == pytest.approx(body["lse"] - t["logit"], abs=1e-4)
    # the same as `nextoken next` at temperature 1
    from nextoken.api import next_token

    ref = next_token(Run(Path(client.app.state.serve.roots.roots["runs"]) / "clean"), "def alpha", top=8)
    assert [r["id"] for r in ref["top"]] == [r["id"] for r in body["top"]]
    assert ref["entropy_nats"] == pytest.approx(body["entropy_nats"], abs=1e-4)


@pytest.mark.parametrize("body,status", [
    ({"prompt": "x"}, 400), ({"run": "runs/clean", "top": 0}, 400), ({"run": "runs/clean", "top": "many"}, 400),
    ({"run": "runs/clean", "step": 7}, 400), ({"run": "runs/../x"}, 403), ({"run": "runs/nope"}, 404),
    ({"run": "runs/clean", "prompt": 5}, 400),
])
def test_next_token_bad_inputs(client, body, status):
    r = client.post("/api/next", json=body)
    assert r.status_code == status, r.text
    assert "\n" not in r.json()["error"]


def test_non_json_body_is_a_400(client):
    r = client.post("/api/next", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_models_are_loaded_once_and_shared_by_concurrent_requests(served):
    c = starlette_testclient.TestClient(create_app([served]))
    results = []

    def ask(i):
        results.append(c.post("/api/next", json={"run": "runs/faults", "prompt": f"for x{i}", "top": 3}).status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    assert c.app.state.serve.models.loads == 1
    assert c.post("/api/next", json={"run": "runs/faults", "step": 20}).status_code == 200
    assert c.app.state.serve.models.loads == 2


def _prune_on_first_load(monkeypatch, run_dir: Path) -> None:
    """The trainer writes step 40 and prunes step 30 after the server chose step 30 and before it loads it."""
    real, done = Run.load, []

    def load(self, step=None, device="cpu"):
        if not done:
            done.append(1)
            ckpts = run_dir / "checkpoints"
            shutil.copytree(ckpts / "step_00000030", ckpts / "step_00000040")
            trainer = json.loads((ckpts / "step_00000040" / "trainer.json").read_text())
            (ckpts / "step_00000040" / "trainer.json").write_text(json.dumps({**trainer, "step": 40}))
            (ckpts / "latest").write_text("step_00000040\n")
            shutil.rmtree(ckpts / "step_00000030")
        return real(self, step, device)

    monkeypatch.setattr(Run, "load", load)


def test_a_newest_checkpoint_pruned_before_it_loads_falls_to_the_new_newest(served, tmp_path, monkeypatch):
    """Issue 23: 4 of 4,098 requests got a wrong-cause 400 ("no checkpoint at step 30") for a step they never
    named, when training pruned the newest checkpoint between the server choosing and loading it."""
    root = copy_run(served, tmp_path)
    _prune_on_first_load(monkeypatch, root / "copy")
    c = starlette_testclient.TestClient(create_app([root]))
    r = c.post("/api/next", json={"run": "root/copy", "prompt": "def", "top": 3})
    assert r.status_code == 200, r.text
    assert c.app.state.serve.models._models and all("step_00000040" in k[0] for k in c.app.state.serve.models._models)


def test_a_named_checkpoint_pruned_before_it_loads_is_a_404_that_says_so(served, tmp_path, monkeypatch):
    root = copy_run(served, tmp_path)
    _prune_on_first_load(monkeypatch, root / "copy")
    c = starlette_testclient.TestClient(create_app([root]))
    r = c.post("/api/next", json={"run": "root/copy", "prompt": "def", "top": 3, "step": 30})
    assert r.status_code == 404 and "was pruned" in r.json()["error"] and "40" in r.json()["error"], r.text


# ---- surprise and sample ----

def test_surprise_of_a_text_and_of_a_val_document(client):
    text = "def alpha(beta):\n    return beta\n"
    body = client.post("/api/surprise", json={"run": "runs/clean", "text": text}).json()
    assert body["n_tokens"] == len(body["tokens"]) == body["n_bytes"]  # byte-level tokenizer
    losses = [t["loss"] for t in body["tokens"]]
    assert body["loss"] == pytest.approx(sum(losses) / len(losses))
    assert body["bits_per_byte"] == pytest.approx(sum(losses) / (body["n_bytes"] * math.log(2)))
    assert len(body["tokens"][0]["alternatives"]) == 5
    docs = client.get("/api/docs", params={"run": "runs/clean"}).json()["documents"]
    assert docs and docs[0]["index"] == 0
    doc = client.post("/api/surprise", json={"run": "runs/clean", "doc": 0}).json()
    assert doc["n_tokens"] == min(docs[0]["chars"], 2048)  # long documents: windows of half a context


@pytest.mark.parametrize("body", [{"run": "runs/clean"}, {"run": "runs/clean", "text": "a", "doc": 0},
                                  {"run": "runs/clean", "doc": 99999}, {"run": "runs/clean", "text": ""}])
def test_surprise_bad_inputs(client, body):
    r = client.post("/api/surprise", json=body)
    assert r.status_code == 400 and r.json()["error"]


def test_sample_streams_and_repeats_with_a_seed(client):
    def run():
        r = client.post("/api/sample", json={"run": "runs/clean", "prompt": "def", "max_new_tokens": 12, "seed": 3})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert lines[0]["seed"] == 3 and lines[-1] == {"done": True}
        return "".join(x.get("text", "") for x in lines)

    first = run()
    assert len(first) == 12 and run() == first


@pytest.mark.parametrize("body", [{"run": "runs/clean", "temperature": -1}, {"run": "runs/clean", "top_p": 2},
                                  {"run": "runs/clean", "max_new_tokens": 0},
                                  {"run": "runs/clean", "max_new_tokens": 10**6}])
def test_sample_bad_inputs(client, body):
    r = client.post("/api/sample", json=body)
    assert r.status_code == 400 and r.json()["error"]


# ---- pages, hosts, ports ----

@pytest.mark.parametrize("path", ["/", "/run", "/compare", "/next", "/inspect", "/surprise", "/sample", "/scaling",
                                  "/labs"])
def test_pages_and_static_files_are_served(client, path):
    r = client.get(path)
    assert r.status_code == 200 and "/static/app.js" in r.text
    for asset in ("/static/app.js", "/static/chart.js", "/static/inspect.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_static_files_cannot_leave_their_folder(client):
    assert client.get("/static/../runs.py").status_code == 404
    assert client.get("/static/%2e%2e/runs.py").status_code == 404


def test_host_header_is_checked_on_loopback(served):
    c = starlette_testclient.TestClient(create_app([served], allowed_hosts=["127.0.0.1", "localhost"]),
                                        base_url="http://127.0.0.1")
    assert c.get("/api/runs").status_code == 200
    assert c.get("/api/runs", headers={"host": "evil.example"}).status_code == 400


def test_port_in_use_is_one_line():
    sock = bind("127.0.0.1", 0)
    try:
        with pytest.raises(NextokenError, match="in use.*--port"):
            bind("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


def test_cli_refuses_a_missing_directory(capsys, tmp_path):
    from nextoken.cli import main

    assert main(["serve", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


# ---- scaling ----

def make_sweep(folder: Path) -> Path:
    """A sweep directory as `nextoken sweep` leaves it: sweep.json and finished runs on two budgets' IsoFLOP
    profiles, with losses from a known law (E 1.7, A 400, B 400, alpha 0.34, beta 0.28)."""
    from nextoken.config import Config

    base = Config()
    runs = {}
    for budget in (1e13, 1e14, 1e15):
        for n in np.geomspace(2e4, 2e6, 6):
            tokens = budget / (6 * n)
            name = f"c{budget:.0e}-n{int(n)}"
            runs[name] = {"name": name, "budget": budget, "n_layer": 2, "n_head": 2, "d_model": 64,
                          "params": int(n), "params_total": int(n), "max_steps": 10, "tokens": int(tokens),
                          "flops": budget, "seed": 0}
            loss = 1.7 + 400 / n**0.34 + 400 / tokens**0.28
            d = folder / name
            d.mkdir(parents=True)
            (d / "config.toml").write_text(base.to_toml())
            (d / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 10, "split": "val", "loss": loss,
                                                         "bits_per_byte": loss / math.log(2)}) + "\n")
    (folder / "sweep.json").write_text(json.dumps({"version": 1, "base": base.to_dict(), "runs": runs}))
    return folder


def test_sweep_profiles_and_fit_computed_without_writing(tmp_path):
    root = tmp_path / "root"
    sweep = make_sweep(root / "sw")
    before = sorted(p.name for p in sweep.iterdir())
    c = starlette_testclient.TestClient(create_app([root]))
    listing = c.get("/api/runs").json()
    assert [s["id"] for s in listing["sweeps"]] == ["root/sw"] and len(listing["runs"]) == 18
    body = c.get("/api/sweep", params={"sweep": "root/sw"}).json()
    assert body["runs_finished"] == 18 and len(body["profiles"]) == 3
    assert body["fit_source"].startswith("computed") and not body["has_fit_json"]
    assert body["fit"]["alpha"] == pytest.approx(0.34, abs=0.05)
    assert sorted(p.name for p in sweep.iterdir()) == before  # read-only: no fit.json written
    assert c.get("/api/sweep", params={"sweep": "root/sw/.."}).status_code == 403
    assert c.get("/api/sweep", params={"sweep": "root/sw/c1e+13-n20000"}).status_code == 400  # not a sweep
    r = c.get("/api/plan", params={"sweep": "root/sw", "flops": 1e16})
    assert r.status_code == 400 and "fit.json" in r.json()["error"]


def test_plan_calculator(client):
    body = client.get("/api/plan", params={"flops": 5.76e23, "law": "chinchilla"}).json()
    from nextoken.api import plan

    ref = plan(flops=5.76e23)
    assert body["params"] == pytest.approx(ref["params"]) and body["loss"] == pytest.approx(ref["loss"])
    assert "approach 1" in body["notes"][0]  # why approach 3's ~59 tokens per parameter is not the ~20 taught
    assert client.get("/api/plan", params={"params": 7e9, "tokens_per_s": 1e6}).json()["time_s"] > 0
    assert client.get("/api/laws").json()["laws"][0] == "chinchilla"


@pytest.mark.parametrize("query", [{}, {"flops": "lots"}, {"flops": -1}, {"flops": 1e21, "law": "moore"},
                                   {"flops": "inf"}, {"flops": 1e21, "sweep": "runs/../x"}])
def test_plan_bad_inputs(client, query):
    r = client.get("/api/plan", params=query)
    assert r.status_code in (400, 403) and r.json()["error"]


def test_sweep_with_its_fit_json_and_plan_from_it(tmp_path):
    from nextoken.api import fit

    root = tmp_path / "root"
    sweep = make_sweep(root / "sw")
    fit(sweep, bootstrap=4)
    c = starlette_testclient.TestClient(create_app([root]))
    body = c.get("/api/sweep", params={"sweep": "root/sw"}).json()
    assert body["fit_source"] == "fit.json" and body["fit"]["ci90"]["alpha"][0] <= body["fit"]["alpha"]
    r = c.get("/api/plan", params={"sweep": "root/sw", "flops": 1e16})
    assert r.status_code == 200, r.text
    assert r.json()["law"] != "chinchilla" and r.json()["params"] > 0


def test_a_run_being_trained_shows_live(tmp_path, bytes_data):
    """While `train` writes a run, the API sees it running and its curve growing; then finished."""
    from nextoken.api import train

    root = tmp_path / "root"
    root.mkdir()
    c = starlette_testclient.TestClient(create_app([root]))
    cfg = tiny_config(bytes_data, train__max_steps=150, train__eval_every=50, train__ckpt_every=50)
    thread = threading.Thread(target=train, args=(cfg, root / "live"), kwargs={"quiet": True})
    thread.start()
    seen: list[tuple[str, int]] = []
    while thread.is_alive():
        r = c.get("/api/curves", params={"run": "root/live"})
        if r.status_code == 200 and "train_loss" in r.json()["series"]:
            state = c.get("/api/run", params={"run": "root/live"}).json()["state"]
            seen.append((state, len(r.json()["series"]["train_loss"]["x"])))
        time.sleep(0.02)
    thread.join()
    running = [n for s, n in seen if s == "running"]
    assert len(set(running)) >= 2, seen  # seen running at two different lengths at least
    assert c.get("/api/run", params={"run": "root/live"}).json()["state"] == "finished"


# ---- inside the model ----

def test_inspect_attention_rows_sum_to_one_and_are_causal(client):
    body = client.post("/api/inspect", json={"run": "runs/clean", "prompt": "def alpha(beta):"}).json()
    T = len(body["tokens"])
    assert "".join(t["text"] for t in body["tokens"]) == "def alpha(beta):" and not body["bidirectional"]
    att = np.array(body["attention"])
    assert att.shape == (2, 2, T, T)
    assert np.allclose(att.sum(-1), 1.0, atol=1e-3)  # rounded to 4 decimals for the wire
    assert np.triu(att, 1).max() == 0.0
    assert len(body["residual_norm"]) == 2 and len(body["embedding_norm"]) == T
    assert body["checkpoints"] == [20, 30] and body["step"] == 30


def test_inspect_logit_lens_last_layer_is_the_next_token_distribution(client):
    prompt = "for x in "
    ins = client.post("/api/inspect", json={"run": "runs/clean", "prompt": prompt, "top": 5}).json()
    nxt = client.post("/api/next", json={"run": "runs/clean", "prompt": prompt, "top": 5}).json()
    last = ins["lens"][-1]["positions"][-1]["top"]
    assert [t["id"] for t in last] == [t["id"] for t in nxt["top"]]
    for t, ref in zip(last, nxt["top"], strict=True):
        assert t["p"] == pytest.approx(math.exp(ref["logit"] - nxt["lse"]), abs=1e-5)
    assert [t["id"] for t in ins["final"]["top"][:5]] == [t["id"] for t in last]
    # every position: the lens's true-token rank is that of the next prompt token
    tf = {f["position"]: f for f in ins["teacher_forcing"]["positions"]}
    for pos, cell in enumerate(ins["lens"][-1]["positions"][:-1]):
        assert cell["true_p"] == pytest.approx(math.exp(-tf[pos]["neg_log_p"]), abs=1e-5)


def test_checkpoint_slider_endpoints_equal_nextoken_next(client, served, capsys):
    from nextoken.cli import main

    prompt = "def alpha"
    for step in (20, 30):  # the run's first and last checkpoints: the slider's two ends
        ins = client.post("/api/inspect", json={"run": "runs/clean", "prompt": prompt, "step": step}).json()
        assert ins["step"] == step
        assert main(["next", str(served / "clean"), "--prompt", prompt, "--step", str(step), "--json"]) == 0
        ref = json.loads(capsys.readouterr().out)
        got = {t["id"]: t["p"] for t in ins["final"]["top"]}
        for row in ref["top"]:
            assert got[row["id"]] == pytest.approx(row["prob"], abs=1e-5)
        assert ins["final"]["entropy_nats"] == pytest.approx(ref["entropy_nats"], abs=1e-4)
    early = client.post("/api/inspect", json={"run": "runs/clean", "prompt": prompt, "step": 20}).json()
    assert early["final"] != ins["final"]  # training moved the prediction


def test_inspect_is_cached_and_checks_its_input(client):
    st = client.app.state.serve
    body = {"run": "runs/faults", "prompt": "x = 1", "target": "0"}
    first = client.post("/api/inspect", json=body).json()
    n = len(st.inspections)
    assert client.post("/api/inspect", json=body).json() == first and len(st.inspections) == n
    assert first["target"]["tokens_in_target"] == 1 and first["target"]["text"] == "0"
    for bad, status in [({"run": "runs/clean", "top": 0}, 400), ({"run": "runs/clean", "step": 7}, 400),
                        ({"run": "runs/../x"}, 403)]:
        r = client.post("/api/inspect", json=bad)
        assert r.status_code == status and "\n" not in r.json()["error"]


def test_next_token_scores_the_whole_target(client):
    body = client.post("/api/next", json={"run": "runs/clean", "prompt": "def ", "target": "alpha"}).json()
    t = body["target"]
    assert t["scored"] == "alpha" and t["tokens_in_target"] == len(t["tokens"]) == 5  # bytes: one per character
    assert t["neg_log_p_total"] == pytest.approx(sum(x["neg_log_p"] for x in t["tokens"]))
    assert t["tokens"][0]["neg_log_p"] == pytest.approx(t["neg_log_p"], abs=1e-5)
    assert "with_space" not in t  # the byte tokenizer does not glue spaces to words


def test_lab_runs_three_levels_deep_a_lab_view_and_distinct_root_names(served, tmp_path):
    lab = tmp_path / "lab"
    exp = lab / "warmup-smoke"
    shutil.copytree(served / "clean", exp / "runs" / "short")
    (exp / "lab.json").write_text(json.dumps({"experiment": "warmup", "budget": "smoke", "runs": ["short"]}))
    (exp / "figures.json").write_text(json.dumps({"claim": "warmup helps", "verdict": "held", "why": "because"}))
    (exp / "report.md").write_text("# warmup\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    c = starlette_testclient.TestClient(create_app([lab]))
    assert [r["id"] for r in c.get("/api/runs").json()["runs"]] == ["lab/warmup-smoke/runs/short"]
    labs = c.get("/api/labs").json()["labs"]
    assert labs == [{"id": "lab/warmup-smoke", "name": "warmup-smoke", "experiment": "warmup", "budget": "smoke",
                     "runs": ["short"], "claim": "warmup helps", "source": None, "verdict": "held", "why": "because",
                     "has_report": True, "has_figure": False}]
    rep = c.get("/api/lab", params={"lab": "lab/warmup-smoke"}).json()
    assert rep["report"].startswith("# warmup") and rep["run_ids"] == ["lab/warmup-smoke/runs/short"]
    assert c.get("/api/lab", params={"lab": "lab/warmup-smoke/runs"}).status_code == 400
    assert c.get("/api/lab/figure", params={"lab": "lab/warmup-smoke"}).status_code == 404
    assert c.get("/api/lab", params={"lab": "lab/../x"}).status_code == 403
    # several roots all named runs: told apart by their parents
    for name in ("a", "b"):
        shutil.copytree(served / "clean", tmp_path / name / "runs" / "r")
    c = starlette_testclient.TestClient(create_app([tmp_path / "a" / "runs", tmp_path / "b" / "runs"]))
    assert sorted(c.get("/api/runs").json()["roots"]) == ["a-runs", "b-runs"]
    assert c.post("/api/next", json={"run": "b-runs/r", "prompt": "x"}).status_code == 200


def test_runs_table_train_loss_is_smoothed(client, served):
    from nextoken.serve.runs import smoothed_loss

    run = client.get("/api/runs").json()["runs"][0]
    rows = Run(served / run["id"].split("/", 1)[1]).last_per_step("train")
    assert run["train_loss"] == pytest.approx(smoothed_loss(rows))
    assert run["train_loss_last"] == pytest.approx(rows[-1]["loss"])
    assert smoothed_loss([{"loss": 2.0}] * 3) == pytest.approx(2.0)  # debiased: a constant stays itself
    assert "trained_on" in run and "bytes" in run["trained_on"]
