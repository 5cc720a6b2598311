"""The stability policies and the rollback ring: what a run does about a loss spike or a non-finite step.

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
just resumed (its ring still empty) can roll back to a checkpoint; both are restored through
`nextoken.checkpoint`'s one restore (weights, optimizer, and the CPU and CUDA RNG, in either format).
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from nextoken import checkpoint as ckpt
from nextoken.config import StabilityConfig
from nextoken.errors import NextokenError
from nextoken.training.spikes import SpikeDetector


class StabilityError(NextokenError):
    """The run keeps spiking after the allowed number of rollbacks."""


@dataclass
class Snapshot:
    step: int
    trainer: dict  # TrainState fields at the snapshot
    model: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict[str, torch.Tensor]  # checkpoint.rng_state(): CPU and, where present, CUDA
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
                                  _to_cpu(optimizer.state_dict()), ckpt.rng_state(),
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
        ckpt.set_rng_state(snap.rng)
        self.detector.load_state_dict(snap.detector)
        while self.ring and self.ring[-1].step > snap.step:  # snapshots of the abandoned branch
            self.ring.pop()
        return dict(snap.trainer)

    def _restore_checkpoint(self, path: Path, model, optimizer) -> dict:
        trainer = ckpt.restore(path, model, optimizer, rng=True)
        self.detector.load_state_dict(trainer.get("stability", {}).get("detector", {}))
        self.ring = deque((s for s in self.ring if s.step <= trainer["step"]), maxlen=self.ring.maxlen)
        return {k: trainer[k] for k in ("step", "tokens", "data_step", "elapsed_s")}

    # -- what a checkpoint keeps, so a resumed run decides exactly as an uninterrupted one --
    def state_dict(self) -> dict:
        return {"detector": self.detector.state_dict(), "rollbacks": list(self.rollbacks)}

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state.get("detector", {}))
        self.rollbacks = list(state.get("rollbacks", []))
