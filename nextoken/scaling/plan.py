"""Planning a run under a scaling law: from one of C, N or D the compute-optimal others, from two the third
and what the allocation costs against the optimum; a loss, a model shape and a time."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from nextoken.config import ModelConfig
from nextoken.errors import NextokenError
from nextoken.hardware import PEAK_BF16, gpu_peak_bf16
from nextoken.model.counting import flops_6nd, param_counts, training_flops_per_token
from nextoken.scaling.fit import COUNT_NAMES, PI_LEVEL, FittedLaw, format_ratios, load_fit, ratios  # noqa: F401  (FittedLaw and load_fit are plan's public names too)
from nextoken.scaling.laws import get_law
from nextoken.scaling.shapes import describe, dial_shape_for_params, family_shape, shape_for_params, size_rules
from nextoken.scaling.sweep import run_schedule

# How far past a fit's largest budget its predictions have been checked against a run (docs/scaling.md §7)
EXTRAPOLATION_CHECKED = 10.0


def param_counts_n(cfg: ModelConfig) -> int:
    return param_counts(cfg).non_embedding


def _check(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise NextokenError(f"--{name} must be a positive number, got {value:g}")


def _solve_compute(f, target: float) -> float | None:
    """The budget C (FLOPs) at which f(C) = target, for f increasing in C: bisection on ln C over 1 to about
    3e56 FLOPs; None where the target lies outside f's range there."""
    lo, hi = 0.0, 130.0
    if not f(math.exp(lo)) <= target <= f(math.exp(hi)):
        return None
    for _ in range(64):  # 130 / 2^64: far below double precision
        mid = (lo + hi) / 2
        if f(math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def _optimal_loss(law, C: float) -> float:
    """The law's loss of its compute-optimal (N, D) at C: the frontier, falling as C grows."""
    return float(law.loss(*law.optimal(C)))


def device_peak(device: str) -> float:
    if (peak := gpu_peak_bf16(device)) is not None:
        return peak
    raise NextokenError(f"unknown --device {device!r}; known: {', '.join(PEAK_BF16)} (or pass --tokens-per-s)")


# Three given must agree with the law's convention (6ND, or a sweep's exact count) to within this: published
# figures are rounded to 2-3 digits (GPT-3: 6 x 174.6e9 x 300e9 = 3.143e23 FLOPs, 3.14e23 in Brown et al. 2020,
# Table D.1), while a different convention (say 8ND with recomputation) is 33% off.
AGREE = 0.05


def _shape_of(law, N: float, base: ModelConfig) -> ModelConfig:
    """The fitted law's shape for N counted its way: its sweep's family where it has one (N_eff), else
    shapes.shape_for_params (non-embedding N)."""
    if isinstance(law, FittedLaw) and law.family is not None and law.count == "eff":
        return family_shape(N, base, law.family)
    return shape_for_params(N, base)


def _shape_for_flops_per_token(target: float, base: ModelConfig) -> ModelConfig:
    """The nextoken shape of `base`'s vocabulary and context whose exact training FLOPs per token are nearest
    `target`: a search over 8 decades of N around target / 6 (embeddings, logits and attention move it). Shapes
    are discrete, neighbours less than 2x apart (shapes.shape_for_params); a target 2x or more from every shape
    (below the smallest: the logits alone cost more) is a NextokenError."""
    best = None
    for n in np.exp(np.linspace(math.log(target / 6e4), math.log(target / 6e-4), 641)):
        cfg = shape_for_params(n, base)
        err = abs(math.log(training_flops_per_token(cfg) / target))
        if best is None or err < best[0]:
            best = (err, cfg)
    if best[0] >= math.log(2):
        fpt = training_flops_per_token(best[1])
        raise NextokenError(f"--flops / --tokens is {target:.3g} FLOPs per token, and the nearest nextoken shape of "
                            f"this fit's vocabulary and context trains at {fpt:.3g}; give --params with one of them")
    return best[1]


def _two_given(law, exact: bool, base: ModelConfig, C: float | None, N: float | None,
               D: float | None) -> tuple[float, float, float, ModelConfig]:
    """(N, D, C, shape) from two of C, N and D. The published laws tie them by C = 6ND (Kaplan et al. 2020,
    §2.1), as they were fitted; a sweep's fit by its exact count, C = D x the shape's training FLOPs per token,
    with N the shape's non-embedding parameters, as its runs were counted. With C and D the shape is the one
    nearest C / D FLOPs per token, and D follows from C."""
    if not exact:
        if C is None:
            C = flops_6nd(N, D)
        elif N is None:
            N = C / (6 * D)
        else:
            D = C / (6 * N)
        return N, D, C, dial_shape_for_params(N, base)
    cfg = _shape_of(law, N, base) if N is not None else _shape_for_flops_per_token(C / D, base)
    fpt = training_flops_per_token(cfg)
    N = law.n_of(cfg)
    if C is None:
        C = D * fpt
    else:
        D = C / fpt
    return N, D, C, cfg


def plan(law_name: str = "chinchilla", flops: float | None = None, params: float | None = None,
         tokens: float | None = None, fit: str | None = None, base: ModelConfig | None = None,
         tokens_per_s: float | None = None, device: str | None = None, mfu: float = 0.4) -> dict:
    """A training run under a scaling law, from one, two or three of C (FLOPs), N (parameters), D (tokens).

    One given: the compute-optimal (N, D, C) through it. Two: the third by C = 6ND (a sweep's fit: its exact
    FLOPs per token), the allocation as given: its loss, and beside it (`optimal`) the compute-optimal N, D and
    loss at the same C, and `flops_for_same_loss`, the C at which a compute-optimal model reaches that loss
    (GPT-3's 174.6B on 300B tokens: 42% of its 3.14e23 FLOPs under Chinchilla's approach 3). Three: as two,
    if C agrees with N and D within AGREE. Losses in nats per token on the law's own data. Raises NextokenError
    (one line) for none given, three that disagree, or values that are not positive and finite."""
    given = {k: v for k, v in (("flops", flops), ("params", params), ("tokens", tokens)) if v is not None}
    if not given:
        raise NextokenError("give one or two of --flops, --params, --tokens (C = 6ND ties them); none given")
    for name, value in (("flops", flops), ("params", params), ("tokens", tokens), ("tokens-per-s", tokens_per_s)):
        _check(name, value)
    if not 0 < mfu <= 1:
        raise NextokenError(f"--mfu must be in (0, 1], got {mfu}")
    law = load_fit(fit) if fit else get_law(law_name)
    shape_base = law.base if isinstance(law, FittedLaw) and law.base else dataclasses.replace(base or ModelConfig())
    if shape_base.vocab_size == 0:
        shape_base = dataclasses.replace(shape_base, vocab_size=4096)

    exact = isinstance(law, FittedLaw) and law.base is not None
    if len(given) == 3:
        _, _, C_nd, _ = _two_given(law, exact, shape_base, None, params, tokens)
        if abs(flops / C_nd - 1) > AGREE:
            how = "the sweep's exact count" if exact else "6ND"
            raise NextokenError(f"--flops {flops:.4g} disagrees with {how} of --params and --tokens, {C_nd:.4g} "
                                f"({flops / C_nd - 1:+.0%}); give two of the three, or three within {AGREE:.0%}")
        flops = None
    if len(given) >= 2:
        N, D, C, cfg = _two_given(law, exact, shape_base, flops, params, tokens)
    else:
        if flops is not None:
            C = flops
        else:
            (name, target), index = next(iter(given.items())), 0 if params is not None else 1
            C = _solve_compute(lambda c: law.optimal(c)[index], target)
            if C is None:
                raise NextokenError(f"--{name} {target:.4g} is compute-optimal nowhere between 1 and 3e56 FLOPs "
                                    "under this law")
        if exact and params is None:
            cfg = law.optimal_shape(C)
        else:
            n = params if params is not None else law.optimal(C)[0]
            # a published law: the depth dial's shape
            cfg = _shape_of(law, n, shape_base) if exact else dial_shape_for_params(n, shape_base)
        if exact:  # the shape is the model: its own N, trained for C / its FLOPs per token
            N = law.n_of(cfg)
            D = tokens if tokens is not None else C / training_flops_per_token(cfg)
            C = D * training_flops_per_token(cfg)
        else:
            N, D = law.optimal(C)
            N, D = (params if params is not None else N), (tokens if tokens is not None else D)
    shape = describe(cfg)
    loss = float(law.loss(N, D))
    frontier = law.optimal_loss(C) if isinstance(law, FittedLaw) else None
    N_opt, D_opt = law.optimal(C)
    # the frontier falls with C; its inverse at this loss is what the allocation costs against the optimum
    same = _solve_compute(lambda c: -_optimal_loss(law, c), -loss)
    same = None if same is None else float(f"{same:.6g}")  # a root found to ~1e-9: no digits past what it knows
    out = {
        "law": law.name,
        "given": given,
        "params": float(N),
        "tokens": float(D),
        "flops": float(C),
        "loss": loss,  # the law's L(N, D) of the planned model (approach 3 for a fit)
        "loss_parametric": loss,
        "loss_minima": frontier,  # a fit's IsoFLOP minima's law at C, where it has 3+ minima
        "tokens_per_param": float(D / N),
        "optimal": {"params": float(N_opt), "tokens": float(D_opt), "loss": float(law.loss(N_opt, D_opt)),
                    "tokens_per_param": float(D_opt / N_opt)},
        "flops_for_same_loss": same,
        "shape": shape,
        "flops_convention": "exact" if exact else "6ND",
        "flops_exact": float(shape["flops_per_token"] * D),
    }
    if isinstance(law, FittedLaw) and law.train_tokens:
        out["train_tokens"], out["data_passes"] = law.train_tokens, float(D / law.train_tokens)
    if isinstance(law, FittedLaw):
        out["count"] = law.count
        out["ratios"] = ratios(D, N, _other_count(law, cfg) if exact else None, law.bytes_per_token)
        out["optimal"]["ratios"] = ratios(D_opt, N_opt, None, law.bytes_per_token)
        out["interval"] = law.interval(N, D)
        out["red_flags"] = list(law.red_flags)
        out["confidence"] = "guess" if law.red_flags else "prediction"  # what the text calls the number
        out["backtested"] = law.backtested
        if law.max_flops:
            out["extrapolation"] = float(C / law.max_flops)  # the target over the fit's largest budget
    if isinstance(law, FittedLaw) and law.train and exact:
        out.update(_train_command(law, cfg, D))
    if tokens_per_s is not None:
        out["time_s"], out["time_basis"] = D / tokens_per_s, f"at {tokens_per_s:g} tokens/s"
    elif device is not None:
        out["time_s"] = out["flops_exact"] / (device_peak(device) * mfu)
        out["time_basis"] = f"on one {device} at MFU {mfu:g}, exact FLOPs"
    return out


def _other_count(law: FittedLaw, cfg: ModelConfig) -> float | None:
    """The shape's N under the count the fit did not use (tokens per parameter are reported both ways)."""
    if law.count == "eff":
        return float(param_counts_n(cfg))
    if law.count == "non-embedding":
        return float(training_flops_per_token(cfg) / 6)
    return None


def _train_command(law: FittedLaw, cfg: ModelConfig, D: float) -> dict:
    """The `nextoken train` command that trains the planned shape as the sweep trained its runs: the sweep's
    config, this shape, and, for a sweep with per-size rules, this shape's (shapes.size_rules)."""
    flags = (f"--model.n_layer {cfg.n_layer} --model.n_head {cfg.n_head} --model.d_model {cfg.d_model}")
    if law.train.get("rules") == "per-size":
        # the LR constants and batch cap its sweep ran with
        r = size_rules(cfg, law.train.get("lr_at_ref"), D, min_steps=law.train.get("min_steps", 0),
                       lr_batch_exponent=law.train.get("lr_batch_exponent", 0.0),
                       muon_at_tiny=law.train.get("muon_lr_at_tiny"))
        tps = r.batch_size * r.grad_accum * cfg.block_size
        steps = max(1, round(D / tps))
        warmup, ckpt_every = run_schedule(r.warmup_steps, steps)
        flags += (f" --optim.lr {r.lr:.6g} --optim.muon_lr {r.muon_lr:.6g} --optim.beta2 {r.beta2} "
                  f"--train.batch_size {r.batch_size} --train.grad_accum {r.grad_accum}")
    else:
        tps = law.train["tokens_per_step"]
        steps = max(1, round(D / tps))
        warmup, ckpt_every = run_schedule(law.train["warmup_steps"], steps)
    # a wsd sweep's points are its cooled-down branches: one run cooled down at its end is the same schedule
    schedule = f" --optim.schedule {law.train['schedule']}" if law.train.get("schedule", "cosine") != "cosine" else ""
    return {"steps": steps, "tokens_per_step": tps, "train_command": (
        f"nextoken train --config {law.train['config']} --out RUN {flags} --train.max_steps {steps} "
        f"--optim.warmup_steps {warmup} --train.ckpt_every {ckpt_every}{schedule}")}


def format_plan(res: dict) -> str:
    """The human text of a `plan` result (what `nextoken plan` prints on stderr), one fact a line."""
    s, opt = res["shape"], res["optimal"]
    allocated = len(res.get("given", ())) >= 2  # an allocation as given, not the optimum: compare the two
    minima = (f"; the IsoFLOP minima's law says {res['loss_minima']:.4f}" if res["loss_minima"] is not None else "")
    count = res.get("count")
    flags = res.get("red_flags") or []
    per = (format_ratios(res["ratios"], count) if "ratios" in res else f"{res['tokens_per_param']:.1f} tokens per "
           "parameter")
    iv = res.get("interval")
    if flags:  # no interval that looks like a measurement: the fit itself is in doubt
        loss = (f"loss        ~{res['loss']:.3f} nats/token: a guess, not a prediction; the fit shows "
                f"{len(flags)} red flag(s) (below)" + (f", and its {PI_LEVEL}% interval [{iv[0]:.3f}, {iv[1]:.3f}] "
                                                      "assumes a law it cannot vouch for" if iv else "")
                + ("" if allocated else minima))
    else:
        loss = (f"loss        {res['loss']:.4f} nats/token (predicted"
                + (f", {PI_LEVEL}% prediction interval [{iv[0]:.4f}, {iv[1]:.4f}] from the bootstrap over runs"
                   if iv else "")
                + (": approach 3's L(N, D) of this model" + ("" if allocated else minima) if minima else "") + ")"
                + ("; the fit ran no --backtest, so that red flag was not looked for"
                   if res.get("backtested") is False else ""))
    lines = [
        f"law         {res['law']}  (budget by {res['flops_convention']})",
        f"compute     {res['flops']:.3e} FLOPs",
        f"params N    {res['params']:.4g}" + (f"  ({COUNT_NAMES[count]})" if count else ""),
        f"tokens D    {res['tokens']:.4g}   ({per}"
        + (f"; compute-optimal at this budget: {opt['tokens_per_param']:.1f})" if allocated else ")"),
        loss,
    ]
    lines += [f"RED FLAG    {f}" for f in flags]
    if allocated:
        lines.append(f"optimal     at the same compute: N {opt['params']:.4g}, D {opt['tokens']:.4g} "
                     f"({opt['tokens_per_param']:.1f} tokens per parameter), loss {opt['loss']:.4f}" + minima)
        same = res["flops_for_same_loss"]
        lines.append("same loss   " + (f"a compute-optimal model reaches {res['loss']:.4f} with {same:.4g} FLOPs "
                                        f"({same / res['flops']:.2f}x this budget)" if same is not None else
                                        "beyond what the law allocates between 1 and 3e56 FLOPs"))
        if opt["loss"] > res["loss"]:  # a law that allocates by a rule and takes its loss from another fit
            lines.append("note        this allocation's predicted loss beats the law's own allocation: "
                         f"{res['law']} allocates by a rule fitted apart from the loss it predicts with")
    lines += [
        f"shape       {s['n_layer']} layers x {s['d_model']} wide, {s['n_head']} heads, context {s['block_size']}, "
        f"vocab {s['vocab_size']}: {s['params_non_embedding']:,} non-embedding / {s['params_total']:,} parameters",
        f"exact       {s['flops_per_token']:.4g} FLOPs per token -> {res['flops_exact']:.3e} FLOPs for D tokens",
    ]
    changed = {k: v for k, v in res.get("given", {}).items() if abs(res[k] / v - 1) > 1e-3}
    if changed:
        why = ("those of the nearest of the sweep's discrete shapes, counted exactly"
               if res["flops_convention"] == "exact" else "C = 6ND of the given N and D")
        lines.append("note        " + ", ".join(f"{k} {res[k]:.4g} where {v:.4g} was given" for k, v in changed.items())
                     + f": {why}")
    if res["law"].startswith("fit:") and res["loss_minima"] is None and not any("IsoFLOP" in f for f in flags):
        lines.append("note        no law through the IsoFLOP minima to cross-check approach 3 against (it needs 3 "
                     "minima above the fit's E)")
    if res.get("extrapolation", 0) > EXTRAPOLATION_CHECKED:
        lines.append(f"note        {res['flops']:.3g} FLOPs is {res['extrapolation']:,.0f}x the fit's largest budget; "
                     f"predictions were checked up to {EXTRAPOLATION_CHECKED:g}x (docs/scaling.md §7): beyond, the "
                     "interval is the law's own, not a record's")
    if res.get("data_passes", 0) > 1:
        lines.append(f"note        D is {res['data_passes']:.3g} passes over the sweep's {res['train_tokens']:,}-token "
                     "train split; repeated tokens are worth less than new ones (Muennighoff et al. 2023), so "
                     "expect a higher loss than predicted, or prepare more data")
    lines += ratio_notes(res)
    if "train_command" in res:
        lines.append(f"train       {res['steps']:,} steps of the sweep's {res['tokens_per_step']:,} tokens, trained as "
                     f"its runs were:\n            {res['train_command']}")
    if "time_s" in res:
        lines.append(f"time        {_duration(res['time_s'])} {res['time_basis']}")
    return "\n".join(lines)


def ratio_notes(res: dict) -> list[str]:
    """Why the tokens per parameter shown here need not be Chinchilla's 20 (docs/scaling.md)."""
    tpp = res["tokens_per_param"]
    if res["law"] == "chinchilla":
        return [f"note        {tpp:.0f} tokens per parameter, not the ~20 taught: 20 is Chinchilla's approach 1 "
                "(Table 3, `--law chinchilla-table3`); the published approach-3 constants make D/N grow as "
                "C^(b-a) = C^0.09 (about 59 at Chinchilla's own 5.8e23 FLOPs), which "
                "Besiroglu et al. 2024 trace to the fit (L-BFGS stopped early, rounded constants); their refit, "
                "`--law epoch`, gives 18-26 over 1e18-1e24 FLOPs"]
    if not res["law"].startswith("fit:") or "ratios" not in res:
        return []
    r = res["ratios"]
    bpe = f"{r['bpe_tokens_per_param']:.0f} per BPE-token equivalent" if "bpe_tokens_per_param" in r else ""
    return ["note        Chinchilla's ~20 tokens per parameter is for subword tokens, non-embedding N and 1e18-1e24 "
            "FLOPs; counting N that way, tiny budgets' optima tend to lie higher (Porian et al. 2024; Pearce & Song "
            "2024)" + (f"; this plan's is {bpe}" if bpe else "") + " (docs/scaling.md)"]


def _duration(s: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"
