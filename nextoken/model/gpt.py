"""A decoder-only transformer (GPT-2 family, with the common modern options).

Shape suffixes: B batch, T time (positions), D d_model, H query heads, J key/value heads (H, or fewer
with grouped-query attention), K head_dim, Q = H·K (d_model unless model.head_size sets K), V vocab,
F MLP hidden width, S positions held in the KV-cache, G = H + J query and key heads side by side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nextoken.config import ModelConfig


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm_type == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(K: int, T: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's rotation angles (Su et al. 2021, eq. 34), each (T, K/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, K, 2, device=device, dtype=torch.float32) / K)
    angles_TK = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
    return angles_TK.cos(), angles_TK.sin()


def apply_rope(x_BHTK: torch.Tensor, cos_TK: torch.Tensor, sin_TK: torch.Tensor) -> torch.Tensor:
    R = 2 * cos_TK.size(-1)
    if R < x_BHTK.size(-1):  # partial rotary (GPT-NeoX, Black et al. 2022): the rest of each head passes as is
        return torch.cat([apply_rope(x_BHTK[..., :R], cos_TK, sin_TK), x_BHTK[..., R:]], dim=-1)
    # Rotate pairs (first half, second half) of each head's channels: (x1 cos - x2 sin, x2 cos + x1 sin),
    # written as x * [cos, cos] + [x2, x1] * [-sin, sin]: the same roundings (negation is exact, addition
    # commutes), in four passes over x instead of seven (the two small tables cost nothing).
    x = x_BHTK.float()
    x1, x2 = x.chunk(2, dim=-1)
    out = x * torch.cat([cos_TK, cos_TK], dim=-1) + torch.cat([x2, x1], dim=-1) * torch.cat([-sin_TK, sin_TK], dim=-1)
    return out.type_as(x_BHTK)


class KVCache:
    """Keys and values of the positions seen so far, per layer: each new token costs one position. Room for
    positions doubles as they come, up to block_size (an imported model's 32k context costs memory only when
    used)."""

    def __init__(self, cfg: ModelConfig, batch: int, device, dtype):
        J, K, S = cfg.kv_heads, cfg.head_dim, min(cfg.block_size, 1024)  # the key/value heads only: GQA's saving
        self.k = [torch.zeros(batch, J, S, K, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(batch, J, S, K, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos, self.block_size = 0, cfg.block_size

    def append(self, layer: int, k_BJTK: torch.Tensor, v_BJTK: torch.Tensor):
        end = self.pos + k_BJTK.size(2)
        S = self.k[layer].size(2)
        if end > S:
            more = min(max(end, 2 * S), self.block_size) - S
            self.k[layer], self.v[layer] = (torch.cat([c, c.new_zeros(*c.shape[:2], more, c.size(3))], dim=2)
                                            for c in (self.k[layer], self.v[layer]))
        self.k[layer][:, :, self.pos:end] = k_BJTK
        self.v[layer][:, :, self.pos:end] = v_BJTK
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        H, J, K = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (H + 2 * J) * K, bias=cfg.bias or cfg.qkv_bias)
        self.proj = nn.Linear(H * K, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True
        if cfg.qk_norm:  # per head, before RoPE (Dehghani et al. 2023, ViT-22B; Qwen3)
            self.q_norm, self.k_norm = nn.RMSNorm(K, eps=cfg.norm_eps), nn.RMSNorm(K, eps=cfg.norm_eps)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def qkv_heads(self, x_BTD, rope=None):
        """Queries (B, H, T, K), keys and values (B, J, T, K) of x, normalized and rotated: the one place
        they are computed."""
        B, T, _ = x_BTD.shape
        H, J, K = self.cfg.n_head, self.cfg.kv_heads, self.cfg.head_dim
        # queries and keys side by side as G = H + J heads: RoPE rotates both in one pass (half the elementwise
        # ops; the same arithmetic per element, so the same results). One split, not slices: the backward of a
        # slice zero-fills a tensor of the whole qkv's size, a split's just concatenates.
        qk_BTGK, v_BTJK = self.qkv(x_BTD).view(B, T, H + 2 * J, K).split([H + J, J], dim=2)
        qk_BGTK, v_BJTK = qk_BTGK.transpose(1, 2), v_BTJK.transpose(1, 2)
        if self.cfg.qk_norm:
            q_BHTK, k_BJTK = qk_BGTK.split([H, J], dim=1)
            qk_BGTK = torch.cat([self.q_norm(q_BHTK), self.k_norm(k_BJTK)], dim=1)
        if rope is not None:
            qk_BGTK = apply_rope(qk_BGTK, *rope)
        q_BHTK, k_BJTK = qk_BGTK.split([H, J], dim=1)
        return q_BHTK, k_BJTK, v_BJTK

    def forward(self, x_BTD, rope=None, cache: KVCache | None = None, mask_B1TT=None):
        B, T, _ = x_BTD.shape
        q_BHTK, k_BJTK, v_BJTK = self.qkv_heads(x_BTD, rope)
        mask = mask_B1TT  # None, or attention kept inside documents (GPT.forward)
        causal = self.cfg.attention == "causal"  # bidirectional: the masked-token objective (BERT)
        if cache is not None:
            k_BJTK, v_BJTK = cache.append(self.layer, k_BJTK, v_BJTK)
            if cache.pos > 0:  # queries sit at positions pos..pos+T-1 of the S cached keys
                causal = False
                if T > 1:
                    S = k_BJTK.size(2)
                    mask = torch.ones(T, S, dtype=torch.bool, device=x_BTD.device).tril(diagonal=S - T)
        drop = self.cfg.dropout if self.training else 0.0
        # grouped-query attention (Ainslie et al. 2023): query head h reads key/value head h // (H / J)
        y_BHTK = F.scaled_dot_product_attention(q_BHTK, k_BJTK, v_BJTK, attn_mask=mask, dropout_p=drop,
                                                is_causal=causal and mask is None,
                                                enable_gqa=self.cfg.kv_heads != self.cfg.n_head)
        y_BTQ = y_BHTK.transpose(1, 2).contiguous().view(B, T, -1)
        return self.resid_drop(self.proj(y_BTQ))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.approximate = "tanh" if cfg.gelu == "tanh" else "none"
        F_ = cfg.mlp_width
        if self.swiglu:
            self.gate = nn.Linear(cfg.d_model, F_, bias=cfg.bias)
        self.fc = nn.Linear(cfg.d_model, F_, bias=cfg.bias)
        self.proj = nn.Linear(F_, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x_BTD):
        if self.swiglu:
            h_BTF = F.silu(self.gate(x_BTD)) * self.fc(x_BTD)
        else:
            h_BTF = F.gelu(self.fc(x_BTD), approximate=self.approximate)
        return self.drop(self.proj(h_BTF))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.pre, self.parallel = cfg.norm == "pre", cfg.parallel_residual
        self.norm1, self.norm2 = _norm(cfg), _norm(cfg)
        self.attn, self.mlp = Attention(cfg, layer), MLP(cfg)

    def forward(self, x_BTD, rope=None, cache=None, mask_B1TT=None):
        if self.parallel:  # GPT-J / GPT-NeoX (Black et al. 2022, §2.1): both sublayers read the block's input
            a_BTD = self.attn(self.norm1(x_BTD), rope, cache, mask_B1TT)
            return self.mlp(self.norm2(x_BTD)) + a_BTD + x_BTD  # transformers' order of the additions
        if self.pre:  # pre-LN (GPT-2): the residual stream is never normalized
            x_BTD = x_BTD + self.attn(self.norm1(x_BTD), rope, cache, mask_B1TT)
            return x_BTD + self.mlp(self.norm2(x_BTD))
        # post-LN (Vaswani et al. 2017): normalize after each residual addition
        x_BTD = self.norm1(x_BTD + self.attn(x_BTD, rope, cache, mask_B1TT))
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
            cos, sin = rope_tables(cfg.rotary_dim, cfg.block_size, cfg.rope_base)
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

    def forward(self, idx_BT: torch.Tensor, cache: KVCache | None = None, doc_BT: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Logits (B, T, V) for every position; with a cache, positions continue from cache.pos. `doc_BT`, each
        position's document number, keeps attention inside documents (block-causal; positions are not reset)."""
        B, T = idx_BT.shape
        assert doc_BT is None or cache is None, "document masks are for training and evaluation windows"
        start = cache.pos if cache is not None else 0
        assert start + T <= self.cfg.block_size, "the caller keeps the context within block_size"
        x_BTD = self.wte(idx_BT)
        rope = None
        if self.wpe is not None:
            x_BTD = x_BTD + self.wpe(torch.arange(start, start + T, device=idx_BT.device))
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        x_BTD = self.drop(x_BTD)
        mask_B1TT = None
        if doc_BT is not None:
            mask_B1TT = (doc_BT[:, :, None] == doc_BT[:, None, :]).tril()[:, None]
        for block in self.blocks:
            x_BTD = block(x_BTD, rope, cache, mask_B1TT)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm_f(x_BTD))
