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
import warnings
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
        _publish(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(final, e) from None
    if prune:
        prune_checkpoints(ckpt_root, keep)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """fsync what `tmp` holds, rename it to `final` and point `latest` at it."""
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_latest(final.parent, final.name)


def _write_error(final: Path, e: OSError) -> CheckpointError:
    what = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
    return CheckpointError(f"could not write checkpoint {final} ({what}); free space and rerun with "
                           f"--resume: the previous checkpoint is intact")


# ---- sharded checkpoints (FSDP2): torch.distributed.checkpoint ------------------------------------
# step_NNNNNNNN/dcp/ holds the model and optimizer state, each rank writing its own shards with
# fully-qualified parameter names, so the checkpoint loads into any number of processes (DCP
# reshards on load), one included; trainer.json and state.safetensors (RNG) are as above. Several
# nodes need a filesystem they all see.

DCP_DIR = "dcp"


def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / DCP_DIR / ".metadata").is_file()


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if optimizer is None:
            return {"model": get_model_state_dict(model)}
        model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_sharded_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            trainer: dict, extra_tensors: dict[str, torch.Tensor], keep: int, is_main: bool,
                            barrier) -> Path:
    """Collective: every rank calls it. Rank 0 writes the small files and publishes the directory."""
    import torch.distributed.checkpoint as dcp

    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step_{step:08d}"
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}-sharded"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(_dcp_state(model, optimizer), checkpoint_id=str(tmp / DCP_DIR))
        if is_main:
            save_file(extra_tensors, str(tmp / "state.safetensors"))
            (tmp / "trainer.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **trainer}, indent=2))
            _publish(tmp, final)
    except OSError as e:
        raise _write_error(final, e) from None
    barrier()
    if is_main:
        prune_checkpoints(ckpt_root, keep)
    return final


def load_sharded(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a sharded checkpoint into a model (and optimizer) of any world size, a single process too."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = _dcp_state(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(Path(ckpt) / DCP_DIR))
    except Exception as e:  # DCP wraps every per-rank failure in its own exception types
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{ckpt}/{DCP_DIR} is unreadable or does not match this model ({first}); "
                              "use an earlier checkpoint or the run's own config") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if optimizer is None:
            set_model_state_dict(model, state["model"])
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_training_state(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Weights and optimizer moments from either format; returns the checkpoint's other tensors (RNG)."""
    if is_sharded(ckpt):
        load_sharded(ckpt, model, optimizer)
        return load_state(ckpt)
    if any(hasattr(p, "full_tensor") for p in model.parameters()):
        raise CheckpointError(f"{ckpt} was written by a DDP or single-process run; resume it with "
                              "--train.parallel ddp")
    load_weights(model, ckpt)
    tensors = load_state(ckpt)
    restore_optimizer(model, optimizer, tensors)
    return tensors


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
    for stale in ckpt_root.glob(f".{LATEST}.tmp-*"):
        stale.unlink(missing_ok=True)


def drop_after(ckpt_root: Path, step: int) -> None:
    """Delete the checkpoints newer than `step`: after a rollback they belong to the abandoned branch."""
    for path in list_checkpoints(ckpt_root):
        if read_trainer(path)["step"] > step:
            shutil.rmtree(path, ignore_errors=True)


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
    if is_sharded(ckpt):
        load_sharded(ckpt, model)
        return
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
