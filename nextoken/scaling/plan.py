"""Compute-optimal planning: from one of C, N or D to the others, a loss, a model shape and a time."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextoken.config import ModelConfig
from nextoken.errors import NextokenError
from nextoken.hardware import PEAK_BF16, gpu_peak_bf16
from nextoken.model.counting import param_counts, training_flops_per_token
from nextoken.scaling.laws import ParametricLaw, get_law
from nextoken.scaling.shapes import describe, shape_for_params


@dataclass(frozen=True)
class FittedLaw:
    """A law fitted by `nextoken fit`. When it comes from a sweep, its budgets were counted exactly
    (training_flops_per_token of each model), so it allocates C over nextoken shapes of the sweep's
    vocabulary and context, not by 6ND."""

    law: ParametricLaw
    base: ModelConfig | None
    path: str
    frontier: tuple[float, float, float] | None = None  # (E, kL, gamma): L_opt(C) = E + kL * C^-gamma
    train_tokens: int | None = None  # the sweep's train split: a plan past one pass over it is warned about
    train: dict | None = None  # a sweep run's config.toml, tokens per step, base warmup: how the sweep trained

    def optimal_loss(self, C: float) -> float | None:
        """The loss of the compute-optimal model at C from the power law through the sweep's IsoFLOP minima
        (fit.fit_frontier), or None where the fit has fewer than 3 of them. `plan --fit` prints it beside
        its prediction, approach 3's L(N, D) of the planned model: checked at 4x the largest budget of
        sweeps with 3+ budgets, this law missed by -3.0, -3.7, -3.7 and -0.3%, approach 3 by -2.3, -0.8,
        -0.9 and +1.4% (docs/LOG.md, "on twice the data" and "a GPU at last"). It predicts the ideal
        model's loss, which the planned shape need not reach, from a handful of parabola minima."""
        if self.frontier is None:
            return None
        E, kL, gamma = self.frontier
        return E + kL * C**-gamma

    @property
    def name(self) -> str:
        return f"fit:{self.path}"

    def loss(self, N, D):
        return self.law.loss(N, D)

    def optimal(self, C: float) -> tuple[float, float]:
        if self.base is None:
            return self.law.optimal(C)
        cfg = self.optimal_shape(C)
        return param_counts_n(cfg), C / training_flops_per_token(cfg)

    def optimal_shape(self, C: float) -> ModelConfig:
        """The shape minimizing the predicted loss at C, each shape trained for C / its FLOPs per token:
        a search over 4 decades of N around the 6ND optimum, which embeddings and attention move."""
        N0, _ = self.law.optimal(C)
        best = None
        for n in np.exp(np.linspace(math.log(N0 / 100), math.log(N0 * 100), 321)):
            cfg = shape_for_params(n, self.base)
            loss = self.law.loss(param_counts_n(cfg), C / training_flops_per_token(cfg))
            if best is None or loss < best[0]:
                best = (loss, cfg)
        return best[1]


def param_counts_n(cfg: ModelConfig) -> int:
    return param_counts(cfg).non_embedding


def load_fit(path: str | Path) -> FittedLaw:
    """A fit.json written by `nextoken fit` (or the sweep directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "fit.json"
    if not p.is_file():
        raise NextokenError(f"--fit {path}: no fit.json there; run `nextoken fit SWEEP` first")
    try:
        data = json.loads(p.read_text())
        law = ParametricLaw(f"fit:{p}", *(float(data[k]) for k in ("E", "A", "B", "alpha", "beta")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise NextokenError(f"--fit {p} is not a fit.json written by `nextoken fit` ({type(e).__name__}: {e}); "
                            "fit again") from None
    if not all(math.isfinite(v) and v > 0 for v in (law.A, law.B, law.alpha, law.beta)) or not math.isfinite(law.E):
        raise NextokenError(f"--fit {p} holds non-finite or non-positive constants; fit again")
    fr = data.get("frontier")
    frontier = None
    if isinstance(fr, dict) and all(isinstance(fr.get(k), int | float) for k in ("E", "kL", "gamma")):
        frontier = (float(fr["E"]), float(fr["kL"]), float(fr["gamma"]))
    base = None
    if isinstance(data.get("model"), dict):
        base = ModelConfig()
        for k, v in data["model"].items():
            if hasattr(base, k):
                setattr(base, k, v)
    train_tokens = data.get("train_tokens") if isinstance(data.get("train_tokens"), int) else None
    train = data.get("train")
    if not (isinstance(train, dict) and isinstance(train.get("config"), str)
            and isinstance(train.get("tokens_per_step"), int) and isinstance(train.get("warmup_steps"), int)):
        train = None
    return FittedLaw(law, base, str(p), frontier, train_tokens, train)


def _check(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise NextokenError(f"--{name} must be a positive number, got {value:g}")


def _solve_compute(law, target: float, index: int) -> float:
    """The budget C at which the law's optimal N (index 0) or D (index 1) equals `target`: bisection
    on log C, since both grow with C."""
    lo, hi = 0.0, 130.0  # ln C from 1 to about 3e56 FLOPs
    for _ in range(100):
        mid = (lo + hi) / 2
        if law.optimal(math.exp(mid))[index] < target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def device_peak(device: str) -> float:
    if (peak := gpu_peak_bf16(device)) is not None:
        return peak
    raise NextokenError(f"unknown --device {device!r}; known: {', '.join(PEAK_BF16)} (or pass --tokens-per-s)")


def plan(law_name: str = "chinchilla", flops: float | None = None, params: float | None = None,
         tokens: float | None = None, fit: str | None = None, base: ModelConfig | None = None,
         tokens_per_s: float | None = None, device: str | None = None, mfu: float = 0.4) -> dict:
    """Compute-optimal (N, D, C) from exactly one of them, with the law's predicted loss."""
    given = [k for k, v in (("flops", flops), ("params", params), ("tokens", tokens)) if v is not None]
    if len(given) != 1:
        raise NextokenError("give exactly one of --flops, --params, --tokens "
                            f"({'none' if not given else ' and '.join('--' + g for g in given)} given)")
    for name, value in (("flops", flops), ("params", params), ("tokens", tokens), ("tokens-per-s", tokens_per_s)):
        _check(name, value)
    if not 0 < mfu <= 1:
        raise NextokenError(f"--mfu must be in (0, 1], got {mfu}")
    law = load_fit(fit) if fit else get_law(law_name)
    shape_base = law.base if isinstance(law, FittedLaw) and law.base else dataclasses.replace(base or ModelConfig())
    if shape_base.vocab_size == 0:
        shape_base = dataclasses.replace(shape_base, vocab_size=4096)

    exact = isinstance(law, FittedLaw) and law.base is not None
    if flops is not None:
        C = flops
    else:
        C = _solve_compute(law, params if params is not None else tokens, 0 if params is not None else 1)
    if exact and params is None:
        cfg = law.optimal_shape(C)
    else:
        cfg = shape_for_params(params if params is not None else law.optimal(C)[0], shape_base)
    shape = describe(cfg)
    if exact:  # the shape is the model: its own N, trained for C / its FLOPs per token
        N = shape["params_non_embedding"]
        D = tokens if tokens is not None else C / shape["flops_per_token"]
        C = D * shape["flops_per_token"]
    else:
        N, D = law.optimal(C)
        N, D = (params if params is not None else N), (tokens if tokens is not None else D)
    loss = float(law.loss(N, D))
    frontier = law.optimal_loss(C) if isinstance(law, FittedLaw) else None
    out = {
        "law": law.name,
        "params": float(N),
        "tokens": float(D),
        "flops": float(C),
        "loss": loss,  # the law's L(N, D) of the planned model (approach 3 for a fit)
        "loss_parametric": loss,
        "loss_minima": frontier,  # a fit's IsoFLOP minima's law at C, where it has 3+ minima
        "tokens_per_param": float(D / N),
        "shape": shape,
        "flops_convention": "exact" if exact else "6ND",
        "flops_exact": float(shape["flops_per_token"] * D),
    }
    if isinstance(law, FittedLaw) and law.train_tokens:
        out["train_tokens"], out["data_passes"] = law.train_tokens, float(D / law.train_tokens)
    if isinstance(law, FittedLaw) and law.train and exact:
        from nextoken.scaling.sweep import run_schedule

        tps = law.train["tokens_per_step"]
        steps = max(1, round(D / tps))
        warmup, ckpt_every = run_schedule(law.train["warmup_steps"], steps)
        out.update(steps=steps, tokens_per_step=tps, train_command=(
            f"nextoken train --config {law.train['config']} --out RUN --model.n_layer {cfg.n_layer} "
            f"--model.n_head {cfg.n_head} --model.d_model {cfg.d_model} --train.max_steps {steps} "
            f"--optim.warmup_steps {warmup} --train.ckpt_every {ckpt_every}"))
    if tokens_per_s is not None:
        out["time_s"] = D / tokens_per_s
    elif device is not None:
        out["time_s"] = out["flops_exact"] / (device_peak(device) * mfu)
    return out
