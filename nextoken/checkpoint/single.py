"""The single-file format (one process, DDP): step_N/model.safetensors (weights only) and
step_N/state.safetensors (optimizer moments keyed by parameter name, and the RNG states). Nothing is pickled:
tensors go through safetensors, everything else through JSON."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file, save_model
from torch import nn

from nextoken.checkpoint.files import io_error, prune, publish, step_name, write_error, write_trainer
from nextoken.errors import CheckpointError


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state keyed by parameter name (`optim.NAME.exp_avg`), so it is readable
    and independent of the parameters' order."""
    out = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            out[f"optim.{name}.{key}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) \
                else torch.tensor(value)
    return out


def restore_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Put back the state `optimizer_tensors` saved; AdamW's step count stays on the host, as torch keeps it."""
    for name, p in model.named_parameters():
        prefix = f"optim.{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            optimizer.state[p] = {k: (v if k == "step" else v.to(p.device)) for k, v in state.items()}


def save(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer: dict,
         extra_tensors: dict[str, torch.Tensor], keep: int) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_name(step)
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        save_file({**optimizer_tensors(model, optimizer), **extra_tensors}, str(tmp / "state.safetensors"))
        write_trainer(tmp, trainer)
        publish(tmp, final)
    except BaseException as e:
        if (err := io_error(e)) is None:
            raise
        raise write_error(final, err) from None
    finally:  # whatever a failed write left (after publish, tmp is final)
        shutil.rmtree(tmp, ignore_errors=True)
    prune(ckpt_root, keep)
    return final


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file read by Python: the Rust reader refuses a path that is not UTF-8."""
    return load(Path(path).read_bytes())


def load_weights(model: nn.Module, ckpt: Path) -> None:
    try:
        state = read_tensors(ckpt / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{ckpt}/model.safetensors is unreadable or truncated ({e}); "
                              "use an earlier checkpoint") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt} does not match this model's architecture "
                              f"({str(e).splitlines()[0][:160]}); use the run's own config") from None
    # save_model keeps one name of tied weights (wte / lm_head): a name sharing storage with a loaded one is
    # loaded; anything else missing is a mismatch
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [m for m in missing if own[m].data_ptr() not in loaded]
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not match this model's architecture (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); use the run's own config")


def load_state(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return read_tensors(ckpt / "state.safetensors")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{ckpt}/state.safetensors is unreadable or truncated ({e}); "
                              "use an earlier checkpoint") from None
