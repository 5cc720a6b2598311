"""Checkpoints: RUN/checkpoints/step_NNNNNNNN/{model,state}.safetensors + trainer.json, and `latest`.

A checkpoint is written into a temporary directory, fsynced, and renamed into place; `latest` is
replaced by an atomic rename after that. A kill at any instant therefore leaves the previous
checkpoint whole and `latest` pointing at a complete one. Nothing is pickled: tensors go through
safetensors, everything else through JSON.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from nextoken.errors import CheckpointError

FORMAT_VERSION = 1
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state keyed by parameter name, so it is readable and order-proof."""
    out = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            out[f"optim.{name}.{key}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) \
                else torch.tensor(value)
    return out


def restore_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        prefix = f"optim.{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            optimizer.state[p] = {k: (v if k == "step" else v.to(p.device)) for k, v in state.items()}


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer: dict, extra_tensors: dict[str, torch.Tensor] | None = None, keep: int = 2,
                    name: str | None = None, prune: bool = True) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = name or f"step_{step:08d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        state = optimizer_tensors(model, optimizer)
        state.update(extra_tensors or {})
        save_file(state, str(tmp / "state.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **trainer}, indent=2))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_latest(ckpt_root, name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        what = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
        raise CheckpointError(f"could not write checkpoint {final} ({what}); free space and rerun with "
                              f"--resume: the previous checkpoint is intact") from None
    if prune:
        prune_checkpoints(ckpt_root, keep)
    return final


def _write_latest(ckpt_root: Path, name: str) -> None:
    tmp = ckpt_root / f".{LATEST}.tmp-{os.getpid()}"
    tmp.write_text(name + "\n")
    _fsync_file(tmp)
    os.replace(tmp, ckpt_root / LATEST)
    _fsync_dir(ckpt_root)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    return sorted(p for p in Path(ckpt_root).glob("step_*") if (p / "trainer.json").is_file())


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    ckpts = list_checkpoints(ckpt_root)
    latest = (ckpt_root / LATEST).read_text().strip() if (ckpt_root / LATEST).exists() else None
    for old in ckpts[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from RUN (its newest complete checkpoint) or from CKPT itself."""
    p = Path(path)
    if (p / "trainer.json").is_file():
        return p
    root = p / "checkpoints"
    if (root / LATEST).is_file():
        ckpt = root / (root / LATEST).read_text().strip()
        if (ckpt / "trainer.json").is_file():
            return ckpt
    ckpts = list_checkpoints(root) if root.is_dir() else []
    if ckpts:
        return ckpts[-1]
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a run directory or a checkpoint directory")
    raise CheckpointError(f"{p} holds no checkpoint; train it first (nextoken train --out {p})")


def read_trainer(ckpt: Path) -> dict:
    try:
        trainer = json.loads((ckpt / "trainer.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{ckpt}/trainer.json is missing or corrupt; use an earlier checkpoint") from None
    if trainer.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt} was written by an incompatible nextoken; retrain or use a matching version")
    return trainer


def load_weights(model: nn.Module, ckpt: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{ckpt}/model.safetensors is unreadable or truncated ({e}); "
                              "use an earlier checkpoint") from None
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt} does not match this model's architecture "
                              f"({str(e).splitlines()[0][:160]}); use the run's own config") from None
    # safetensors drops the tied lm_head.weight on save; anything else missing is a mismatch
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not match this model's architecture (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); use the run's own config")


def load_state(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(ckpt / "state.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{ckpt}/state.safetensors is unreadable or truncated ({e}); "
                              "use an earlier checkpoint") from None
