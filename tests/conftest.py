"""Shared fixtures: small corpora the tests write themselves, prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextoken.config import Config
from nextoken.data.prepare import PrepareOptions, prepare
from nextoken.data.synthetic import python_like


def make_corpus(folder: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """Python-like text with structure a tiny model can learn quickly (the lab's generator, 40 documents)."""
    return python_like(folder, n_docs, seed)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NEXTOKEN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and far more so on a CPU shared with other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def bytes_data(tmp_path_factory, corpus_dir) -> Path:
    """Prepared data with the byte-level tokenizer (vocab 257)."""
    out = tmp_path_factory.mktemp("prep") / "bytes"
    prepare([str(corpus_dir)], out, PrepareOptions(tokenizer="bytes", val_fraction=0.1, progress=False),
            log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def bpe_data(tmp_path_factory, corpus_dir) -> Path:
    """Prepared data with a small trained BPE (vocab 320)."""
    out = tmp_path_factory.mktemp("prep") / "bpe"
    prepare([str(corpus_dir)], out, PrepareOptions(tokenizer="bpe", vocab_size=320, val_fraction=0.1,
                                                   progress=False), log=lambda m: None)
    return out


def tiny_config(data: Path, **overrides) -> Config:
    """A model small enough that a few steps take well under a second on the CPU."""
    cfg = Config()
    cfg.data.path = str(data)
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.block_size = 2, 2, 32, 32
    cfg.train.max_steps, cfg.train.batch_size = 20, 4
    cfg.train.eval_every, cfg.train.ckpt_every, cfg.train.eval_tokens, cfg.train.log_every = 10, 10, 2048, 1
    cfg.optim.warmup_steps = 5
    cfg.log.progress = "off"
    cfg.train.threads = 1  # tiny matmuls: a second thread only adds synchronization (and suffers most under load)
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def children_of(pid: int) -> list[int]:
    """The pids of the processes whose parent is `pid` (Linux /proc): torchrun's workers."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def rank_of(pid: int) -> int | None:
    """The RANK torchrun gave process `pid`, or None."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


os.environ.setdefault("OMP_NUM_THREADS", "2")
