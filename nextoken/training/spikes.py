"""Loss-spike detection. Each step's training loss and log gradient norm are compared with a
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
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): MAD * 1.4826 estimates the standard deviation of Gaussian noise


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)



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
