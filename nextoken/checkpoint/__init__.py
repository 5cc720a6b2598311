"""Checkpoints: one place that saves and restores them, in both formats, for every use.

`save` writes the single-file format (one process, DDP; `single.py`) or the sharded one (FSDP2, DCP;
`sharded.py`); `restore` reads either into a model (inference), a model and optimizer (resume), or those and
the RNG state (resume, rollback). Writes are atomic (`files.py`); nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nextoken.checkpoint import sharded as _sharded
from nextoken.checkpoint import single as _single
from nextoken.checkpoint.files import (
    LATEST,
    drop_after,
    is_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_trainer,
    step_name,
)
from nextoken.checkpoint.sharded import is_sharded
from nextoken.errors import CheckpointError

__all__ = ["LATEST", "drop_after", "is_checkpoint", "is_sharded", "latest_checkpoint", "list_checkpoints",
           "read_trainer", "resolve", "restore", "rng_state", "save", "set_rng_state", "step_name"]


def rng_state() -> dict[str, torch.Tensor]:
    """The generators a resumed or rolled-back run must continue: the CPU one and, where present, CUDA's."""
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    """Put back what `rng_state` took (the CUDA state only where CUDA is there to take it)."""
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def save(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer: dict, *,
         keep: int, sharded: bool = False, is_main: bool = True,
         barrier: Callable[[], None] = lambda: None) -> Path:
    """Write RUN/checkpoints/step_N (weights, optimizer state, RNG, `trainer` as JSON), point `latest` at it
    and keep the newest `keep`. Collective when `barrier` is a real one: a sharded (FSDP2) checkpoint is
    written by every rank; a single-file one by rank 0 while the others wait. Returns the directory.
    Raises CheckpointError when the disk refuses the write (the previous checkpoint stays intact)."""
    extra = rng_state()
    if sharded:
        return _sharded.save(run_dir, step, model, optimizer, trainer, extra, keep, is_main, barrier)
    path = _single.save(run_dir, step, model, optimizer, trainer, extra, keep) if is_main else None
    barrier()
    return path or Path(run_dir) / "checkpoints" / step_name(step)


def restore(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
            rng: bool = False) -> dict:
    """Load checkpoint `ckpt` (either format) into `model`, and into `optimizer` when given, and the RNG
    state when `rng`; a sharded checkpoint loads into any number of processes, one included. Returns its
    trainer.json. Raises CheckpointError for a missing, corrupt or mismatched checkpoint, or a single-file
    one given to a sharded (FSDP2) model."""
    ckpt = Path(ckpt)
    trainer = read_trainer(ckpt)
    if is_sharded(ckpt):
        _sharded.load(ckpt, model, optimizer)
    elif any(hasattr(p, "full_tensor") for p in model.parameters()):
        raise CheckpointError(f"{ckpt} was written by a DDP or single-process run; resume it with "
                              "--train.parallel ddp")
    else:
        _single.load_weights(model, ckpt)
    if optimizer is not None or rng:
        tensors = _single.load_state(ckpt)
        if optimizer is not None and not is_sharded(ckpt):
            _single.restore_optimizer(model, optimizer, tensors)
        if rng:
            set_rng_state(tensors)
    return trainer


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from CKPT itself or from RUN (its newest complete checkpoint).
    Raises CheckpointError when the path does not exist or holds no checkpoint."""
    p = Path(path)
    if is_checkpoint(p):
        return p
    if (ckpt := latest_checkpoint(p)) is not None:
        return ckpt
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a run directory or a checkpoint directory")
    raise CheckpointError(f"{p} holds no checkpoint; train it first (nextoken train --out {p})")
