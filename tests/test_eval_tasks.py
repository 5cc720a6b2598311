"""Downstream tasks (nextoken/eval/tasks.py, docs/eval.md): `--task` scores equal an independent one-sequence-at-a-
time scorer's, in-training task lines appear once per eval, the built-in task is deterministic, and bad task files
are one-line errors naming the line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

import nextoken
from nextoken.cli import main
from nextoken.data.tokenizer import eot_id
from nextoken.errors import DataError
from nextoken.eval.tasks import contamination_warning, load_task, read_task, score_task
from nextoken.generate import generate
from nextoken.run import Run

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["alpha", "beta", "gamma", "delta", "count", "value", "items", "total", "result", "name"]


def write_tasks(folder: Path) -> tuple[Path, Path]:
    """A multiple-choice and a cloze task in the corpus's own style; some contexts longer than the 32-token window
    (cut from the left), some ending in whitespace (moved into the continuation), one choice not ASCII."""
    folder.mkdir(parents=True, exist_ok=True)
    mc, cloze = [], []
    for i, (a, b) in enumerate(zip(NAMES, NAMES[3:] + NAMES[:3], strict=True)):
        long = "".join(f"for {b} in {a}:\n    {b} += 1\n" for _ in range(i % 3 * 4))
        mc.append({"context": f"{long}def {a}_{b}({a}, {b}):\n    return",
                   "choices": [f" {a} + {b}\n", f" {b} * 7 for\n", " é(\n", f" in {a}\n"], "label": 0})
        mc.append({"context": f"{long}for {a} in {b}:\n    " if i % 2 else f"for {a} in {b}:\n",
                   "choices": [f"{a} += 1\n", "return\n", f"print({b})\n"], "label": i % 3})
        cloze.append({"context": f"{long}if {a} > 5:\n    print(", "continuation": f"{b})\n"})
        cloze.append({"context": f"def {a}_{b}({a}, {b}):\n    return {a} +", "continuation": f" {b}\n"})
    (folder / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (folder / "fill.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cloze))
    return folder / "choice.jsonl", folder / "fill.jsonl"


@pytest.fixture(scope="module")
def run_with_tasks(bpe_data, tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("tasks")
    mc, cloze = write_tasks(folder)
    cfg = tiny_config(bpe_data, train__eval_tasks=f"{mc},{cloze}")
    out = folder / "run"
    nextoken.train(cfg, out, quiet=True)
    return out, mc, cloze


def independent_scores(model, tok, path: Path) -> dict:
    """The conventions written out again, one sequence at a time with F.cross_entropy: the document-start token,
    trailing context whitespace moved to the continuation, encode(context + choice) after encode(context), the
    window's last block_size + 1 tokens."""
    T, eot = model.cfg.block_size, eot_id(tok)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    acc = acc_norm = 0
    bits = n_bytes = 0.0
    for row in rows:
        choices = row.get("choices", [row.get("continuation")])
        label = row.get("label", 0)
        lls, greedy = [], []
        for choice in choices:
            ctx = row["context"].rstrip()
            cont = row["context"][len(ctx):] + choice
            n_ctx = len(tok.encode(ctx).ids)
            whole = [eot] + tok.encode(ctx + cont).ids
            n_cont = len(whole) - 1 - n_ctx
            seq = whole[-(T + 1):]
            with torch.no_grad():
                logits = model(torch.tensor([seq[:-1]]))[0, -n_cont:]
            target = torch.tensor(seq[-n_cont:])
            lls.append(-float(F.cross_entropy(logits, target, reduction="sum")))
            greedy.append(bool((logits.argmax(-1) == target).all()))
        if "choices" in row:
            acc += max(range(len(lls)), key=lambda i: (lls[i], -i)) == label
            per_byte = [ll / len(c.encode()) for ll, c in zip(lls, choices, strict=True)]
            acc_norm += max(range(len(lls)), key=lambda i: (per_byte[i], -i)) == label
        else:
            acc += greedy[0]
        bits -= lls[label] / math.log(2)
        n_bytes += len((row["context"][len(row["context"].rstrip()):] + choices[label]).encode())
    return {"n": len(rows), "acc": acc / len(rows), "acc_norm": acc_norm / len(rows), "bits_per_byte": bits / n_bytes}


def test_task_scores_equal_an_independent_scorer(run_with_tasks, capsys):
    run, mc, cloze = run_with_tasks
    assert main(["eval", str(run), "--task", str(mc), "--task", str(cloze), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["tasks"]
    assert set(got) == {"choice", "fill"}
    loaded = Run(run).load()
    for name, path in (("choice", mc), ("fill", cloze)):
        want = independent_scores(loaded.model, loaded.tokenizer, path)
        assert got[name]["n"] == want["n"]
        assert got[name]["acc"] == want["acc"]  # exactly: the same items right
        assert got[name]["bits_per_byte"] == pytest.approx(want["bits_per_byte"], abs=1e-4)
    assert got["choice"]["acc_norm"] == independent_scores(loaded.model, loaded.tokenizer, mc)["acc_norm"]
    assert got["fill"]["acc_norm"] is None  # cloze has no per-byte choice


def test_cloze_counts_a_greedy_continuation(run_with_tasks, tmp_path):
    """A continuation that is the model's own greedy one scores acc 1; the same with one token changed, 0."""
    run, _, _ = run_with_tasks
    loaded = Run(run).load()
    tok, model = loaded.tokenizer, loaded.model
    rows, wrong = [], []
    for a, n in ((a, n) for a in NAMES for n in (3, 2, 1)):
        ctx = f"def {a}_beta({a}, beta):\n    return {a}"
        ids = [eot_id(tok)] + tok.encode(ctx).ids
        new = list(generate(model, ids, n, temperature=0))
        text = tok.decode(new)
        if tok.encode(ctx + text).ids != ids[1:] + new:  # the greedy tokens must be what the text encodes to
            continue
        rows.append({"context": ctx, "continuation": text})
        wrong.append({"context": ctx, "continuation": text + "z"})  # one more token, surely not the greedy one
    assert rows, "no greedy continuation re-encoded to itself"
    for items, want in ((rows, 1.0), (wrong, 0.0)):
        path = tmp_path / "greedy.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        assert score_task(model, tok, read_task(path), model.cfg.block_size)["acc"] == want


def test_training_writes_one_task_line_per_task_per_eval(run_with_tasks):
    run, _, _ = run_with_tasks
    r = Run(run)
    eval_steps = [row["step"] for row in r.metrics("eval")]
    lines = r.metrics("task")
    assert eval_steps == [10, 20]
    for name in ("choice", "fill"):
        mine = [row for row in lines if row["task"] == name]
        assert [row["step"] for row in mine] == eval_steps
        assert all({"step", "tokens", "task", "n", "acc", "acc_norm", "bits_per_byte"} <= set(row) for row in mine)
    last = {row["task"]: row for row in lines if row["step"] == 20}
    loaded = r.load()
    for name, path in (("choice", run.parent / "choice.jsonl"), ("fill", run.parent / "fill.jsonl")):
        # the in-training figures are the final model's: the same as `eval --task` after training
        again = score_task(loaded.model, loaded.tokenizer, read_task(path), loaded.model.cfg.block_size)
        assert last[name]["acc"] == again["acc"]
        assert last[name]["bits_per_byte"] == pytest.approx(again["bits_per_byte"], abs=1e-4)


@pytest.mark.parametrize("content, says", [
    ('{"context": "a", "choices": ["b", "c"], "label": 0}\nnot json\n', ":2 is not valid JSON"),
    ('{"context": "a", "choices": ["b", "c"], "label": 2}\n', ':1: "label" must be the index'),
    ('{"context": "a", "choices": ["b"], "label": 0}\n', ':1: "choices" must be a list of at least two'),
    ('{"context": 3, "continuation": "b"}\n', ':1 has no "context" string'),
    ('{"context": "a", "continuation": "b"}\n\n{"context": "a", "choices": ["b", "c"], "label": 1}\n',
     ":3 is a multiple-choice item but the file's first is cloze"),
    ('{"context": "a"}\n', ':1 has neither "choices"'),
    ('[1, 2]\n', ':1 has no "context" string'),
    ('\n\n', "holds no items"),
])
def test_bad_task_files_are_one_line_errors(run_with_tasks, tmp_path, capsys, content, says):
    run, _, _ = run_with_tasks
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["eval", str(run), "--task", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err


def test_bad_task_file_stops_training_before_it_starts(bpe_data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    code = main(["train", "--data", str(bpe_data), "--out", str(tmp_path / "run"), "--train.max_steps", "2",
                 "--train.eval_tasks", str(bad)])
    assert code != 0
    assert f"{bad}:1 has no" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_builtin_nextline_is_deterministic_and_held_out():
    a, b = load_task("builtin:nextline"), load_task("builtin:nextline")
    assert a == b and a.name == "nextline" and a.kind == "choice" and len(a.items) == 250
    for it in a.items:
        assert len(it.choices) == 4 and len(set(it.choices)) == 4
        indent = {c[:len(c) - len(c.lstrip())] for c in it.choices}
        assert len(indent) == 1  # re-indented: indentation gives nothing away
    labels = [it.label for it in a.items]
    assert min(labels.count(k) for k in range(4)) > 40  # the answer's position is not a cue either
    with pytest.raises(DataError, match="no built-in task 'nope'"):
        load_task("builtin:nope")


def test_warns_when_the_run_trained_on_the_test_suites(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"sources": ["stdlib+tests"]}))
    assert "stdlib+tests" in contamination_warning(["builtin:nextline"], tmp_path)
    assert contamination_warning(["my.jsonl"], tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"sources": ["stdlib"]}))
    assert contamination_warning(["builtin:nextline"], tmp_path) is None
