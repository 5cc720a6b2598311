"""Paths and prompts that are not UTF-8 (issue 23). Python hands such argv bytes on as surrogates
(os.fsdecode); the Rust bindings (tokenizers, safetensors) refuse those, so nextoken reads and writes through
Python's own file calls, and prints such names with the bytes escaped."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_corpus

from nextoken.cli import main

ODD = os.fsdecode(b"caf\xe9-\xff")  # Latin-1 bytes: "caf\udce9-\udcff"
TINY = ["--model.n_layer", "1", "--model.d_model", "32", "--model.n_head", "2", "--model.block_size", "32",
        "--train.max_steps", "4", "--train.batch_size", "2", "--train.eval_tokens", "256",
        "--log.sample_tokens", "4", "--log.progress", "off", "--train.threads", "1"]


def cli(args, capsys) -> tuple[int, str, str]:
    threads = torch.get_num_threads()
    try:
        code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd") / ODD
    d.mkdir()
    make_corpus(d / "corpus", n_docs=12)
    return d


def test_prepare_train_eval_sample_next_under_a_path_that_is_not_utf8(odd_dir, capsys):
    data, run = odd_dir / "data", odd_dir / "run"
    code, _, err = cli(["prepare", odd_dir / "corpus", "--out", data, "--tokenizer", "bytes"], capsys)
    assert code == 0, err
    code, _, err = cli(["train", "--data", data, "--out", run, *TINY], capsys)
    assert code == 0, err
    assert (run / "loss.png").is_file() or list(run.glob("*.png"))
    code, out, err = cli(["eval", run, "--tokens", "256"], capsys)
    assert code == 0, err
    code, out, err = cli(["sample", run, "--prompt", "def", "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    code, out, err = cli(["next", run, "--prompt", "def"], capsys)
    assert code == 0, err
    code, out, err = cli(["eval", run, "--tokens", "256"], capsys)
    assert code == 0 and "\\udc" not in err  # names shown with their bytes escaped, never as lone surrogates


@pytest.fixture(scope="module")
def prompt_run(odd_dir):
    """A run of its own for the prompt tests, so they never depend on the test above having run first."""
    data, run = odd_dir / "data-prompt", odd_dir / "run-prompt"
    assert main([str(a) for a in ["prepare", odd_dir / "corpus", "--out", data, "--tokenizer", "bytes"]]) == 0
    threads = torch.get_num_threads()
    try:
        assert main([str(a) for a in ["train", "--data", data, "--out", run, *TINY]]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.mark.parametrize("command", ["sample", "next"])
def test_a_prompt_that_is_not_utf8_is_one_clear_line(prompt_run, command, capsys):
    run = prompt_run
    code, _, err = cli([command, run, "--prompt", os.fsdecode(b"d\xe9f")], capsys)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "not valid UTF-8" in lines[0], err
