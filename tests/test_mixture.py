"""Data mixtures (`--data A=0.7,B=0.3`), document-aligned packing, attention kept inside documents, and the
`stdlib-prose` corpus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from nextoken.cli import main
from nextoken.data.loader import IGNORE_INDEX, PackedSampler, TokenData
from nextoken.data.mixture import MixtureSampler, allocate, parse_mix, resolve
from nextoken.data.prepare import PrepareOptions, prepare
from nextoken.data.sources import module_prose
from nextoken.errors import ConfigError, DataError
from nextoken.run import Run, last_per_step, sources_of
from nextoken.training.loop import train


@pytest.fixture(scope="session")
def prose_data(tmp_path_factory) -> Path:
    """English-like documents of varied lengths, byte-level like conftest's bytes_data (the same tokenizer)."""
    text = tmp_path_factory.mktemp("prose-text")
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and then it ran to see what the dog did in the sun".split()
    for i in range(40):
        n = int(rng.integers(3, 60))
        (text / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, n)).capitalize() + ".\n")
    out = tmp_path_factory.mktemp("prep") / "prose"
    prepare([str(text)], out, PrepareOptions(tokenizer="bytes", val_fraction=0.1, progress=False), log=lambda m: None)
    return out


def _mix(a: Path, b: Path, wa: float = 0.7, wb: float = 0.3) -> str:
    return f"{a}={wa},{b}={wb}"


def _mixed(bytes_data, prose_data, **overrides):
    cfg = tiny_config(bytes_data, **overrides)
    cfg.data.mix = _mix(bytes_data, prose_data)
    return cfg


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- shares ----


@pytest.mark.parametrize("weights,n", [((0.7, 0.3), 16), ((0.8, 0.2), 16), ((0.5, 0.3, 0.2), 7), ((0.05, 0.95), 8)])
def test_shares_match_the_weights_over_many_steps(weights, n):
    w, steps = np.array(weights), 20000
    counts = np.array([allocate(n, w, 1337, s) for s in range(steps)])
    assert (counts.sum(axis=1) == n).all()
    assert ((counts >= np.floor(n * w)) & (counts <= np.ceil(n * w))).all()  # every step within one row
    err = np.abs(np.cumsum(counts, axis=0) - np.outer(np.arange(1, steps + 1), n * w))
    assert err.max() <= 4  # the stated tolerance (data/mixture.py): rows, cumulative, at any step


def test_sampler_rows_come_from_their_sources_in_the_allocated_numbers(bytes_data, prose_data):
    sources = resolve(_mix(bytes_data, prose_data))
    s = MixtureSampler(sources, 32, seed=3)
    seen = np.zeros(2, dtype=int)
    for step in range(50):
        labels = s.labels(step, 8)
        assert np.bincount(labels, minlength=2).tolist() == s.counts(step, 8).tolist()
        seen += np.bincount(labels, minlength=2)
        x, y = s.batch(step, 8)
        again = torch.cat([s.batch(step, 8, off, 2)[0] for off in range(0, 8, 2)])  # any slicing, same rows
        assert torch.equal(x, again) and torch.equal(x[:, 1:], y[:, :-1])
    assert abs(seen[0] / seen.sum() - 0.7) < 0.01


def test_bad_weight_strings_and_mismatched_tokenizers_are_one_line(bytes_data, bpe_data, tmp_path, capsys):
    for bad in ("a=0.7,b", "a=-1,b=1", "a=x,b=1", "=1", "a=0,b=1", "a=nan"):
        with pytest.raises(ConfigError, match="NAME=WEIGHT"):
            parse_mix(bad)
    with pytest.raises(ConfigError, match="named 'bytes'"):
        parse_mix(f"{bytes_data}=1,{bytes_data}=2")
    assert [s.weight for s in parse_mix("a=7,b=3")] == pytest.approx([0.7, 0.3])
    assert main(["train", "--data", "a=0.7,b=oops", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'b=oops'" in err
    with pytest.raises(DataError) as info:
        resolve(_mix(bytes_data, bpe_data))
    msg = str(info.value)
    assert "\n" not in msg and "bpe" in msg and "bytes" in msg and "different tokenizers" in msg


def test_the_mix_in_a_toml_config_and_on_the_command_line(tmp_path, capsys):
    from nextoken.api import resolve_train_config
    from nextoken.config import build_config

    toml = tmp_path / "mix.toml"
    toml.write_text('[data]\nmix = "stdlib=0.8,stdlib-prose=0.2"\nmax_repeat = 2.0\n')
    cfg = build_config("tiny", str(toml))
    assert cfg.data.mix == "stdlib=0.8,stdlib-prose=0.2" and cfg.data.max_repeat == 2.0
    assert resolve_train_config(data="a=1,b=3").data.mix == "a=1,b=3"
    assert resolve_train_config(file=str(toml), data="some/dir").data.mix == ""  # --data DIR replaces the mix
    toml.write_text('[data]\nmix = "stdlib=0.8,stdlib-prose"\n')
    with pytest.raises(ConfigError, match="NAME=WEIGHT"):
        build_config("tiny", str(toml))
    assert main(["train", "--data", "stdlib=0.8,stdlib-prose=0.2", "--dry-run"]) == 0
    assert 'mix = "stdlib=0.8,stdlib-prose=0.2"' in capsys.readouterr().out


# ---- training on a mix ----


def test_mixed_run_logs_tokens_by_source_and_per_source_evals_equal_nextoken_eval(bytes_data, prose_data, tmp_path):
    cfg = _mixed(bytes_data, prose_data, train__max_steps=6, train__eval_every=3, train__log_every=1)
    res = train(cfg, tmp_path / "run", quiet=True)
    rows = _rows(tmp_path / "run")
    trains = [r for r in rows if r["kind"] == "train"]
    per_step = cfg.train.batch_size * cfg.model.block_size
    for r in trains:
        assert sum(r["tokens_by_source"].values()) == r["tokens"] == r["step"] * per_step
    assert set(trains[-1]["tokens_by_source"]) == {"bytes", "prose"}
    assert sources_of(rows) == ["bytes", "prose"]
    overall = last_per_step(rows, "eval")
    assert [r["step"] for r in overall] == [3, 6] and all("source" not in r for r in overall)
    assert overall[-1]["loss"] == pytest.approx(res["loss"])
    by_source = {n: last_per_step(rows, "eval", n)[-1] for n in ("bytes", "prose")}
    assert res["loss"] == pytest.approx(0.7 * by_source["bytes"]["loss"] + 0.3 * by_source["prose"]["loss"])
    # a per-source eval equals `nextoken eval` on that source alone (same windows: the same eval_tokens)
    from nextoken.api import evaluate

    for name, data in (("bytes", bytes_data), ("prose", prose_data)):
        alone = evaluate(tmp_path / "run", data, tokens=cfg.train.eval_tokens)
        assert alone["loss"] == pytest.approx(by_source[name]["loss"], rel=1e-6)
        assert alone["bits_per_byte"] == pytest.approx(by_source[name]["bits_per_byte"], rel=1e-6)
    both = evaluate(tmp_path / "run", tokens=cfg.train.eval_tokens)  # the run's own data: the whole mix
    assert both["loss"] == pytest.approx(res["loss"], rel=1e-6) and set(both["sources"]) == {"bytes", "prose"}


def test_mixed_resume_is_bit_identical(bytes_data, prose_data, tmp_path):
    cfg = dict(train__max_steps=10, train__ckpt_every=5, train__keep=5, train__eval_every=0, model__dropout=0.1)
    train(_mixed(bytes_data, prose_data, **cfg), tmp_path / "full", quiet=True)
    split = tmp_path / "split"
    train(_mixed(bytes_data, prose_data, **cfg), split, quiet=True)
    shutil.rmtree(split / "checkpoints" / "step_00000010")
    (split / "checkpoints" / "latest").write_text("step_00000005\n")
    (split / "metrics.jsonl").write_text("")
    train(_mixed(bytes_data, prose_data, **cfg), split, resume=True, quiet=True)
    a, b = Run(tmp_path / "full").load(), Run(split).load()
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(),
                                                    strict=True))
    assert a.trainer["tokens_by_source"] == b.trainer["tokens_by_source"]
    last = [r for r in _rows(split) if r["kind"] == "train"][-1]
    ref = [r for r in _rows(tmp_path / "full") if r["kind"] == "train"][-1]
    assert last["loss"] == ref["loss"] and last["tokens_by_source"] == ref["tokens_by_source"]


@pytest.mark.slow
def test_mixed_run_on_two_gloo_processes_then_one_matches_one_process(bytes_data, prose_data, tmp_path):
    cfg = dict(train__max_steps=8, train__eval_every=0, train__ckpt_every=4, train__keep=5,
               optim__schedule="constant", optim__warmup_steps=2, log__sample_tokens=0)
    train(_mixed(bytes_data, prose_data, **cfg), tmp_path / "one", quiet=True)
    ref = {r["step"]: r for r in _rows(tmp_path / "one") if r["kind"] == "train"}
    half = _mixed(bytes_data, prose_data, **{**cfg, "train__max_steps": 4})
    (tmp_path / "mix.toml").write_text(half.to_toml())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nextoken",
           "train", "--config", str(tmp_path / "mix.toml"), "--out", str(tmp_path / "two")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    train(_mixed(bytes_data, prose_data, **cfg), tmp_path / "two", resume=True, quiet=True)  # on one process
    got = {r["step"]: r for r in _rows(tmp_path / "two") if r["kind"] == "train"}
    assert sorted(got) == list(range(1, 9))
    for step, r in got.items():
        assert r["tokens_by_source"] == ref[step]["tokens_by_source"]  # the same rows from the same sources
        assert r["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4)  # DDP's all-reduce adds in another order


def test_repeat_cap_refuses_or_reports(bytes_data, prose_data, tmp_path):
    cfg = _mixed(bytes_data, prose_data, train__max_steps=4, train__eval_every=0)
    cfg.data.max_repeat, cfg.data.on_repeat = 0.01, "refuse"
    with pytest.raises(ConfigError, match="data.max_repeat") as info:
        train(cfg, tmp_path / "refused", quiet=True)
    assert "\n" not in str(info.value) and not (tmp_path / "refused" / "config.toml").exists()
    cfg.data.on_repeat = "report"
    train(cfg, tmp_path / "reported", quiet=True)
    events = [r for r in _rows(tmp_path / "reported") if r.get("type") == "repeat"]
    assert len(events) == 1 and set(events[0]["detail"]["epochs"]) == {"bytes", "prose"}


# ---- packing and document masks ----


def test_bestfit_rows_start_at_documents_and_drop_no_token(prose_data, bytes_data):
    for data, T in ((prose_data, 32), (bytes_data, 32)):  # short documents; documents longer than a row
        d = TokenData(data, "train")
        s = PackedSampler(d, T, seed=0)
        stream = np.concatenate([np.asarray(x) for x in d.shards]).astype(np.int64)
        eot = s.eot
        targets = np.zeros(len(stream), dtype=int)  # how often each stream position is a target
        for r in range(s.n_rows):
            row, n = s.row(r)
            segs = s.segments[s.row_start[r]:s.row_start[r + 1]]
            assert 2 <= n <= T + 1 and (row[n:] == eot).all()
            first_shard, first_start, _ = segs[0]
            # a row starts at a document: its BOS (the separator before it, or the one made up for the first)
            # unless it continues a document longer than a row (stated exception)
            continues = first_start >= 0 and stream[first_start] != eot
            assert row[0] == eot or continues
            if continues:
                assert segs[0][2] <= T + 1 and len(segs) >= 1
            for _, start, length in segs.tolist():
                lo = max(start, 0)
                targets[lo + (start >= 0):start + length] += 1
        # every token of every document is a target exactly once; a separator is one where another document
        # follows in the row (the stated exception: nothing is predicted after a row's last document)
        words = stream != eot
        assert (targets[words] == 1).all() and (targets[~words] <= 1).all()
    s = PackedSampler(TokenData(prose_data, "train"), 32, seed=0)
    x, y = s.batch(0, 4 * s.n_rows)  # every row, most likely, some with padding at their end
    pad = y == IGNORE_INDEX
    assert pad.any() and (x[:, 1:][pad[:, :-1]] == eot).all()  # padding: separators in, nothing out


def test_document_mask_keeps_attention_inside_documents():
    from nextoken.config import Config
    from nextoken.model import GPT
    from nextoken.training.objective import documents

    m = Config().model
    m.n_layer, m.n_head, m.d_model, m.block_size, m.vocab_size, m.pos = 2, 2, 32, 16, 50, "rope"
    torch.manual_seed(0)
    model = GPT(m).eval()
    sep = 0
    x = torch.tensor([[5, 6, 7, sep, 8, 9, 10, 11]])
    x2 = x.clone()
    x2[0, :3] = torch.tensor([20, 21, 22])  # another first document
    doc = documents(x, sep)
    assert doc.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    a, b = model(x, doc_BT=doc), model(x2, doc_BT=documents(x2, sep))
    assert torch.allclose(a[0, 3:], b[0, 3:], atol=1e-6)  # the second document does not see the first
    assert not torch.allclose(model(x)[0, 3:], model(x2)[0, 3:], atol=1e-3)  # without the mask it does
    one = torch.tensor([[5, 6, 7, 8, 9]])  # one document: the mask is plain causal attention
    assert torch.allclose(model(one), model(one, doc_BT=documents(one, sep)), atol=1e-5)
    # RoPE is relative, so a document later in the row scores as it would at the row's start
    assert torch.allclose(a[0, 3:], model(x[:, 3:])[0], atol=1e-5)


def test_packed_and_masked_run_trains(prose_data, tmp_path):
    cfg = tiny_config(prose_data, train__max_steps=4, train__eval_every=0, model__pos="rope")
    cfg.data.packing, cfg.data.doc_mask = "bestfit", True
    res = train(cfg, tmp_path / "run", quiet=True)
    assert np.isfinite(res["loss"])


# ---- stdlib-prose ----


def test_module_prose_keeps_docstrings_and_comments_in_order():
    src = b'''#!/usr/bin/env python
# -*- coding: utf-8 -*-
"""The module's docstring."""
import os  # not prose? it is: a comment after code

# A comment block
# of two lines.
# x = compute(y)
def f():
    """What f does."""
    return 1
'''
    text = module_prose(src)
    assert text.split("\n\n") == ["The module's docstring.", "not prose? it is: a comment after code",
                                  "A comment block\nof two lines.", "What f does."]
    assert module_prose(b"def broken(:\n    # still read\n") == "still read"


@pytest.mark.slow
def test_builtin_names_mix_with_one_tokenizer(tmp_path):
    sources = resolve("stdlib=0.8,stdlib-prose=0.2", tokenizer="bytes")
    assert [s.name for s in sources] == ["stdlib", "stdlib-prose"]
    code, prose = (json.loads((s.path / "manifest.json").read_text()) for s in sources)
    assert prose["sources"] == ["stdlib-prose"] and prose["tokenizer_hash"] == code["tokenizer_hash"]
    # one prose document per stdlib document, then pydoc_data's topics: both corpora split the modules alike
    from pydoc_data.topics import topics

    assert prose["documents"] == code["documents"] + len(topics)
    assert prose["splits"]["val"]["documents"] >= code["splits"]["val"]["documents"]


@pytest.mark.slow
def test_eval_data_takes_a_builtin_name_prepared_with_the_runs_tokenizer(tmp_path):
    """`nextoken eval RUN --data stdlib-prose` is the mixed run's per-source figure for that source; stdlib+tests
    is a built-in name like the others (a fresh user's trial found both refused as "not prepared data")."""
    from nextoken.api import evaluate
    from nextoken.data.builtin import is_builtin

    assert all(is_builtin(n) for n in ("stdlib", "stdlib+tests", "stdlib-prose"))
    sources = resolve("stdlib=0.8,stdlib-prose=0.2", tokenizer="bytes")
    cfg = tiny_config(sources[0].path, train__max_steps=2, train__eval_every=2, train__eval_tokens=4096)
    cfg.data.mix = "stdlib=0.8,stdlib-prose=0.2"
    cfg.data.tokenizer = "bytes"
    train(cfg, tmp_path / "run", quiet=True)
    per_source = last_per_step(_rows(tmp_path / "run"), "eval", "stdlib-prose")[-1]
    alone = evaluate(tmp_path / "run", "stdlib-prose", tokens=4096)
    assert alone["loss"] == pytest.approx(per_source["loss"], rel=1e-6)


# ---- readers: the overall line stays the run's figure; the web app draws one curve per source ----


def test_readers_keep_the_overall_eval_and_curves_add_one_per_source():
    from nextoken.run import final_eval
    from nextoken.serve.runs import curves

    rows = [{"kind": "train", "step": 2, "tokens": 64, "loss": 3.0, "elapsed_s": 1.0,
             "tokens_by_source": {"a": 48, "b": 16}}]
    for source, loss in (("a", 2.0), ("b", 4.0), (None, 2.5)):
        rows.append({"kind": "eval", "step": 2, "tokens": 64, "split": "val", "loss": loss, "bits_per_byte": loss,
                     **({"source": source} if source else {})})
    assert final_eval(rows, 2)["loss"] == 2.5 and last_per_step(rows, "eval")[0]["loss"] == 2.5
    series = curves(rows, "tokens")["series"]
    assert series["val_loss"]["y"] == [2.5]
    assert series["val_loss:a"] == {"x": [64.0], "y": [2.0], "n": 1} and series["val_bpb:b"]["y"] == [4.0]
