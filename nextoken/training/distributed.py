"""Data-parallel training over the processes torchrun starts: DDP by default, FSDP2 on request.

The same command runs as one process (no process group at all), as several CPU processes (gloo)
or on GPUs (nccl); the backend follows the device. The global batch is `batch_size * grad_accum`
sequences whatever the world size W: rank r takes sequences [r*n/W, (r+1)*n/W) of each step's draw
(data/loader.py is stateless, so every rank can draw the same step), in equal micro-batches, and
the gradient average over ranks equals that of one process doing all of it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nextoken.config import TrainConfig
from nextoken.errors import ConfigError, NextokenError

RESUME_HINT = "continue from the last complete checkpoint with the same command plus --resume"
STOP_REASONS = (None, "interrupted", "torchrun's agent died: stopped")  # by precedence: the ranks agree on the max


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    parallel: str = "ddp"  # ddp | fsdp: how the model is wrapped, and the checkpoint format
    launcher: int | None = None  # pid of torchrun's agent, this worker's parent; None outside torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """A process group is live (torchrun with more than one process)."""
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a scalar tensor (the loss of each rank's slice)."""
        if self.enabled:
            value = value.detach().clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world
        return value

    def raise_together(self, err: NextokenError | None) -> None:
        """Raise on every rank the error rank 0 met (None: none), so that no rank is left waiting for it."""
        if self.enabled:
            message = [str(err) if err is not None else None]
            dist.broadcast_object_list(message, src=0)
            if err is None and message[0] is not None:
                err = NextokenError(message[0])
        if err is not None:
            err.every_rank = True  # rank 0's error, raised on all: said once
            raise err

    def launcher_died(self) -> bool:
        """torchrun's agent is gone (SIGKILL, the OOM killer): this worker, started by it in a session of its own,
        was reparented and would train on, racing a later --resume."""
        return self.launcher is not None and os.getppid() != self.launcher

    def stop_reason(self, interrupted: bool) -> str | None:
        """Why the job stops at this step boundary, the same on every rank, or None to go on: Ctrl-C or SIGTERM on
        any rank (`interrupted`), or torchrun's agent dead. A collective, called by every rank at each boundary:
        a rank that stopped alone would save while the others wait in the next step's all-reduce, for ever."""
        code = 2 if self.launcher_died() else int(interrupted)
        if self.enabled:
            cuda = dist.get_backend() == "nccl"
            flag = torch.tensor([code], device=torch.device("cuda", torch.cuda.current_device()) if cuda else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        return STOP_REASONS[code]

    def peer_failure(self, err: BaseException) -> NextokenError | None:
        """The user-facing error for a collective that failed because another rank died, else None."""
        if not self.enabled or not isinstance(err, RuntimeError):
            return None
        text = str(err).lower()
        signs = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "gloo",
                 "nccl", "peer", "socket")
        if isinstance(err, dist.DistError) or any(s in text for s in signs):
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            return NextokenError(f"rank {self.rank}: another process of the job failed or was killed ({first}); "
                                 f"the job stops; {RESUME_HINT}")
        return None

    def close(self) -> None:
        """Leave the job together: every rank waits at a barrier before the group is destroyed. A rank that
        destroyed its group while rank 0 was still sampling and plotting aborted in gloo's teardown
        ("terminate called without an active exception", 1 run in 4 of test_distributed)."""
        if self.enabled and dist.is_initialized():
            with contextlib.suppress(RuntimeError):  # a peer already gone: nothing left to wait for
                dist.barrier()
            dist.destroy_process_group()


_STATE: Dist | None = None


def shutdown() -> bool:
    """Leave the job at a clean end (every rank meets at a barrier, then the group is destroyed); returns
    whether a process group was live."""
    global _STATE
    was_live = live()
    if _STATE is not None:
        _STATE.close()
    _STATE = None
    return was_live


def live() -> bool:
    """Whether this process is a rank of a job with a live process group."""
    return _STATE is not None and _STATE.enabled and dist.is_initialized()


def exit_process(code: int) -> None:
    """End a process that was part of a job, after `shutdown` (or after an error that stopped it, where no
    barrier can wait for ranks that may never come), without the interpreter's teardown. The
    objects that still hold the destroyed group (FSDP2's device mesh, DTensors) are freed in an arbitrary
    order at exit, and a gloo thread destroyed while joinable aborted the process with SIGABRT ("terminate
    called without an active exception") after a successful run: 1 run in 12 of test_distributed under
    load, after the barrier in `Dist.close` too (docs/LOG.md, 2026-11-30). Everything was written and
    flushed by then; only the teardown is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun (or any launcher using its variables) sets them."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None


def init_distributed(cfg: TrainConfig) -> Dist:
    """Join the job torchrun started (idempotent); a single process gets a Dist with world 1."""
    global _STATE
    if _STATE is not None and (not _STATE.enabled or dist.is_initialized()):
        _STATE.parallel = cfg.parallel
        return _STATE
    rank, world, local_rank = world_from_env()
    d = Dist(rank, world, local_rank, cfg.parallel,
             launcher=os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None)  # torchrun's workers
    if world > 1:
        cuda = torch.cuda.is_available() and cfg.device != "cpu"
        if cuda:
            torch.cuda.set_device(local_rank)
        backend = "nccl" if cuda else "gloo"
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=10),
                                    device_id=torch.device("cuda", local_rank) if cuda else None)
        except (RuntimeError, ValueError) as e:
            raise _init_error(e) from None
        _stop_on_sigterm(rank)
    _STATE = d
    return d


def _init_error(err: Exception) -> NextokenError:
    text = str(err)
    port = os.environ.get("MASTER_PORT", "?")
    if "address already in use" in text.lower() or "eaddrinuse" in text.lower():
        return NextokenError(f"port {port} is in use; pick a free one with torchrun --master_port, or let "
                             "torchrun choose with --standalone (one machine)")
    first = text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__
    return NextokenError(f"could not join the distributed job at {os.environ.get('MASTER_ADDR', '?')}:{port} "
                         f"({first}); check the rendezvous address and that every node can reach it")


def _stop_on_sigterm(rank: int) -> None:
    # torchrun stops the surviving ranks with SIGTERM when one fails: say why instead of dying silently.
    def handler(signum, frame):
        print(f"error: rank {rank}: stopped by torchrun because another process of the job failed; "
              f"{RESUME_HINT}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def main_first(cfg: TrainConfig):
    """Rank 0 runs the body first (preparing a shared cache, say), then the others, which find it done."""
    d = init_distributed(cfg)
    if not d.is_main:
        d.barrier()
    yield d
    if d.is_main:
        d.barrier()


def rank_slices(batch_size: int, grad_accum: int, d: Dist) -> list[tuple[int, int]]:
    """(offset, count) of this rank's micro-batches within the step's batch_size * grad_accum sequences.

    The micro-batches are equal (so the mean of their mean losses is the global mean) and at most
    batch_size sequences (so memory per rank never grows with fewer ranks)."""
    n = batch_size * grad_accum
    if n % d.world:
        raise ConfigError(f"the global batch (train.batch_size * train.grad_accum = {n} sequences) must split "
                          f"evenly over {d.world} processes; make train.batch_size or train.grad_accum "
                          f"a multiple of {d.world}")
    per_rank = n // d.world
    micro = max(m for m in range(1, min(batch_size, per_rank) + 1) if per_rank % m == 0)
    start = d.rank * per_rank
    return [(start + i * micro, micro) for i in range(per_rank // micro)]


def parallelize(model: nn.Module, d: Dist, dtype: torch.dtype | None) -> tuple[nn.Module, nn.Module]:
    """(model, step_model): the model whose parameters the optimizer and checkpoints see, and the
    module the training step calls. FSDP2 shards in place (each block, then the root: torchtitan's
    recipe); DDP wraps. Build the optimizer after this."""
    if not d.enabled:
        return model, model
    if d.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # bf16 compute with fp32 gradient reduction when the run is bf16 (the master weights stay fp32)
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model, model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = next(model.parameters()).device
    return model, DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_grads(step_model: nn.Module, last_micro: bool):
    """Context for one micro-batch's backward: ranks exchange gradients only on the last one."""
    if isinstance(step_model, nn.parallel.DistributedDataParallel) and not last_micro:
        return step_model.no_sync()
    if hasattr(step_model, "set_requires_gradient_sync"):  # an FSDP2 module
        step_model.set_requires_gradient_sync(last_micro)
    return contextlib.nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Global gradient norm before clipping (over all shards under FSDP2), clipping to max_norm."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor: the norm of the sharded gradients
        norm = norm.full_tensor()
    return norm.item()


def full_model(model: nn.Module, d: Dist, build) -> nn.Module | None:
    """A plain single-process copy of a sharded model on rank 0 (None elsewhere); others as they are."""
    if not (d.enabled and d.parallel == "fsdp"):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return None
    plain = build()
    plain.load_state_dict(state)
    return plain


def rank_device(d: Dist, name: str) -> torch.device:
    """The device of this rank: `train.device`, and under torchrun with GPUs the LOCAL_RANK-th GPU."""
    from nextoken.device import pick_device

    device = pick_device(name)
    if d.enabled and device.type == "cuda":
        return torch.device("cuda", d.local_rank)
    return device
