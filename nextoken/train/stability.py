"""A run that survives on its own: spike detection, the warn/skip/rollback policies, a ring of
in-memory rollback snapshots, graceful Ctrl-C, and fault injection to see it all work.

Detection (`SpikeDetector`). Each step's training loss and log gradient norm are compared with a
rolling window of the last `stability.window` finite values: with m the window's median and
s = 1.4826 * MAD (the median absolute deviation, scaled to equal the standard deviation for
Gaussian noise), a value x is a spike when (x - m) / max(s, floor) > `stability.threshold`.
Median/MAD rather than mean/std because the statistic of the window must not move when a few
spikes enter it (both have a 50% breakdown point; a mean and a std have 0%). The floor
(1% of |m| for the loss, 0.25 for log grad norm) keeps a window of nearly equal values from
flagging noise: with the default threshold 6 a gradient norm must be e^(6 x 0.25) ≈ 4.5x the median to count.
Without that floor the tiny preset's ordinary gradient-norm wobble (1.17 against a median of 0.74, with a
window MAD of 0.04 in log space) was flagged twice in 1000 steps and rolled back a quarter of the run
(docs/LOG.md). Nothing is flagged until the window is full. A non-finite loss or gradient norm is
always an incident and never enters the window.

Policies (`Guard`). `warn` logs; `skip` drops the step's update (weights and optimizer state stay
as they were, AdamW's step count included); `rollback` restores the newest snapshot at least
`rollback_steps` before the spike, moves the data position `skip_batches` past that snapshot's
(never to or before the spike's batch), and continues (when no state is that old, because a rollback
or a resume just emptied the ring, the oldest one held); after `max_rollbacks` rollbacks whose spikes
lie within `rollback_window` steps it stops with a `StabilityError`. Whatever the policy, a
non-finite step never reaches the weights (under `warn` it is skipped; under `rollback` it rolls
back, since non-finite losses usually mean the run is already diverging). This follows PaLM
(Chowdhery et al. 2022, §5.1): restart ~100 steps before the spike and skip ~200-500 batches.

Snapshots. Every `snapshot_every` steps the guard copies the weights, the optimizer state, the RNG
state and the detector's window to host memory, keeping the newest rollback_steps/snapshot_every + 1
of them, which is the fewest that always holds one at least `rollback_steps` back. The cost is
(ring size) x (weights + two AdamW moments) = 3 x 3 x 4 bytes = 36 bytes of host RAM per parameter
with the defaults (≈ 4.5 GB for a 124M model, 48 MB for the tiny preset) and one device-to-host
copy every `snapshot_every` steps. On-disk checkpoints are rollback candidates too, so a run that was
just resumed (its ring still empty) can roll back to a checkpoint.
"""

from __future__ import annotations

import copy
import math
import re
import signal
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nextoken.config import StabilityConfig
from nextoken.errors import ConfigError, NextokenError
from nextoken.train import checkpoint as ckpt

_FAULT = re.compile(r"^(lr|batch|nan)@(\d+)(?:x([0-9.eE+-]+))?$")
MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): MAD * 1.4826 estimates the standard deviation of Gaussian noise


class StabilityError(NextokenError):
    """The run keeps spiking after the allowed number of rollbacks."""


class Interrupted(NextokenError):
    """Ctrl-C (or SIGTERM): a checkpoint was saved at the current step."""

    exit_code = 130


# ---- fault injection ---------------------------------------------------------------------------------

@dataclass
class Faults:
    """`--stability.inject lr@300x100,batch@350,nan@450`: break a run on purpose at chosen steps.

    STEP is the data position, which equals the optimizer step until a rollback moves the data
    stream ahead; a fault therefore fires once, even when a rollback replays that step number."""

    lr: dict[int, float] = field(default_factory=dict)
    batch: set[int] = field(default_factory=set)
    nan: set[int] = field(default_factory=set)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        faults = cls()
        for item in filter(None, (s.strip() for s in spec.split(","))):
            m = _FAULT.match(item)
            if not m:
                raise ConfigError(f"stability.inject: {item!r} is not KIND@STEP or KIND@STEPxFACTOR "
                                  "(KIND: lr, batch, nan), e.g. lr@300x100")
            kind, step, factor = m.group(1), int(m.group(2)), m.group(3)
            if kind == "lr":
                try:
                    faults.lr[step] = float(factor) if factor else 100.0
                except ValueError:
                    raise ConfigError(f"stability.inject: {item!r} has a non-numeric factor") from None
                if not math.isfinite(faults.lr[step]) or faults.lr[step] <= 0:
                    raise ConfigError(f"stability.inject: {item!r} needs a positive finite factor")
            else:
                getattr(faults, kind).add(step)
        return faults

    def lr_factor(self, data_step: int) -> float:
        return self.lr.get(data_step, 1.0)

    def poison(self, data_step: int, x: torch.Tensor, y: torch.Tensor, vocab: int, seed: int):
        """Replace the batch with uniformly random tokens (a corrupted shard, say)."""
        if data_step not in self.batch:
            return x, y
        g = torch.Generator().manual_seed(seed * 1_000_003 + data_step)
        rows = torch.randint(0, vocab, (x.size(0), x.size(1) + 1), generator=g)
        return rows[:, :-1], rows[:, 1:]


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


# ---- detection -----------------------------------------------------------------------------------------

# Smallest robust sd of log grad norm: ordinary step-to-step wobble is never a spike (see above).
GRAD_LOG_FLOOR = 0.25


class RobustWindow:
    """The last `size` values; `score(x)` is x's distance above the median in robust standard deviations."""

    def __init__(self, size: int, rel_floor: float, abs_floor: float, values=()):
        self.values: deque[float] = deque(values, maxlen=size)
        self.rel_floor, self.abs_floor = rel_floor, abs_floor

    @property
    def full(self) -> bool:
        return len(self.values) == self.values.maxlen

    def stats(self) -> tuple[float, float]:
        med = statistics.median(self.values)
        mad = statistics.median(abs(v - med) for v in self.values)
        return med, max(MAD_TO_STD * mad, self.rel_floor * abs(med), self.abs_floor)

    def score(self, x: float) -> float:
        med, sigma = self.stats()
        return (x - med) / sigma


@dataclass
class Incident:
    type: str  # spike | nan
    step: int
    detail: dict

    def describe(self) -> str:
        if self.type == "nan":
            return f"non-finite loss or gradient (loss {self.detail['loss']}, grad norm {self.detail['grad_norm']})"
        d = self.detail
        return (f"loss spike: {d['metric']} {d['value']:.4g} is {d['score']:.1f} robust sd above the "
                f"median {d['median']:.4g} of the last {d['window']} steps")


class SpikeDetector:
    """Loss and log gradient norm against rolling windows (median/MAD; module docstring)."""

    def __init__(self, window: int, threshold: float):
        self.window, self.threshold = window, threshold
        self.loss = RobustWindow(window, rel_floor=0.01, abs_floor=1e-3)
        self.log_grad = RobustWindow(window, rel_floor=0.0, abs_floor=GRAD_LOG_FLOOR)

    def check(self, step: int, loss: float, grad_norm: float) -> Incident | None:
        """The incident this step is, if any; finite values then join the windows."""
        if not is_finite(loss, grad_norm):
            return Incident("nan", step, {"loss": loss, "grad_norm": grad_norm})
        log_g = math.log(max(grad_norm, 1e-12))
        incident = None
        for name, win, x, shown in (("loss", self.loss, loss, loss), ("grad_norm", self.log_grad, log_g, grad_norm)):
            if win.full and win.score(x) > self.threshold:
                med, sigma = win.stats()
                median = med if name == "loss" else math.exp(med)
                incident = Incident("spike", step, {"metric": name, "value": shown, "median": median,
                                                    "score": (x - med) / sigma, "threshold": self.threshold,
                                                    "window": self.window, "loss": loss, "grad_norm": grad_norm})
                break
        self.loss.values.append(loss)
        self.log_grad.values.append(log_g)
        return incident

    def state_dict(self) -> dict:
        return {"loss": list(self.loss.values), "log_grad": list(self.log_grad.values)}

    def load_state_dict(self, state: dict) -> None:
        self.loss.values = deque(state.get("loss", []), maxlen=self.window)
        self.log_grad.values = deque(state.get("log_grad", []), maxlen=self.window)


# ---- policies and the rollback ring -----------------------------------------------------------------------

@dataclass
class Snapshot:
    step: int
    trainer: dict  # TrainState fields at the snapshot
    model: dict[str, torch.Tensor]
    optimizer: dict
    rng: torch.Tensor
    detector: dict


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return copy.deepcopy(obj)


class Guard:
    """Detects incidents, applies the policy, keeps the ring of rollback snapshots.

    `report(type, step, detail, message)` writes an event line and shows the message."""

    def __init__(self, cfg: StabilityConfig, report):
        self.cfg, self.report = cfg, report
        self.detector = SpikeDetector(cfg.window, cfg.threshold)
        self.ring: deque[Snapshot] = deque(maxlen=cfg.rollback_steps // cfg.snapshot_every + 1)
        self.rollbacks: list[int] = []  # spike steps that caused a rollback

    # -- the step --
    def check(self, step: int, loss: float, grad_norm: float) -> str:
        """'apply', 'skip' or 'rollback' for this step's update; reports any incident."""
        incident = self.detector.check(step, loss, grad_norm)
        if incident is None:
            return "apply"
        self.report(incident.type, step, incident.detail, f"step {step}: {incident.describe()}")
        policy = self.cfg.policy
        if policy == "rollback":
            return "rollback"
        if policy == "skip" or incident.type == "nan":
            why = "policy skip" if policy == "skip" else "a non-finite step never reaches the weights"
            self.report("skip", step, {"reason": incident.type, "loss": loss, "grad_norm": grad_norm},
                        f"step {step}: update skipped ({why}); weights and optimizer state unchanged")
            return "skip"
        return "apply"

    # -- the ring --
    def maybe_snapshot(self, trainer: dict, model, optimizer) -> None:
        if self.cfg.policy != "rollback" or trainer["step"] % self.cfg.snapshot_every:
            return
        if self.ring and self.ring[-1].step == trainer["step"]:  # just rolled back here: keep the new position
            self.ring.pop()
        self.ring.append(Snapshot(trainer["step"], dict(trainer), _to_cpu(model.state_dict()),
                                  _to_cpu(optimizer.state_dict()), torch.get_rng_state(),
                                  self.detector.state_dict()))

    def rollback(self, spike_step: int, data_step: int, run_dir: Path, model, optimizer) -> dict:
        """Restore the newest snapshot or checkpoint at least rollback_steps before the spike; return the
        trainer state to continue from (its data position moved past the skipped batches)."""
        c = self.cfg
        recent = [s for s in self.rollbacks if spike_step - s < c.rollback_window]
        if len(recent) >= c.max_rollbacks:
            raise StabilityError(
                f"the loss spiked again at step {spike_step} after {len(recent)} rollbacks within "
                f"{c.rollback_window} steps; the run is unstable: lower --optim.lr, raise --optim.warmup_steps "
                f"or --stability.threshold, or allow more with --stability.max_rollbacks")
        self.rollbacks.append(spike_step)
        target = spike_step - c.rollback_steps
        trainer = self._restore(target, run_dir, model, optimizer)
        old_data = trainer["data_step"]
        trainer["data_step"] = max(old_data + c.skip_batches, data_step + 1)
        skipped = trainer["data_step"] - old_data
        self.report("rollback", spike_step, {"from_step": spike_step, "to_step": trainer["step"],
                                             "skipped_batches": skipped, "data_step": trainer["data_step"],
                                             "rollbacks_in_window": len(recent) + 1},
                    f"step {spike_step}: rolled back to step {trainer['step']} and skipped {skipped} batches "
                    f"(rollback {len(recent) + 1} of at most {c.max_rollbacks} per {c.rollback_window} steps)")
        return trainer

    def _restore(self, target: int, run_dir: Path, model, optimizer) -> dict:
        snap = next((s for s in reversed(self.ring) if s.step <= target), None)
        disk = [p for p in ckpt.list_checkpoints(Path(run_dir) / "checkpoints")
                if ckpt.read_trainer(p)["step"] <= target]
        if snap is None and not disk and self.ring:
            snap = self.ring[0]  # none that old (a rollback or a resume emptied the ring): the oldest held
        if disk and (snap is None or ckpt.read_trainer(disk[-1])["step"] > snap.step):
            return self._restore_checkpoint(disk[-1], model, optimizer)
        if snap is None:
            raise StabilityError(f"a spike needs a rollback to step {max(target, 0)} or earlier, but no snapshot "
                                 "or checkpoint is that old; lower --stability.rollback_steps or "
                                 "--stability.snapshot_every")
        model.load_state_dict(snap.model)
        optimizer.load_state_dict(snap.optimizer)
        torch.set_rng_state(snap.rng)
        self.detector.load_state_dict(snap.detector)
        while self.ring and self.ring[-1].step > snap.step:  # snapshots of the abandoned branch
            self.ring.pop()
        return dict(snap.trainer)

    def _restore_checkpoint(self, path: Path, model, optimizer) -> dict:
        trainer = ckpt.read_trainer(path)
        ckpt.load_weights(model, path)
        tensors = ckpt.load_state(path)
        ckpt.restore_optimizer(model, optimizer, tensors)
        torch.set_rng_state(tensors["rng.torch"])
        self.detector.load_state_dict(trainer.get("stability", {}).get("detector", {}))
        self.ring = deque((s for s in self.ring if s.step <= trainer["step"]), maxlen=self.ring.maxlen)
        return {k: trainer[k] for k in ("step", "tokens", "data_step", "elapsed_s")}

    # -- what a checkpoint keeps, so a resumed run decides exactly as an uninterrupted one --
    def state_dict(self) -> dict:
        return {"detector": self.detector.state_dict(), "rollbacks": list(self.rollbacks)}

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state.get("detector", {}))
        self.rollbacks = list(state.get("rollbacks", []))


# ---- Ctrl-C ------------------------------------------------------------------------------------------------

class GracefulStop:
    """The first Ctrl-C (or SIGTERM) asks the loop to stop at the next step boundary, where it saves a
    checkpoint; a second one raises KeyboardInterrupt at once. `restore()` puts the previous handlers
    back; outside the main thread (no signals there) it does nothing."""

    def __init__(self, notify=None):
        self.requested = False
        self.notify = notify or (lambda msg: None)
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.notify("stopping after this step to save a checkpoint; press Ctrl-C again to exit at once")

    def install(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
