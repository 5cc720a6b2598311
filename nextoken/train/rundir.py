"""The run directory: config.toml, tokenizer.json, metrics.jsonl, checkpoints/ (ARCHITECTURE.md)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nextoken.config import Config, config_from_dict, load_toml
from nextoken.errors import NextokenError


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / n).exists() for n in ("config.toml", "metrics.jsonl", "checkpoints"))


def open_run_dir(run_dir: Path, cfg: Config, data_dir: Path, resume: bool) -> None:
    """Create RUN (or check it for --resume) and write its resolved config and tokenizer.
    A directory holding another run is refused, never overwritten."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not resume:
        raise NextokenError(f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                            "another --out")
    if resume and not holds_run(run_dir):
        raise NextokenError(f"{run_dir} has no checkpoint to resume from (it holds no run); check --out, "
                            "or run without --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.toml", cfg.to_toml())
    tok = run_dir / "tokenizer.json"
    if not tok.exists():  # copied under a temporary name, so a kill never leaves half a tokenizer
        tmp = tok.with_name(f".{tok.name}.tmp-{os.getpid()}")
        shutil.copyfile(data_dir / "tokenizer.json", tmp)
        os.replace(tmp, tok)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise NextokenError(f"{run_dir} has no config.toml; is it a nextoken run directory?")
    return config_from_dict(load_toml(path))
