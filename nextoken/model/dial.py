"""The depth dial: one number, `--model.depth`, derives a whole run (shape, learning rates, batch, token budget),
nanochat's `--depth` idea with a source for each rule (docs/dial.md). It lives beside the model, below `config`
and `scaling/`: `config.build_config` applies it, and `scaling.shapes` re-exports it for sweeps and plans."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from nextoken.config import Config, ModelConfig
from nextoken.model.counting import param_counts, training_flops_per_token

HEAD_SIZE = 64  # GPT-2's and Kaplan's d_attn
WIDE_HEAD_SIZE = 128  # from d_model 2048 on: GPT-3's 2.7B and up, Llama's
MAX_CONTEXT = 8192  # pretraining contexts stop about here (Llama 3's 8K; longer ones come from a later phase)
MUON_LR = 0.02  # Muon's learning rate for hidden matrices (Jordan et al. 2024; nanochat's matrix LR)
MAX_MICRO_BATCH = 32  # sequences per micro-batch; more go to gradient accumulation
DIAL_TOKENS_PER_PARAM = 20.0  # Chinchilla's ratio (Hoffmann et al. 2022, Table 3)


def heads_for(d_model: int, pos: str) -> int:
    """The dial's head count for a width: heads 64 wide (128 from d_model 2048), a divisor of d_model."""
    return _heads(d_model, pos, WIDE_HEAD_SIZE if d_model >= 2048 else HEAD_SIZE)


def _heads(d_model: int, pos: str, head_size: int = HEAD_SIZE) -> int:
    n_head = max(1, round(d_model / head_size))
    while n_head > 1 and (d_model % n_head or (pos == "rope" and (d_model // n_head) % 2)):
        n_head -= 1
    return n_head


def dial_shape(depth: int, base: ModelConfig, context: bool = True) -> ModelConfig:
    """The model of the depth dial: `depth` blocks, d_model = base.aspect_ratio x depth, heads 64 wide (128 from
    d_model 2048: GPT-3 2.7B+, Llama), context the power of two nearest d_model within [64, MAX_CONTEXT] when
    `context` (else base's). The context rule keeps attention's share of the FLOPs per token near constant: its
    score and value products cost 4·n_layer·n_ctx·d_model against the weights' 24·n_layer·d_model² (Kaplan et al.
    2020, Table 1), a ratio n_ctx / (6·d_model) that stays at 1/6 as the dial turns; it gives GPT-2 small's 1024 at
    depth 12. A width of 4 heads or more is rounded to whole heads. Everything else (vocabulary, norms, MLP,
    positions) comes from `base`. Raises ValueError for depth < 1."""
    if depth < 1:
        raise ValueError(f"the depth dial needs depth >= 1, got {depth}")
    d_model = base.aspect_ratio * depth
    head = WIDE_HEAD_SIZE if d_model >= 2048 else HEAD_SIZE
    if d_model >= 4 * head:  # whole heads (narrower models keep aspect x depth and take a divisor as heads)
        d_model = round(d_model / head) * head
    block = base.block_size
    if context:
        block = int(min(MAX_CONTEXT, max(64, 2 ** round(math.log2(d_model)))))
    return dataclasses.replace(base, depth=depth, n_layer=depth, d_model=d_model,
                               n_head=heads_for(d_model, base.pos), block_size=block)


def depth_for_params(n_params: float, base: ModelConfig) -> int:
    """The dial depth whose model (of base's aspect ratio) has the non-embedding parameter count nearest
    `n_params` in log terms. Raises ValueError for a count that is not positive."""
    if not n_params > 0:
        raise ValueError(f"a parameter count must be positive, got {n_params}")
    per_layer = param_counts(dataclasses.replace(base, n_layer=1, d_model=base.aspect_ratio)).non_embedding
    guess = max(1, round((n_params / per_layer) ** (1 / 3)))  # N ≈ per_layer(aspect) · depth³
    best = min(range(max(1, guess - 2), guess + 3),
               key=lambda d: abs(math.log(param_counts(dial_shape(d, base, context=False)).non_embedding / n_params)))
    return best


def dial_shape_for_params(n_params: float, base: ModelConfig) -> ModelConfig:
    """`dial_shape` at the depth nearest `n_params` non-embedding parameters: what `plan` proposes."""
    return dial_shape(depth_for_params(n_params, base), base)


def deepseek_batch_tokens(flops: float) -> float:
    """Tokens per optimizer step near the optimum for a run of `flops`: B_opt = 0.2920 · C^0.3271 (DeepSeek-AI
    2024, "DeepSeek LLM", §3.1, eq. 1; fitted on 1e17-3e20 FLOPs)."""
    return 0.2920 * flops ** 0.3271


def deepseek_lr(flops: float) -> float:
    """AdamW peak learning rate near the optimum for a run of `flops`: η_opt = 0.3118 · C^-0.1250 (DeepSeek-AI
    2024, "DeepSeek LLM", §3.1, eq. 1)."""
    return 0.3118 * flops ** -0.1250


@dataclass(frozen=True)
class DialRun:
    """What the depth dial derives; `apply` writes it into a Config (whose model.vocab_size stays: 0 means the
    data fixes it)."""
    model: ModelConfig
    params: int  # non-embedding N
    tokens: int  # D, the token budget: steps x tokens per step
    flops: float  # D x the model's exact training FLOPs per token
    lr: float  # AdamW's peak (with optim.name muon: the embeddings', output layer's, norms')
    muon_lr: float
    batch_size: int  # sequences per micro-batch
    grad_accum: int
    max_steps: int

    def apply(self, cfg: Config) -> None:
        cfg.model = dataclasses.replace(self.model, vocab_size=cfg.model.vocab_size)
        cfg.optim.lr, cfg.optim.muon_lr = self.lr, self.muon_lr
        cfg.train.batch_size, cfg.train.grad_accum, cfg.train.max_steps = (self.batch_size, self.grad_accum,
                                                                          self.max_steps)


def depth_dial(depth: int, base: ModelConfig, tokens_per_param: float = DIAL_TOKENS_PER_PARAM) -> DialRun:
    """A whole run from one number, nanochat's `--depth` idea with nextoken's sources for each part:

    - shape: `dial_shape` (d_model = aspect_ratio x depth, 64-wide heads, context near d_model);
    - token budget: D = tokens_per_param x N, N the non-embedding parameters (Chinchilla's 20 by default;
      docs/dial.md compares it with the project's own fitted law);
    - compute C = D x the exact training FLOPs per token (model/counting.py);
    - batch: B_opt(C) tokens a step, rounded to a power of two of sequences, at most MAX_MICRO_BATCH a
      micro-batch and the rest accumulated; AdamW's LR: η_opt(C) (both DeepSeek LLM's fits, §3.1);
    - Muon's LR: MUON_LR at every depth (its update is orthogonalized, so its size does not grow with width);
    - steps: D / tokens per step.

    Raises ValueError for depth < 1 or a non-positive tokens_per_param."""
    if not tokens_per_param > 0:
        raise ValueError(f"tokens per parameter must be positive, got {tokens_per_param}")
    model = dial_shape(depth, base)
    n = param_counts(model).non_embedding
    fpt = training_flops_per_token(model)
    flops = tokens_per_param * n * fpt  # the budget's C, from which batch and LR follow
    seqs = max(1, 2 ** round(math.log2(max(1.0, deepseek_batch_tokens(flops) / model.block_size))))
    micro = min(seqs, MAX_MICRO_BATCH)
    steps = max(1, round(tokens_per_param * n / (seqs * model.block_size)))
    tokens = steps * seqs * model.block_size
    return DialRun(model, n, tokens, tokens * fpt, deepseek_lr(flops), MUON_LR, micro, seqs // micro, steps)
