"""Model shapes from a parameter count: the one place nextoken turns N into layers, width and heads."""

from __future__ import annotations

import dataclasses
import math

from nextoken.config import ModelConfig
from nextoken.model.counting import param_counts, training_flops_per_token

ASPECT = 64  # d_model / n_layer
# A one-layer transformer cannot compose attention heads (no induction heads; Olsson et al. 2022), and its loss
# lies on another curve: a law fitted on 1-layer CPU sweeps under-predicted a 2-layer model by 6% (docs/LOG.md).
MIN_LAYERS = 2
HEAD_SIZE = 64
WIDTH_STEP = 16


def shape_for_params(n_params: float, base: ModelConfig | None = None) -> ModelConfig:
    """The nextoken model nearest `n_params` non-embedding parameters (the N of scaling laws).

    Depth and width follow d_model ≈ 64 · n_layer. Kaplan et al. 2020 (§3.1, Fig. 5) find the loss at a
    fixed N within a few percent over aspect ratios d_model / n_layer from about 20 to 200; 64 sits
    in that flat region and is the ratio nanochat derives its widths with. Heads are 64 wide (GPT-2, and
    Kaplan's d_attn = d_model / n_head ≈ 64); never fewer than MIN_LAYERS layers. The width moves in steps
    of 64 (16 below 256, 8 below 64, 4 below 32) so that N is hit closely at every size; everything else
    (vocabulary, context, MLP, norms) comes from `base`.
    """
    base = base or ModelConfig()
    if not n_params > 0:
        raise ValueError(f"a parameter count must be positive, got {n_params}")
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


def _heads(d_model: int, pos: str) -> int:
    n_head = max(1, round(d_model / HEAD_SIZE))
    while d_model % n_head or (pos == "rope" and (d_model // n_head) % 2):
        n_head -= 1
    return n_head


def describe(cfg: ModelConfig) -> dict:
    """The shape as `plan --json` prints it, with its exact parameter counts and FLOPs per token."""
    counts = param_counts(cfg)
    return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "d_model": cfg.d_model, "block_size": cfg.block_size,
            "vocab_size": cfg.vocab_size, "params_non_embedding": counts.non_embedding, "params_total": counts.total,
            "flops_per_token": training_flops_per_token(cfg)}
