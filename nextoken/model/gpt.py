"""A decoder-only transformer (GPT-2 family, with the common modern options).

Shape suffixes: B batch, T time (positions), D d_model, H heads, K head_dim (D/H), V vocab,
F MLP hidden width, S positions held in the KV-cache, G = 2H query and key heads side by side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nextoken.config import ModelConfig


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm_type == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=1e-5)
    return nn.LayerNorm(cfg.d_model, bias=cfg.bias)


def rope_tables(K: int, T: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's rotation angles (Su et al. 2021, eq. 34), each (T, K/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, K, 2, device=device, dtype=torch.float32) / K)
    angles_TK = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
    return angles_TK.cos(), angles_TK.sin()


def apply_rope(x_BHTK: torch.Tensor, cos_TK: torch.Tensor, sin_TK: torch.Tensor) -> torch.Tensor:
    # Rotate pairs (first half, second half) of each head's channels: (x1 cos - x2 sin, x2 cos + x1 sin),
    # written as x * [cos, cos] + [x2, x1] * [-sin, sin]: the same roundings (negation is exact, addition
    # commutes), in four passes over x instead of seven (the two small tables cost nothing).
    x = x_BHTK.float()
    x1, x2 = x.chunk(2, dim=-1)
    out = x * torch.cat([cos_TK, cos_TK], dim=-1) + torch.cat([x2, x1], dim=-1) * torch.cat([-sin_TK, sin_TK], dim=-1)
    return out.type_as(x_BHTK)


class KVCache:
    """Keys and values of the positions seen so far, per layer: each new token costs one position."""

    def __init__(self, cfg: ModelConfig, batch: int, device, dtype):
        H, K, S = cfg.n_head, cfg.head_dim, cfg.block_size
        self.k = [torch.zeros(batch, H, S, K, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(batch, H, S, K, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0

    def append(self, layer: int, k_BHTK: torch.Tensor, v_BHTK: torch.Tensor):
        T = k_BHTK.size(2)
        self.k[layer][:, :, self.pos:self.pos + T] = k_BHTK
        self.v[layer][:, :, self.pos:self.pos + T] = v_BHTK
        end = self.pos + T
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True
        self.resid_drop = nn.Dropout(cfg.dropout)

    def heads(self, x_BTD, rope=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values per head, (B, H, T, K) each, positions rotated (nextoken.inspect reads
        the attention pattern through this too)."""
        B, T, D = x_BTD.shape
        H, K = self.cfg.n_head, self.cfg.head_dim
        # queries and keys side by side as 2H heads: RoPE rotates both in one pass (half the elementwise ops;
        # the same arithmetic per element, so the same results). One split, not two slices: the backward of a
        # slice zero-fills a tensor of the whole qkv's size, a split's just concatenates.
        qk_BT2D, v_BTD = self.qkv(x_BTD).split([2 * D, D], dim=2)
        v_BHTK = v_BTD.view(B, T, H, K).transpose(1, 2)
        qk_BGTK = qk_BT2D.view(B, T, 2 * H, K).transpose(1, 2)
        if rope is not None:
            qk_BGTK = apply_rope(qk_BGTK, *rope)
        q_BHTK, k_BHTK = qk_BGTK.split(H, dim=1)
        return q_BHTK, k_BHTK, v_BHTK

    def forward(self, x_BTD, rope=None, cache: KVCache | None = None):
        B, T, D = x_BTD.shape
        q_BHTK, k_BHTK, v_BHTK = self.heads(x_BTD, rope)
        mask = None
        causal = self.cfg.attention == "causal"  # bidirectional: the masked-token objective (BERT)
        if cache is not None:
            k_BHTK, v_BHTK = cache.append(self.layer, k_BHTK, v_BHTK)
            if cache.pos > 0:  # queries sit at positions pos..pos+T-1 of the S cached keys
                causal = False
                if T > 1:
                    S = k_BHTK.size(2)
                    mask = torch.ones(T, S, dtype=torch.bool, device=x_BTD.device).tril(diagonal=S - T)
        drop = self.cfg.dropout if self.training else 0.0
        y_BHTK = F.scaled_dot_product_attention(q_BHTK, k_BHTK, v_BHTK, attn_mask=mask, dropout_p=drop,
                                                is_causal=causal and mask is None)
        y_BTD = y_BHTK.transpose(1, 2).contiguous().view(B, T, D)
        return self.resid_drop(self.proj(y_BTD))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        F_ = cfg.mlp_hidden
        if self.swiglu:
            self.gate = nn.Linear(cfg.d_model, F_, bias=cfg.bias)
        self.fc = nn.Linear(cfg.d_model, F_, bias=cfg.bias)
        self.proj = nn.Linear(F_, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x_BTD):
        h_BTF = F.silu(self.gate(x_BTD)) * self.fc(x_BTD) if self.swiglu else F.gelu(self.fc(x_BTD))
        return self.drop(self.proj(h_BTF))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.norm1, self.norm2 = _norm(cfg), _norm(cfg)
        self.attn, self.mlp = Attention(cfg, layer), MLP(cfg)

    def forward(self, x_BTD, rope=None, cache=None):
        if self.pre:  # pre-LN (GPT-2): the residual stream is never normalized
            x_BTD = x_BTD + self.attn(self.norm1(x_BTD), rope, cache)
            return x_BTD + self.mlp(self.norm2(x_BTD))
        # post-LN (Vaswani et al. 2017): normalize after each residual addition
        x_BTD = self.norm1(x_BTD + self.attn(x_BTD, rope, cache))
        return self.norm2(x_BTD + self.mlp(x_BTD))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "the vocabulary size comes from the data before the model is built"
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = _norm(cfg) if cfg.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer) (Radford et al. 2019).
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(m, "residual", False) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx_BT: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) for every position; with a cache, positions continue from cache.pos."""
        B, T = idx_BT.shape
        start = cache.pos if cache is not None else 0
        assert start + T <= self.cfg.block_size, "the caller keeps the context within block_size"
        x_BTD = self.wte(idx_BT)
        rope = None
        if self.wpe is not None:
            x_BTD = x_BTD + self.wpe(torch.arange(start, start + T, device=idx_BT.device))
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        x_BTD = self.drop(x_BTD)
        for block in self.blocks:
            x_BTD = block(x_BTD, rope, cache)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm_f(x_BTD))
