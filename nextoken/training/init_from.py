"""`nextoken train --init-from SRC`: continued pretraining from the weights of a run, a checkpoint or a Hugging
Face model directory, with a fresh optimizer and LR schedule (unlike `--resume`, which continues a run's own
optimizer, schedule and data position). The model's shape comes from SRC; the data must be tokenized with SRC's
tokenizer (`nextoken prepare ... --tokenizer SRC_RUN/tokenizer.json`)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer
from torch import nn

from nextoken import checkpoint as ckpt
from nextoken.config import Config, ModelConfig, validate
from nextoken.errors import ConfigError
from nextoken.run import Run, holds_run

# Model fields a continued run may change: dropout, and the context of a RoPE model (its tables are not weights).
CHANGEABLE = ("dropout", "block_size")


def _is_run(src: Path) -> bool:
    return holds_run(src) or ckpt.is_checkpoint(src)


def _hf(src: str):
    from nextoken.interop.hf_import import read_hf

    return read_hf(src)


def source_model(src: str) -> tuple[ModelConfig, Tokenizer]:
    """The model config and tokenizer of SRC. Raises ConfigError when SRC is neither a run nor a model directory."""
    p = Path(src)
    if _is_run(p):
        run = Run(p)
        trainer = ckpt.read_trainer(run.checkpoint())
        return ModelConfig(**trainer["model"]), run.tokenizer
    if (p / "config.json").is_file() or not p.exists():  # a transformers directory (or a hub name)
        hf = _hf(src)
        return hf.config, hf.tokenizer
    raise ConfigError(f"--init-from {src} is neither a nextoken run nor a Hugging Face model directory")


def apply_source(cfg: Config, overrides: list[tuple[str, str]]) -> None:
    """Give `cfg` the model of `cfg.train.init_from`, keeping the CHANGEABLE fields set by `overrides`.
    Raises ConfigError naming a shape field a flag tried to change."""
    src_model, _ = source_model(cfg.train.init_from)
    flagged = {k.replace("-", "_").split(".", 1)[1] for k, _ in overrides if k.replace("-", "_").startswith("model.")}
    for name in sorted(flagged):
        mine, theirs = getattr(cfg.model, name), getattr(src_model, name)
        if mine == theirs:
            continue
        if name not in CHANGEABLE or (name == "block_size" and src_model.pos != "rope"):
            raise ConfigError(f"--model.{name}: --init-from takes the model's shape from {cfg.train.init_from} "
                              f"({name} {theirs}); only model.dropout, and model.block_size of a RoPE model, change")
        setattr(src_model, name, mine)
    cfg.model = src_model
    validate(cfg)


def check_data(src: str, data_dir: Path) -> None:
    """Raises DataError, in one line, when `data_dir` was not tokenized with SRC's tokenizer."""
    from nextoken.data.prepare import check_tokenizer

    _, tok = source_model(src)
    tok_file = f"{src}/tokenizer.json" if _is_run(Path(src)) else "RUN/tokenizer.json of `nextoken import`"
    check_tokenizer(data_dir, tok, src, tok_file)


def load_weights(src: str, model: nn.Module) -> dict[str, str | None]:
    """SRC's weights into `model` (built with source_model's config; before any DDP or FSDP2 wrapping). Returns
    SRC's bos/eos/pad tokens where it has its own (an imported run's RUN/special_tokens.json, a Hugging Face
    directory's), {} for a run nextoken trained; the continued run keeps them (`carry_special_tokens`)."""
    from nextoken.interop.hf_import import read_special_tokens

    p = Path(src)
    if _is_run(p):
        run = Run(p)
        ckpt.restore(run.checkpoint(), model)  # weights only: the optimizer starts afresh
        return read_special_tokens(run.path)
    hf = _hf(src)
    model.load_state_dict(hf.state_dict)
    return dict(hf.special or {})


def carry_special_tokens(special: dict[str, str | None], run_dir: Path) -> None:
    """Write SRC's special tokens into the continued run, so that `export`, `eval` and `sample` treat its bos, eos
    and pad as the source's did. Nothing is written for {}."""
    from nextoken.interop.hf_import import SPECIAL_TOKENS_FILE
    from nextoken.run import write_atomic

    if special:
        write_atomic(Path(run_dir) / SPECIAL_TOKENS_FILE, json.dumps(special, indent=2) + "\n")



