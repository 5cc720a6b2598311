"""Parameter and FLOP counts for a nextoken model, from its config alone (no weights needed)."""

from __future__ import annotations

from dataclasses import dataclass

from nextoken.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every distinct trainable parameter (tied embeddings counted once)
    embedding: int  # token (and learned position) embeddings, plus an untied output projection
    non_embedding: int  # what scaling laws call N (Kaplan et al. 2020, §2.1)


def _mlp_hidden(cfg: ModelConfig) -> int:
    if cfg.mlp == "swiglu":
        return (int(2 * cfg.mlp_ratio * cfg.d_model / 3) + 7) // 8 * 8
    return int(cfg.mlp_ratio * cfg.d_model)


def param_counts(cfg: ModelConfig) -> ParamCounts:
    D, V, L, F = cfg.d_model, cfg.vocab_size, cfg.n_layer, _mlp_hidden(cfg)
    b = 1 if cfg.bias else 0
    norm = D * (2 if (cfg.norm_type == "layernorm" and cfg.bias) else 1)
    attn = D * 3 * D + b * 3 * D + D * D + b * D
    n_mats = 3 if cfg.mlp == "swiglu" else 2
    mlp = n_mats * D * F + b * ((n_mats - 1) * F + D)
    per_layer = attn + mlp + 2 * norm
    final_norm = norm if cfg.norm == "pre" else 0
    non_embedding = L * per_layer + final_norm
    embedding = V * D + (cfg.block_size * D if cfg.pos == "learned" else 0)
    if not cfg.tie_embeddings:
        embedding += V * D
    return ParamCounts(non_embedding + embedding, embedding, non_embedding)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token, forward and backward: 6 per weight of every matmul the token goes
    through (the non-embedding weights and the output projection) plus attention's
    12 * L * D * T (PaLM, Chowdhery et al. 2022, appendix B)."""
    T = seq_len or cfg.block_size
    n_matmul = param_counts(cfg).non_embedding + cfg.vocab_size * cfg.d_model
    return 6.0 * n_matmul + 12.0 * cfg.n_layer * cfg.d_model * T
