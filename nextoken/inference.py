"""Load a trained model from RUN or CKPT in one process, for eval, sample and next."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from nextoken.config import ModelConfig
from nextoken.data.tokenizer import load_tokenizer
from nextoken.errors import CheckpointError
from nextoken.model import GPT
from nextoken.train import checkpoint as ckpt
from nextoken.train.rundir import read_run_config


@dataclass
class Loaded:
    model: GPT
    tokenizer: Tokenizer
    checkpoint: Path
    run_dir: Path
    trainer: dict


def load(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    ckpt_dir = ckpt.resolve_checkpoint(path)
    trainer = ckpt.read_trainer(ckpt_dir)
    run_dir = ckpt_dir.parent.parent
    try:
        mcfg = ModelConfig(**trainer["model"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{ckpt_dir}/trainer.json has no valid model config; use an earlier checkpoint") \
            from None
    model = GPT(mcfg)
    ckpt.load_weights(model, ckpt_dir)
    model.to(device).eval()
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file():
        tok_path = Path(read_run_config(run_dir).data.path) / "tokenizer.json"
    return Loaded(model, load_tokenizer(tok_path), ckpt_dir, run_dir, trainer)
