"""Model shapes: the one place nextoken turns a size (a parameter count N, or the depth dial) into layers, width,
heads and context; the smooth family that sweeps train, and the per-size training rules (LR, batch, warmup, beta2)
each a named function with its source (docs/scaling.md). The depth dial itself lives in model/dial.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from nextoken.config import ModelConfig
from nextoken.model.counting import effective_params, param_counts, training_flops_per_token
from nextoken.model.dial import (  # noqa: F401  (the dial's names, re-exported: scaling code shapes by it too)
    DIAL_TOKENS_PER_PARAM,
    HEAD_SIZE,
    MAX_CONTEXT,
    MAX_MICRO_BATCH,
    MUON_LR,
    WIDE_HEAD_SIZE,
    DialRun,
    _heads,
    deepseek_batch_tokens,
    deepseek_lr,
    depth_dial,
    depth_for_params,
    dial_shape,
    dial_shape_for_params,
    heads_for,
)

ASPECT = 64  # d_model / n_layer
# A one-layer transformer cannot compose attention heads (no induction heads; Olsson et al. 2022), and its loss
# lies on another curve: a law fitted on 1-layer CPU sweeps under-predicted a 2-layer model by 6% (docs/LOG.md).
MIN_LAYERS = 2
WIDTH_STEP = 16


def shape_for_params(n_params: float, base: ModelConfig | None = None) -> ModelConfig:
    """The nextoken model nearest `n_params` non-embedding parameters (the N of scaling laws).

    Depth and width follow d_model ≈ 64 · n_layer. Kaplan et al. 2020 (§3.1, Fig. 5) find the loss at a
    fixed N within a few percent over aspect ratios d_model / n_layer from about 20 to 200; 64 sits
    in that flat region and is the ratio nanochat derives its widths with. Heads are 64 wide (GPT-2, and
    Kaplan's d_attn = d_model / n_head ≈ 64); never fewer than MIN_LAYERS layers. The width moves in steps
    of 64 (16 below 256, 8 below 64, 4 below 32) so that N is hit closely at every size; everything else
    (vocabulary, context, MLP, norms) comes from `base`.

    A `base` with model.depth > 0 stands for the depth dial's family (a sweep run with `--dial`): the shape is
    then `dial_shape` at the depth nearest `n_params`, base's context kept.
    """
    base = base or ModelConfig()
    if not n_params > 0:
        raise ValueError(f"a parameter count must be positive, got {n_params}")
    if base.depth > 0:
        return dial_shape(depth_for_params(n_params, base), base, context=False)
    per_layer = param_counts(dataclasses.replace(base, n_layer=1, d_model=ASPECT)).non_embedding
    # N ≈ n_layer · c · d_model² with d_model = ASPECT · n_layer, so n_layer ≈ (N / (c · ASPECT²))^(1/3).
    c = per_layer / ASPECT**2
    n_layer = max(MIN_LAYERS, round((n_params / (c * ASPECT**2)) ** (1 / 3)))
    width = math.sqrt(n_params / (c * n_layer))
    # wide models: whole 64-wide heads; below 64 wide, steps of 8 (4 below 32) keep neighbouring sizes < 2x apart
    step = (HEAD_SIZE if width >= 4 * HEAD_SIZE else WIDTH_STEP if width >= HEAD_SIZE
            else WIDTH_STEP // 2 if width >= HEAD_SIZE // 2 else WIDTH_STEP // 4)
    best = None
    for k in range(-2, 3):
        d = max(WIDTH_STEP // 4, (round(width / step) + k) * step)
        cfg = dataclasses.replace(base, n_layer=n_layer, d_model=d, n_head=_heads(d, base.pos))
        err = abs(math.log(param_counts(cfg).non_embedding / n_params))
        if best is None or err < best[0]:
            best = (err, cfg)
    return best[1]


COUNTS = ("eff", "non-embedding")  # how a fit counts N: N_eff (default) or Kaplan's non-embedding N


def count_params(cfg: ModelConfig, count: str = "eff") -> float:
    """The N a fit counts for `cfg`: N_eff = training FLOPs per token / 6 (model/counting.py: effective_params;
    Porian et al. 2024, Pearce & Song 2024), or the non-embedding parameters (Kaplan et al. 2020, §2.1)."""
    if count == "eff":
        return effective_params(cfg)
    assert count == "non-embedding", count
    return float(param_counts(cfg).non_embedding)


def describe(cfg: ModelConfig) -> dict:
    """The shape as `plan --json` prints it, with its exact parameter counts and FLOPs per token."""
    counts = param_counts(cfg)
    return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "d_model": cfg.d_model, "block_size": cfg.block_size,
            "vocab_size": cfg.vocab_size, "params_non_embedding": counts.non_embedding, "params_total": counts.total,
            "params_eff": effective_params(cfg), "flops_per_token": training_flops_per_token(cfg)}




# ---- the smooth family of a sweep -------------------------------------------------------------------

FAMILY_ASPECT = 16  # d_model / n_layer the family grows along (below MIN_LAYERS x this, only the width grows)
FAMILY_BAND = 2.0  # the aspect ratio stays within a factor this of FAMILY_ASPECT
MAX_STEP = 1.5  # neighbouring sizes at most this far apart in N_eff (docs/scaling.md)
MIN_FAMILY_HEADS = 4  # heads of the smallest model a head width is chosen for (family_head_size)


@dataclass(frozen=True)
class Family:
    """A smooth model family: every shape has heads `head_size` wide, and depth and width grow together along
    d_model ≈ aspect · n_layer (Kaplan et al. 2020, §3.1: the loss is flat in the aspect ratio over a wide range,
    so holding it fixed removes a source of scatter between sizes rather than choosing a better shape)."""

    head_size: int
    aspect: int = FAMILY_ASPECT

    def to_dict(self) -> dict:
        return {"head_size": self.head_size, "aspect": self.aspect}


def family_of_shapes(shapes) -> Family | None:
    """The family a set of shapes was drawn from, read off their one head width: `shapes` gives (d_model, n_head)
    pairs. None where the head widths differ or there are none (dial sweeps, sweeps from before the family)."""
    widths = {d // h for d, h in shapes if d and h}
    return Family(widths.pop()) if len(widths) == 1 else None


def family_head_size(n_eff_min: float, aspect: int = FAMILY_ASPECT) -> int:
    """The head width of a sweep's family: the largest power of two (4 to 128) at which the model of `n_eff_min`,
    the sweep's smallest, still has MIN_FAMILY_HEADS heads, so that one more head is a step of at most ~1.5x in N
    from there up. N ≈ 12·n_layer·d² with n_layer = d / aspect gives d ≈ (N·aspect / 12)^(1/3). Fixed for the
    whole sweep and written into its fit, so that `plan --fit` shapes its extrapolation from the same family."""
    d = (n_eff_min * aspect / 12) ** (1 / 3)
    return int(min(128, max(4, 2 ** math.floor(math.log2(d / MIN_FAMILY_HEADS)))))


def family_ladder(base: ModelConfig, family: Family, n_eff_max: float) -> list[ModelConfig]:
    """The family's shapes in order of size, from MIN_LAYERS x one head up to past `n_eff_max` N_eff. Each step
    widens by one head, deepens by one layer, or both: among the steps that keep d_model / n_layer within
    FAMILY_BAND of the aspect, the one nearest the aspect of those at most MAX_STEP larger in N_eff (else the
    smallest). Depth and width never shrink along the ladder, and neighbours are at most MAX_STEP apart from
    about 4 heads up (below, one more head is a bigger step; docs/scaling.md)."""
    h, a = family.head_size, family.aspect

    def shape(n_layer: int, d: int) -> ModelConfig:
        return dataclasses.replace(base, depth=0, n_layer=n_layer, d_model=d, n_head=d // h)

    L, d = MIN_LAYERS, h
    ladder = [shape(L, d)]
    while effective_params(ladder[-1]) < n_eff_max * MAX_STEP:
        n0 = effective_params(ladder[-1])
        moves = [(L, d + h), (L + 1, d), (L + 1, d + h)]
        if d < a * MIN_LAYERS:  # below the aspect line at the minimum depth: only the width grows
            moves = [(L, d + h)]
        off = {m: abs(math.log(m[1] / m[0] / a)) for m in moves}
        moves = [m for m in moves if off[m] <= math.log(FAMILY_BAND)] or [min(moves, key=off.get)]
        sized = [(effective_params(shape(*m)) / n0, m) for m in moves]
        small = [(off[m], m) for r, m in sized if r <= MAX_STEP]
        L, d = min(small)[1] if small else min(sized)[1]
        ladder.append(shape(L, d))
    return ladder


def family_shape(n_eff: float, base: ModelConfig, family: Family) -> ModelConfig:
    """The family's shape nearest `n_eff` (the N_eff of model/counting.py) in log terms."""
    if not n_eff > 0:
        raise ValueError(f"a parameter count must be positive, got {n_eff}")
    ladder = family_ladder(base, family, n_eff)
    return min(ladder, key=lambda m: abs(math.log(effective_params(m) / n_eff)))


# ---- per-size training rules ------------------------------------------------------------------------
# Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of Language Models", §3.3-3.4) tune
# the learning rate and batch per model size and fit eta*(N) ∝ N^-1/3, B*(N) ∝ N^2/3 at their reference size of
# 108M parameters; OLMo-core's model ladder codes exactly these (lr = 0.0047·(N/108M)^-1/3, 160 sequences of 2048
# tokens x (N/108M)^2/3, warmup N tokens). The exponents are theirs; the LR constant is ours, fitted on a small
# LR sweep at three sizes (bench/lr_sweep.py, docs/scaling.md), because their constant extrapolated from 1e7+
# parameters to our 1e4-1e6 gives AdamW learning rates above 0.05.

RULE_REF_N = 108e6  # the reference size of Porian et al.'s fits, OLMo-core's ladder
RULE_REF_BATCH_TOKENS = 160 * 2048
LR_AT_REF = 0.0047  # Porian et al. 2024 (their AdamW fit); `nextoken sweep` uses LR_FITTED
# Our LR sweep (bench/lr_sweep.py: 26 runs at N_eff 7.7k, 18k, 49k, byte-level stdlib, 20 tokens per N_eff, one
# seed): eta* 0.020, 0.015, 0.030, i.e. 0.0012 at 108M under the -1/3 exponent; the profiles are flat and noisy
# (single seeds scatter by up to 0.1 nats), so the constant is known to about a factor 2 (docs/scaling.md)
LR_FITTED = 0.0012
# Muon's: our LR sweep (bench/lr_sweep.py --optim muon: 51 runs, 15-18 LRs at each of the same three sizes, one
# and two sequences a step under the step cap) puts eta* at 0.0125, 0.0081, 0.0065 (exponent -0.35), 0.12-0.20x
# of the rule with the constant it had, 0.04 (the `tiny` preset's best of three, at 16 sequences a step);
# applied as sweeps apply it, cap scale included, the constant that matches them is 0.0055 (docs/scaling.md)
MUON_LR_FITTED = 0.0055
TINY_N_EFF = 1.2e6  # about the N_eff of the `tiny` preset (4 x 128, BPE-4096, context 128)
SMALL_BATCH_TOKENS = 128 * 2048  # below this, AdamW's beta2 = 0.99 (Porian et al. 2024, §3.4)
# The batch rule was fitted on runs of a few thousand optimizer steps (Porian et al.'s smallest model, ~5M
# parameters at ~20 tokens each, takes ~2,400 steps of its rule's batch). Sized by N alone, the short runs on an
# IsoFLOP profile's large-model side get far fewer: at N_eff 41k and 227k tokens, 111 steps of 32 sequences ended
# at 3.14 nats where the same tokens in 222/444/888/1,776 steps gave 2.70/2.62/2.55/2.47 (docs/LOG.md, session
# 13). The critical batch grows with the data seen, not the model (Zhang et al. 2024, "How Does Critical Batch
# Size Scale in Pre-training?"), so a run of D tokens takes at most D / MIN_RUN_STEPS tokens a step.
MIN_RUN_STEPS = 2000
# Where the cap cuts the batch below N's rule, the LR falls with it by the square-root rule for adaptive optimizers
# (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms": LR ∝ sqrt(batch)).
# Single runs here preferred 0.4-0.6x the rule's LR where the cap cut the batch 8-16x (docs/LOG.md, session 13).
CAPPED_LR_EXPONENT = 0.5


def lr_for(n_eff: float, at_ref: float | None = None) -> float:
    """AdamW's peak learning rate for a model of `n_eff`: at_ref · (N / 108M)^(-1/3) (Porian et al. 2024, §3.3;
    OLMo-core's ladder). The optimum also falls slowly with the horizon (Bjorck et al. 2025); a sweep's budgets
    differ by ~10x per size, so one rate per size is kept and the horizon effect is left in the scatter."""
    return (at_ref if at_ref is not None else LR_FITTED) * (n_eff / RULE_REF_N) ** (-1 / 3)


def muon_lr_for(n_eff: float, at_tiny: float | None = None) -> float:
    """Muon's peak learning rate for a model of `n_eff`: MUON_LR_FITTED at the tiny preset's size, scaled by
    N^(-1/3) as AdamW's is (OLMo-core's ladder scales its Muon LR by Porian et al.'s AdamW rule; our Muon LR sweep
    measured -0.35), or `at_tiny` in its place. Before the step cap's sqrt scale, which size_rules applies."""
    return (at_tiny if at_tiny is not None else MUON_LR_FITTED) * (n_eff / TINY_N_EFF) ** (-1 / 3)


def batch_tokens_for(n_eff: float) -> float:
    """Tokens per optimizer step for a model of `n_eff`: 160 x 2048 x (N / 108M)^(2/3) (Porian et al. 2024, §3.3,
    as OLMo-core's ladder codes it)."""
    return RULE_REF_BATCH_TOKENS * (n_eff / RULE_REF_N) ** (2 / 3)


def batch_for(n_eff: float, block_size: int, tokens: float | None = None,
              min_steps: int = MIN_RUN_STEPS) -> tuple[int, int]:
    """(sequences per micro-batch, micro-batches per step): batch_tokens_for in sequences of `block_size`,
    rounded to a power of two (at least 1), at most MAX_MICRO_BATCH a micro-batch and the rest accumulated.
    Given the run's `tokens` (D), the batch is also at most the power of two of sequences that leaves
    `min_steps` optimizer steps (see MIN_RUN_STEPS), and never under one sequence."""
    seqs = max(1, 2 ** round(math.log2(max(1.0, batch_tokens_for(n_eff) / block_size))))
    if tokens is not None and min_steps > 0:
        seqs = min(seqs, 2 ** max(0, math.floor(math.log2(max(1.0, tokens / (min_steps * block_size))))))
    micro = min(seqs, MAX_MICRO_BATCH)
    return micro, seqs // micro


def warmup_tokens_for(n_eff: float) -> float:
    """Warmup length in tokens: about N (Porian et al. 2024, §3.2: warmup of N tokens rather than a fixed
    fraction of the run; OLMo-core's ladder, warmup_steps = N / batch)."""
    return n_eff


def beta2_for(batch_tokens: float) -> float:
    """AdamW's beta2: 0.99 at small batches, 0.95 otherwise. Porian et al. (2024, §3.4) find beta2 = 0.95 costs
    loss at batches of fewer than about a hundred sequences (slow second-moment estimates at few tokens per step);
    the threshold, 128 sequences of 2048 tokens, is ours."""
    return 0.99 if batch_tokens < SMALL_BATCH_TOKENS else 0.95


@dataclass(frozen=True)
class SizeRules:
    """What the per-size rules give one model: its optimizer settings and batch (`apply` writes them)."""

    lr: float
    muon_lr: float
    beta2: float
    batch_size: int
    grad_accum: int
    warmup_steps: int
    min_steps: int = 0  # the horizon cap the batch was chosen under (0: sized by N alone)
    lr_batch_exponent: float = 0.0  # the LR's power of (batch / N's batch) where the cap cut it (0: not scaled)

    def apply(self, cfg) -> None:
        cfg.optim.lr, cfg.optim.muon_lr, cfg.optim.beta2 = self.lr, self.muon_lr, self.beta2
        cfg.optim.warmup_steps = self.warmup_steps
        cfg.train.batch_size, cfg.train.grad_accum = self.batch_size, self.grad_accum

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def size_rules(model: ModelConfig, lr_at_ref: float | None = None, tokens: float | None = None,
               min_steps: int = MIN_RUN_STEPS, lr_batch_exponent: float = CAPPED_LR_EXPONENT,
               muon_at_tiny: float | None = None) -> SizeRules:
    """Every per-size rule for `model`, by its N_eff (effective_params); given the run's `tokens` (D), the batch
    also leaves at least `min_steps` optimizer steps where a sequence a step allows (batch_for), and where that
    cuts the batch below N's, the LRs are multiplied by (batch / N's batch)^lr_batch_exponent (CAPPED_LR_EXPONENT;
    0 leaves them as N's rule gives them). `lr_at_ref` and `muon_at_tiny` replace the LR rules' constants (a
    sweep's own, for `plan`)."""
    n = effective_params(model)
    cap = min_steps if tokens is not None else 0
    micro, accum = batch_for(n, model.block_size, tokens, cap)
    per_step = micro * accum * model.block_size
    free_micro, free_accum = batch_for(n, model.block_size)
    cut = per_step / (free_micro * free_accum * model.block_size)
    exponent = lr_batch_exponent if cap else 0.0
    scale = cut ** exponent
    return SizeRules(lr_for(n, lr_at_ref) * scale, muon_lr_for(n, muon_at_tiny) * scale, beta2_for(per_step),
                     micro, accum, max(1, round(warmup_tokens_for(n) / per_step)), cap, exponent)
