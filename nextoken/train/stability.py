"""Fault injection and the guard that keeps non-finite steps out of the weights."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from nextoken.errors import ConfigError

_FAULT = re.compile(r"^(lr|batch|nan)@(\d+)(?:x([0-9.eE+-]+))?$")


@dataclass
class Faults:
    """`--stability.inject lr@300x100,batch@350,nan@450`: break a run on purpose at chosen steps."""

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
            else:
                getattr(faults, kind).add(step)
        return faults

    def lr_factor(self, step: int) -> float:
        return self.lr.get(step, 1.0)

    def poison(self, step: int, x: torch.Tensor, y: torch.Tensor, vocab: int, seed: int):
        """Replace the batch with uniformly random tokens (a corrupted shard, say)."""
        if step not in self.batch:
            return x, y
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randint(0, vocab, (x.size(0), x.size(1) + 1), generator=g)
        return rows[:, :-1], rows[:, 1:]


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
