"""Fault injection (`--stability.inject lr@300x100,batch@350,nan@450`): break a run on purpose to watch the
stability policies handle it. It wraps the batch and the loss from outside the step; the step itself knows
nothing of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nextoken.config import parse_inject


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
        """The faults of a `stability.inject` spec (config.parse_inject checks and reads it)."""
        faults = cls()
        for kind, step, factor in parse_inject(spec):
            if kind == "lr":
                faults.lr[step] = factor
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
