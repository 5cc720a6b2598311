"""The sharded format (FSDP2): torch.distributed.checkpoint.

step_N/dcp/ holds the model and optimizer state, each rank writing its own shards with fully-qualified
parameter names, so the checkpoint loads into any number of processes (DCP reshards on load), one included;
trainer.json and state.safetensors (RNG) are as in the single-file format. Several nodes need a filesystem
they all see.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from nextoken.checkpoint.files import io_error, prune, publish, step_name, write_error, write_trainer
from nextoken.errors import CheckpointError

DCP_DIR = "dcp"


def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / DCP_DIR / ".metadata").is_file()


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if optimizer is None:
            return {"model": get_model_state_dict(model)}
        model_sd, optim_sd = get_state_dict(model, _each(optimizer))
    return {"model": model_sd, "optim": optim_sd}


def save(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer: dict,
         extra_tensors: dict[str, torch.Tensor], keep: int, is_main: bool, barrier: Callable[[], None]) -> Path:
    """Collective: every rank calls it. Rank 0 writes the small files and publishes the directory."""
    import torch.distributed.checkpoint as dcp

    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / step_name(step)
    tmp = ckpt_root / f".tmp-{final.name}-sharded"
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
            write_trainer(tmp, trainer)
            publish(tmp, final)
    except BaseException as e:
        if (err := io_error(e)) is None:
            raise
        raise write_error(final, err) from None
    finally:  # whatever a failed write left (after publish, tmp is final)
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    if is_main:
        prune(ckpt_root, keep)
    return final


def load(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Weights (and optimizer state) into a model of any world size, a plain single-process one too."""
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
            set_state_dict(model, _each(optimizer), model_state_dict=state["model"], optim_state_dict=state["optim"])


def _each(optimizer) -> tuple:
    """The PyTorch optimizers behind `optimizer` (Muon and AdamW behind optim.Optimizers), which DCP's state-dict
    functions take together: their states are keyed by parameter name, so they merge into one."""
    return tuple(getattr(optimizer, "optimizers", (optimizer,)))
