"""A run directory as an object: its resolved config, tokenizer, metrics, checkpoints, and a model loaded at
any checkpoint on any device (the run directory contract; docs/ARCHITECTURE.md). `eval`, `sample`, `next`, `plot`,
`sweep` and `fit` read runs through it; `train` creates them with `create_run_dir`.

    RUN/config.toml        the fully resolved config
    RUN/tokenizer.json     the tokenizer the run was trained with
    RUN/metrics.jsonl      train, eval and event lines (the source of truth)
    RUN/checkpoints/       step_NNNNNNNN/ and `latest` (nextoken.checkpoint)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from tokenizers import Tokenizer

from nextoken import checkpoint as ckpt
from nextoken import nonfinite
from nextoken.config import Config, ModelConfig, config_from_dict, load_toml
from nextoken.errors import CheckpointError, NextokenError

RUN_FILES = ("config.toml", "metrics.jsonl", "checkpoints")


def holds_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds (part of) a nextoken run."""
    return any((Path(run_dir) / n).exists() for n in RUN_FILES)


def check_resumable(run_dir: str | Path) -> None:
    """Raises NextokenError, in the one wording every caller uses, when `--resume` has no run to continue."""
    if not holds_run(run_dir):
        raise NextokenError(f"{run_dir} has no checkpoint to resume from (it holds no run); check --out, "
                            "or run without --resume")


def create_run_dir(run_dir: Path, cfg: Config, data_dir: Path, resume: bool) -> None:
    """Create RUN (or check it for --resume) and write its resolved config and tokenizer.
    A directory holding another run is refused, never overwritten (NextokenError)."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not resume:
        raise NextokenError(f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                            "another --out")
    if resume:
        check_resumable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.toml", cfg.to_toml())
    tok = run_dir / "tokenizer.json"
    if not tok.exists():  # copied under a temporary name, so a kill never leaves half a tokenizer
        tmp = tok.with_name(f".{tok.name}.tmp-{os.getpid()}")
        shutil.copyfile(Path(data_dir) / "tokenizer.json", tmp)
        os.replace(tmp, tok)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_config(run_dir: str | Path) -> Config:
    """RUN/config.toml as a Config. Raises NextokenError when the directory has none."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise NextokenError(f"{run_dir} has no config.toml; is it a nextoken run directory?")
    return config_from_dict(load_toml(path))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of RUN/metrics.jsonl, in order; a line cut by a kill is skipped. A non-finite figure, written
    as "Infinity", "-Infinity" or "NaN" (docs/metrics.md), or as ±1e308 by nextoken before those, comes back as
    a float. A run resumed after a crash repeats steps: readers that want one value per step take the last
    (`Run.last_per_step`)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(nonfinite.decode(json.loads(line), legacy=True))
        except json.JSONDecodeError:
            continue
    return rows


@dataclass
class Loaded:
    """A model at one checkpoint, ready for inference: `model` in eval mode on its device."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    checkpoint: Path
    run: Run
    trainer: dict  # the checkpoint's trainer.json: step, tokens, ...

    @property
    def step(self) -> int:
        return self.trainer["step"]


class Run:
    """A run directory, opened for reading. `Run(path)` accepts RUN or one of its checkpoint directories
    (RUN/checkpoints/step_N), which then becomes the checkpoint `load()` takes by default.

    Raises NextokenError for a path that does not exist or holds no nextoken run."""

    def __init__(self, path: str | Path):
        p = Path(path)
        self.pinned: Path | None = None
        if ckpt.is_checkpoint(p) and p.parent.name == "checkpoints":
            self.pinned, p = p, p.parent.parent
        if not p.exists():
            raise NextokenError(f"{p} does not exist; pass a run directory (nextoken train --out {p}) or a "
                                "checkpoint directory")
        if not p.is_dir() or not holds_run(p):
            raise NextokenError(f"{p} is not a nextoken run directory (it has no config.toml, metrics.jsonl or "
                                "checkpoints/); pass the --out of a nextoken train")
        self.path = p

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ---- config and tokenizer ----
    @cached_property
    def config(self) -> Config:
        """The fully resolved config the run was trained with (RUN/config.toml)."""
        return read_config(self.path)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer: RUN/tokenizer.json, else the one of the data it names."""
        from nextoken.data.tokenizer import load_tokenizer

        path = self.path / "tokenizer.json"
        if not path.is_file():
            path = Path(self.config.data.path) / "tokenizer.json"
        return load_tokenizer(path)

    # ---- metrics ----
    def metrics(self, kind: str | None = None) -> list[dict]:
        """metrics.jsonl's lines, all or those of one kind ("train", "eval" or "event"), re-read on each call."""
        rows = read_metrics(self.path)
        return rows if kind is None else [r for r in rows if r.get("kind") == kind]

    def last_per_step(self, kind: str) -> list[dict]:
        """One line per step of `kind` with a loss, the last one written (a resume or rollback repeats steps)."""
        by_step = {r["step"]: r for r in self.metrics(kind) if r.get("loss") is not None}
        return [by_step[s] for s in sorted(by_step)]

    @property
    def events(self) -> list[dict]:
        return self.metrics("event")

    # ---- checkpoints ----
    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        return ckpt.list_checkpoints(self.path / "checkpoints")

    def checkpoint(self, step: int | None = None) -> Path:
        """The checkpoint at `step`, or the pinned one, or the newest. Raises CheckpointError when absent."""
        if step is None:
            return self.pinned or ckpt.resolve(self.path)
        path = self.path / "checkpoints" / ckpt.step_name(step)
        if not ckpt.is_checkpoint(path):
            have = ", ".join(str(ckpt.read_trainer(p)["step"]) for p in self.checkpoints()) or "none"
            raise CheckpointError(f"{self.path} has no checkpoint at step {step} (steps: {have})")
        return path

    def load(self, step: int | None = None, device: str | torch.device = "cpu") -> Loaded:
        """The model at checkpoint `step` (default: the pinned or newest) on `device`, in eval mode, with the
        tokenizer. Loads either checkpoint format in one process. Raises CheckpointError for a missing,
        corrupt or mismatched checkpoint."""
        from nextoken.model import GPT

        path = self.checkpoint(step)
        trainer = ckpt.read_trainer(path)
        try:
            mcfg = ModelConfig(**trainer["model"])
        except (KeyError, TypeError):
            raise CheckpointError(f"{path}/trainer.json has no valid model config; use an earlier checkpoint") \
                from None
        model = GPT(mcfg)
        ckpt.restore(path, model)
        model.to(device).eval()
        return Loaded(model, self.tokenizer, path, self, trainer)


def open_run(path: str | Path) -> Run:
    """`Run(path)`: RUN or RUN/checkpoints/step_N."""
    return Run(path)
