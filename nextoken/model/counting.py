"""Parameter and FLOP counts of a nextoken model from its config alone (no weights needed): the one FLOP count
that scaling budgets and MFU both use, equal to PyTorch's FlopCounterMode (tests/test_scaling_laws.py).

A matmul of (m x k) by (k x n) costs 2mkn FLOPs forward; backward computes the gradients of both
operands, twice that (Kaplan et al. 2020, §2.1). Embedding lookups, norms, activations and the
softmax are not matmuls and are left out, as in every published count. Attention is counted over
all T x T query-key pairs, as PaLM's 12·L·D·T does (Chowdhery et al. 2022, appendix B) and as
PyTorch's FlopCounterMode does for the math kernel; a causal kernel does about half of that work.
"""

from __future__ import annotations

from dataclasses import dataclass

from nextoken.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every distinct trainable parameter (tied embeddings counted once)
    embedding: int  # token (and learned position) embeddings, plus an untied output projection
    non_embedding: int  # what scaling laws call N (Kaplan et al. 2020, §2.1)


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Trainable parameters of the model `cfg` describes, split as Kaplan et al. (2020, §2.1) do."""
    D, V, L, F = cfg.d_model, cfg.vocab_size, cfg.n_layer, cfg.mlp_width
    Q, KV = cfg.n_head * cfg.head_dim, 2 * cfg.kv_heads * cfg.head_dim  # query and key+value widths
    b = 1 if cfg.bias else 0
    norm = D * (2 if (cfg.norm_type == "layernorm" and cfg.bias) else 1)
    attn = D * (Q + KV) + (b or cfg.qkv_bias) * (Q + KV) + Q * D + b * D + (2 * cfg.head_dim if cfg.qk_norm else 0)
    n_mats = 3 if cfg.mlp == "swiglu" else 2
    mlp = n_mats * D * F + b * ((n_mats - 1) * F + D)
    per_layer = attn + mlp + 2 * norm
    final_norm = norm if cfg.norm == "pre" else 0
    non_embedding = L * per_layer + final_norm
    embedding = V * D + (cfg.block_size * D if cfg.pos == "learned" else 0)
    if not cfg.tie_embeddings:
        embedding += V * D
    return ParamCounts(non_embedding + embedding, embedding, non_embedding)


def flops_6nd(params: float, tokens: float) -> float:
    """Training FLOPs by the standard estimate C = 6ND (Kaplan et al. 2020, eq. 2.1 and §2.1)."""
    return 6.0 * params * tokens


def forward_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token of each matmul family, for a sequence of `seq_len` (default block_size)."""
    T, D, L, V, F = seq_len or cfg.block_size, cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.mlp_width
    Q, KV = cfg.n_head * cfg.head_dim, 2 * cfg.kv_heads * cfg.head_dim  # query and key+value widths
    n_mlp = 3 if cfg.mlp == "swiglu" else 2
    return {
        "qkv": L * 2 * D * (Q + KV),
        "attn_scores": L * 2 * T * Q,  # q·k for T keys, all query heads together: 2·T·(H·K)
        "attn_values": L * 2 * T * Q,  # the weighted sum of T values
        "attn_proj": L * 2 * Q * D,
        "mlp": L * 2 * n_mlp * D * F,
        "logits": 2 * D * V,
    }


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward plus backward FLOPs per trained token: 3x the forward matmuls."""
    return 3.0 * sum(forward_flops_per_token(cfg, seq_len).values())


def effective_params(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """N_eff, the parameter count that makes C = 6·N_eff·D exact: the training FLOPs per token over 6. Unlike the
    non-embedding N of Kaplan et al. (2020, §2.1) it counts the output layer and attention's score and value
    products, which at small widths are a large and size-dependent share of the compute; counting them is what
    reconciles Kaplan's and Chinchilla's exponents (Pearce & Song 2024, §3; Porian et al. 2024, §3.1). The N of
    `nextoken sweep`, `fit` and `plan` by default (docs/scaling.md)."""
    return training_flops_per_token(cfg, seq_len) / 6.0


def training_flops(cfg: ModelConfig, tokens: float, seq_len: int | None = None) -> float:
    """Training FLOPs of `tokens` tokens (exact count, forward and backward)."""
    return training_flops_per_token(cfg, seq_len) * tokens


def measured_flops_per_token(cfg: ModelConfig, batch: int = 1) -> float:
    """FLOPs of one forward and backward pass of the real model as PyTorch's FlopCounterMode counts them,
    per token; attention runs on the math kernel, whose matmuls the counter sees on every device."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from nextoken.model.gpt import GPT

    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx).float().logsumexp(-1).sum().backward()
    return counter.get_total_flops() / (batch * cfg.block_size)
