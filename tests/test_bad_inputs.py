"""Bad input, everywhere (issue 3): every case exits non-zero with exactly one line on stderr that says
what is wrong and what to do, no traceback, and leaves every file that existed before untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from tokenizers import Tokenizer, models

from nextoken.cli import build_parser, main
from nextoken.training.loop import train


@pytest.fixture(scope="module")
def trained_run(bytes_data, tmp_path_factory) -> Path:
    before = torch.get_num_threads()
    run = tmp_path_factory.mktemp("bad-inputs") / "run"
    train(tiny_config(bytes_data, train__max_steps=4, train__ckpt_every=4, train__threads=1), run, quiet=True)
    torch.set_num_threads(before)
    return run


@dataclass
class Ctx:
    tmp: Path
    run: Path
    data: Path

    def file(self, name: str, content: bytes | str) -> str:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(p)

    def dir(self, name: str) -> str:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return str(self.tmp / name)

    def run_copy(self, name: str = "copy") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.run, dst)
        return dst


TINY = ["--model.n_layer", "1", "--model.d_model", "32", "--model.n_head", "2", "--model.block_size", "32",
        "--train.max_steps", "2", "--train.batch_size", "2", "--log.progress", "off", "--train.threads", "1"]


def _truncated(c: Ctx) -> list[str]:
    run = c.run_copy()
    f = run / "checkpoints" / "step_00000004" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ["eval", str(run)]


def _other_architecture(c: Ctx) -> list[str]:
    run = c.run_copy()
    trainer = run / "checkpoints" / "step_00000004" / "trainer.json"
    t = json.loads(trainer.read_text())
    t["model"]["n_layer"] = 3
    trainer.write_text(json.dumps(t))
    return ["eval", str(run)]


def _bad_tokenizer(c: Ctx) -> list[str]:
    run = c.run_copy()
    (run / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    return ["sample", str(run), "--max-new-tokens", "2"]


def _ascii_only_tokenizer(c: Ctx) -> list[str]:
    run = c.run_copy()
    vocab = {chr(i): i - 32 for i in range(32, 127)}
    Tokenizer(models.BPE(vocab=vocab, merges=[])).save(str(run / "tokenizer.json"))
    return ["next", str(run), "--prompt", "€€∑"]


def _resume_other_tokenizer(c: Ctx) -> list[str]:
    """Data prepared with another tokenizer of the same size (issue 23: the loss rose without a word)."""
    other = c.tmp / "other-data"
    shutil.copytree(c.data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer_hash"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    return ["train", "--out", str(c.run_copy()), "--resume", "--data", str(other), "--train.max_steps", "6"]


def _metrics_without_steps(c: Ctx) -> list[str]:
    c.file("r/metrics.jsonl", json.dumps({"kind": "event", "step": 0, "type": "resume", "detail": ""}) + "\n")
    return ["plot", str(c.tmp / "r")]


# (id, argv from the context, a phrase the one line must hold)
CASES = [
    # prepare
    ("binary-corpus", lambda c: ["prepare", c.file("blob.bin", bytes(range(256)) * 8), "--out", str(c.tmp / "o")],
     "binary"),
    ("invalid-utf8", lambda c: ["prepare", c.file("bad.txt", b"def f():\n    return '\xff\xfe'\n"),
                                "--out", str(c.tmp / "o")], "not valid UTF-8"),
    ("empty-directory", lambda c: ["prepare", c.dir("empty"), "--out", str(c.tmp / "o")], "holds no files"),
    ("jsonl-not-json", lambda c: ["prepare", c.file("d.jsonl", '{"text": "a b"}\nnot json\n'),
                                  "--out", str(c.tmp / "o")], "not valid JSON"),
    ("jsonl-no-text-field", lambda c: ["prepare", c.file("d.jsonl", '{"body": "a b"}\n'),
                                       "--out", str(c.tmp / "o")], "no 'text' field"),
    ("missing-source", lambda c: ["prepare", str(c.tmp / "nope.txt"), "--out", str(c.tmp / "o")],
     "does not exist"),
    ("tokenizer-not-one", lambda c: ["prepare", c.file("a.txt", "x = 1\n"), "--tokenizer", c.file("t.json", "{}"),
                                     "--out", str(c.tmp / "o")], "not a Hugging Face tokenizer.json"),
    ("vocab-size-zero", lambda c: ["prepare", c.file("a.txt", "x = 1\n"), "--vocab-size", "0",
                                   "--out", str(c.tmp / "o")], "must be >= 1"),
    ("vocab-size-not-a-number", lambda c: ["prepare", "--vocab-size", "lots", "--out", str(c.tmp / "o")],
     "not an integer"),
    ("prepare-out-exists", lambda c: ["prepare", c.file("a.txt", "x = 1\n"), "--out", str(c.data)],
     "already exists"),
    ("val-fraction-too-big", lambda c: ["prepare", c.file("a.txt", "x = 1\n"), "--val-fraction", "1.5",
                                        "--out", str(c.tmp / "o")], "val-fraction"),
    # train
    ("batch-size-zero", lambda c: ["train", "--data", str(c.data), "--out", str(c.tmp / "r"), *TINY,
                                   "--train.batch_size", "0"], "train.batch_size must be >= 1"),
    ("batch-size-negative", lambda c: ["train", "--data", str(c.data), "--out", str(c.tmp / "r"), *TINY,
                                       "--train.batch_size", "-4"], "train.batch_size must be >= 1"),
    ("lr-not-a-number", lambda c: ["train", "--data", str(c.data), "--optim.lr", "fast"], "not a valid float"),
    ("steps-not-an-int", lambda c: ["train", "--data", str(c.data), "--train.max_steps", "1.5"], "not a valid int"),
    ("unknown-field", lambda c: ["train", "--data", str(c.data), "--model.n_layr", "4"], "unknown config field"),
    ("data-not-prepared", lambda c: ["train", "--data", c.dir("raw"), "--out", str(c.tmp / "r"), *TINY],
     "not prepared data"),
    ("context-longer-than-val", lambda c: ["train", "--data", str(c.data), "--out", str(c.tmp / "r"), *TINY,
                                           "--model.block_size", "4096"], "val split has"),
    ("out-holds-a-run", lambda c: ["train", "--data", str(c.data), "--out", str(c.run), *TINY],
     "already holds a run"),
    ("resume-nothing", lambda c: ["train", "--out", c.dir("fresh"), "--resume"], "no checkpoint to resume"),
    ("resume-other-architecture", lambda c: ["train", "--out", str(c.run), "--resume", "--model.n_layer", "3"],
     "different model config"),
    ("resume-other-tokenizer", _resume_other_tokenizer, "another tokenizer"),
    ("config-file-missing", lambda c: ["train", "--config", str(c.tmp / "none.toml")], "does not exist"),
    ("config-file-not-toml", lambda c: ["train", "--config", c.file("bad.toml", "[model\nn_layer = 2")],
     "not valid TOML"),
    ("inject-spec", lambda c: ["train", "--data", str(c.data), "--stability.inject", "boom@3"], "stability.inject"),
    ("policy-unknown", lambda c: ["train", "--data", str(c.data), "--stability.policy", "pray"], "must be one of"),
    # eval
    ("eval-missing-run", lambda c: ["eval", str(c.tmp / "nope")], "does not exist"),
    ("eval-truncated-safetensors", _truncated, "truncated"),
    ("eval-other-architecture", _other_architecture, "does not match this model's architecture"),
    ("eval-data-not-prepared", lambda c: ["eval", str(c.run), "--data", c.dir("raw")], "not prepared data"),
    ("eval-unknown-split", lambda c: ["eval", str(c.run), "--split", "test"], "no 'test' split"),
    ("eval-negative-tokens", lambda c: ["eval", str(c.run), "--tokens", "-5"], "--tokens"),
    # sample
    ("top-p-above-one", lambda c: ["sample", str(c.run), "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ("temperature-negative", lambda c: ["sample", str(c.run), "--temperature", "-1"], "--temperature"),
    ("top-k-zero", lambda c: ["sample", str(c.run), "--top-k", "0"], "--top-k"),
    ("max-new-tokens-zero", lambda c: ["sample", str(c.run), "--max-new-tokens", "0"], "must be >= 1"),
    ("tokenizer-json-not-one", _bad_tokenizer, "not a Hugging Face tokenizer.json"),
    # next
    ("prompt-only-unknown-characters", _ascii_only_tokenizer, "no character"),
    ("next-without-prompt", lambda c: ["next", str(c.run)], "--prompt"),
    ("next-top-zero", lambda c: ["next", str(c.run), "--prompt", "x", "--top", "0"], "--top must be >= 1"),
    ("next-no-checkpoint", lambda c: ["next", c.dir("nockpt"), "--prompt", "x"], "is not a nextoken run directory"),
    # plot
    ("plot-not-a-run", lambda c: ["plot", c.dir("nometrics")], "is not a nextoken run directory"),
    ("plot-no-steps", _metrics_without_steps, "no training steps"),
    ("plot-unknown-format", lambda c: ["plot", str(c.run), "--out", str(c.tmp / "loss.txt")], "not supported"),
    ("plot-out-under-a-file", lambda c: ["plot", str(c.run), "--out", c.file("f", "x") + "/loss.png"], "cannot write"),
    # plan
    ("plan-no-budget", lambda c: ["plan"], "--flops"),
    ("plan-negative-flops", lambda c: ["plan", "--flops", "-5"], "--flops"),
    ("plan-flops-not-a-number", lambda c: ["plan", "--flops", "lots"], "lots"),
    # the command itself
    ("unknown-command", lambda c: ["frobnicate"], "invalid choice"),
]


def _has_plan() -> bool:
    return "plan" in build_parser()._subparsers._group_actions[0].choices


def _hashes(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("argv, phrase", [pytest.param(a, p, id=i, marks=pytest.mark.skipif(
    i.startswith("plan-") and not _has_plan(), reason="nextoken plan is not there yet")) for i, a, p in CASES])
def test_bad_input_is_one_clear_line(argv, phrase, trained_run, bytes_data, tmp_path, capsys):
    c = Ctx(tmp_path, trained_run, bytes_data)
    args = argv(c)
    before = _hashes(tmp_path, trained_run, bytes_data)
    threads = torch.get_num_threads()
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own exits must not happen either: they print usage lines
        code = e.code
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code not in (0, None), f"{args} succeeded:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{args} printed:\n{err}"
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in err and len(lines[0]) < 400
    after = _hashes(tmp_path, trained_run, bytes_data)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed was changed"
    assert before.keys() <= after.keys(), "a file that existed was deleted"



def test_json_into_a_closed_pipe_is_no_traceback():
    """`nextoken plan --json | head -c 10`: the reader leaves early; the command says nothing (no BrokenPipeError
    traceback) and exits as a Unix tool does on a closed pipe."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "nextoken", "plan", "--flops", "1e21", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes: its write meets a closed pipe
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141
