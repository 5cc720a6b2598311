"""State-dict adapters between nextoken's GPT (model/gpt.py) and `transformers` causal LMs, one per
architecture (torchtitan keeps the same beside each model: `state_dict_adapter.py`).

An adapter answers three questions for its architecture, both ways:
- which nextoken options it computes exactly (`check` refuses the rest in one line naming the option);
- the `config.json` of a ModelConfig, and the ModelConfig of a `config.json`;
- the weights: names, layouts (GPT-2's Conv1D is transposed, GPT-NeoX interleaves q, k, v per head) and the
  biases nextoken leaves out (written as zeros; read back as "no biases" when every one is zero).

Exact, not approximate: every mapping here is checked by logit parity in tests/test_interop_hf.py.
Shared facts, verified there: GELU is the exact erf form on both sides ("gelu" in transformers' ACT2FN,
F.gelu's default); RoPE rotates the first half of each head against the second (`rotate_half`); attention
scales by 1/sqrt(head size); LayerNorm and RMSNorm use eps 1e-5 (nextoken's only value).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from nextoken.config import ModelConfig
from nextoken.interop import InteropError

Tensors = dict[str, torch.Tensor]
NORM_EPS = 1e-5  # model/gpt.py: nn.LayerNorm's default, and RMSNorm's eps


def adapter_for_model(m: ModelConfig) -> Adapter:
    """The architecture that computes exactly what a nextoken model with these options computes.
    Raises InteropError naming the option that has no exact equivalent."""
    if m.norm != "pre":
        raise InteropError(f"model.norm {m.norm} (post-LN) has no exact equivalent in transformers' causal LMs; "
                           "only pre-LN runs export")
    layout = (m.pos, m.norm_type, m.mlp)
    for adapter in ADAPTERS.values():
        if adapter.layout == layout:
            return adapter
    known = "; ".join(f"{a.architecture}: model.pos {a.layout[0]}, model.norm_type {a.layout[1]}, "
                      f"model.mlp {a.layout[2]}" for a in ADAPTERS.values())
    raise InteropError(f"model.pos {m.pos} with model.norm_type {m.norm_type} and model.mlp {m.mlp} has no exact "
                       f"equivalent in transformers (exported: {known})")


def adapter_for_hf(hf: dict[str, Any]) -> Adapter:
    """The adapter of a transformers config (as a dict). Raises InteropError for an architecture it has none for."""
    kind = hf.get("model_type")
    if kind not in ADAPTERS:
        raise InteropError(f"model_type {kind!r} ({', '.join(hf.get('architectures') or []) or 'no architectures'}) "
                           f"is not supported; import reads {', '.join(ADAPTERS)}")
    return ADAPTERS[kind]


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise InteropError(msg)


def _zeros_if_none(t: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return t if t is not None else torch.zeros(n, dtype=like.dtype)


def _rope(hf: dict[str, Any]) -> tuple[float, float, str]:
    """(base, rotary fraction, rope type) from either spelling: transformers 5's `rope_parameters` or the
    older `rope_theta` / `rotary_emb_base`, `rotary_pct` / `partial_rotary_factor`, `rope_scaling`."""
    params = dict(hf.get("rope_scaling") or {})
    params.update(hf.get("rope_parameters") or {})
    base = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    frac = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    return float(base), float(frac), kind


def _ratio_for(hidden: int, d: int, mlp: str) -> float:
    """The model.mlp_ratio whose ModelConfig.mlp_hidden is `hidden`; InteropError when none is."""
    ratio = 3 * hidden / (2 * d) if mlp == "swiglu" else hidden / d
    _need(ModelConfig(d_model=d, mlp=mlp, mlp_ratio=ratio).mlp_hidden == hidden,
          f"intermediate_size {hidden} is not a width nextoken's {mlp} MLP has at d_model {d}"
          + (" (SwiGLU widths are multiples of 8)" if mlp == "swiglu" else ""))
    return ratio


def _any_nonzero(tensors) -> bool:
    return any(bool(t.any()) for t in tensors)


class Adapter(ABC):
    architecture: str  # transformers class
    model_type: str
    layout: tuple[str, str, str]  # (model.pos, model.norm_type, model.mlp)
    prefix: str  # of the base model's weights inside the causal LM
    lm_head: str  # the untied output projection's checkpoint name

    # ---- nextoken -> transformers ----
    @abstractmethod
    def config(self, m: ModelConfig) -> dict[str, Any]:
        """config.json's architecture fields (the caller adds token ids and dtype)."""

    @abstractmethod
    def layer_to_hf(self, sd: Tensors, i: int, m: ModelConfig) -> Tensors:
        ...

    @abstractmethod
    def outer_to_hf(self, sd: Tensors, m: ModelConfig) -> Tensors:
        ...

    def to_hf(self, sd: Tensors, m: ModelConfig) -> Tensors:
        """nextoken's state dict (GPT.state_dict()) as the checkpoint names and layouts transformers loads."""
        out = self.outer_to_hf(sd, m)
        for i in range(m.n_layer):
            out.update(self.layer_to_hf(sd, i, m))
        if not m.tie_embeddings:
            out[self.lm_head] = sd["lm_head.weight"]
        return {k: v.contiguous() for k, v in out.items()}

    # ---- transformers -> nextoken ----
    @abstractmethod
    def model_config(self, hf: dict[str, Any], sd: Tensors) -> ModelConfig:
        """The ModelConfig of a transformers config (a dict) and its weights (for the biases); InteropError
        naming the option nextoken cannot represent."""

    @abstractmethod
    def layer_from_hf(self, sd: Tensors, i: int, m: ModelConfig) -> Tensors:
        ...

    @abstractmethod
    def outer_from_hf(self, sd: Tensors, m: ModelConfig) -> Tensors:
        ...

    @abstractmethod
    def hf_names(self, m: ModelConfig) -> set[str]:
        """The checkpoint names `from_hf` reads (biases that may be absent included)."""

    def from_hf(self, sd: Tensors, m: ModelConfig) -> Tensors:
        """A transformers checkpoint's tensors (names normalized by `normalize`) as GPT's state dict."""
        out = self.outer_from_hf(sd, m)
        for i in range(m.n_layer):
            out.update(self.layer_from_hf(sd, i, m))
        out["lm_head.weight"] = out["wte.weight"] if m.tie_embeddings else sd[self.lm_head]
        return out

    def normalize(self, names: set[str]) -> dict[str, str]:
        """Checkpoint name -> canonical name (`prefix` + ...), for files written with or without the base
        model's prefix (the original GPT-2 files have none) or with an older name of the output layer."""
        out = {}
        for n in names:
            out[n] = n if n.startswith(self.prefix) or n == self.lm_head or n in self.aliases else self.prefix + n
            out[n] = self.aliases.get(out[n], out[n])
        return out

    aliases: dict[str, str] = {}
    # buffers some checkpoints carry (causal masks, RoPE frequencies): recomputed, never weights
    ignored = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


class GPT2(Adapter):
    architecture, model_type = "GPT2LMHeadModel", "gpt2"
    layout = ("learned", "layernorm", "gelu")
    prefix, lm_head = "transformer.", "lm_head.weight"

    def config(self, m):
        return {"n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.d_model, "n_positions": m.block_size,
                "n_inner": m.mlp_hidden, "vocab_size": m.vocab_size, "activation_function": "gelu",
                "layer_norm_epsilon": NORM_EPS, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "resid_pdrop": m.dropout, "embd_pdrop": m.dropout,
                "attn_pdrop": m.dropout, "tie_word_embeddings": m.tie_embeddings}

    def outer_to_hf(self, sd, m):
        p, D = self.prefix, m.d_model
        return {f"{p}wte.weight": sd["wte.weight"], f"{p}wpe.weight": sd["wpe.weight"],
                f"{p}ln_f.weight": sd["norm_f.weight"],
                f"{p}ln_f.bias": _zeros_if_none(sd.get("norm_f.bias"), D, sd["norm_f.weight"])}

    def layer_to_hf(self, sd, i, m):
        a, h, D, F = f"blocks.{i}.", f"{self.prefix}h.{i}.", m.d_model, m.mlp_hidden
        w = sd[f"{a}norm1.weight"]
        out = {}
        for ours, theirs, n in (("norm1", "ln_1", D), ("norm2", "ln_2", D)):
            out[f"{h}{theirs}.weight"] = sd[f"{a}{ours}.weight"]
            out[f"{h}{theirs}.bias"] = _zeros_if_none(sd.get(f"{a}{ours}.bias"), n, w)
        for ours, theirs, n in (("attn.qkv", "attn.c_attn", 3 * D), ("attn.proj", "attn.c_proj", D),
                                ("mlp.fc", "mlp.c_fc", F), ("mlp.proj", "mlp.c_proj", D)):
            out[f"{h}{theirs}.weight"] = sd[f"{a}{ours}.weight"].t()  # Conv1D stores (in, out)
            out[f"{h}{theirs}.bias"] = _zeros_if_none(sd.get(f"{a}{ours}.bias"), n, w)
        return out

    def model_config(self, hf, sd):
        d = hf["n_embd"]
        act = hf.get("activation_function", "gelu_new")
        _need(act == "gelu", f"activation_function {act!r}: nextoken's GELU is the exact (erf) one, \"gelu\"")
        _need(hf.get("layer_norm_epsilon", NORM_EPS) == NORM_EPS,
              f"layer_norm_epsilon {hf.get('layer_norm_epsilon')}: nextoken's LayerNorm uses {NORM_EPS}")
        _need(hf.get("scale_attn_weights", True), "scale_attn_weights false: nextoken scales by 1/sqrt(head size)")
        _need(not hf.get("scale_attn_by_inverse_layer_idx", False),
              "scale_attn_by_inverse_layer_idx true: nextoken scales every layer alike")
        _need(not hf.get("add_cross_attention", False), "add_cross_attention true: nextoken is decoder-only")
        hidden = hf.get("n_inner") or 4 * d
        biases = [t for k, t in sd.items() if k.endswith(".bias") and k.startswith(self.prefix)]
        return ModelConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], d_model=d, block_size=hf["n_positions"],
                           vocab_size=hf["vocab_size"], norm="pre", norm_type="layernorm", pos="learned",
                           mlp="gelu", mlp_ratio=_ratio_for(hidden, d, "gelu"),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)), bias=_any_nonzero(biases))

    def hf_names(self, m):
        p = self.prefix
        names = {f"{p}wte.weight", f"{p}wpe.weight", f"{p}ln_f.weight", f"{p}ln_f.bias"}
        for i in range(m.n_layer):
            for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                names |= {f"{p}h.{i}.{part}.weight", f"{p}h.{i}.{part}.bias"}
        return names | ({self.lm_head} if not m.tie_embeddings else set())

    def outer_from_hf(self, sd, m):
        p = self.prefix
        out = {"wte.weight": sd[f"{p}wte.weight"], "wpe.weight": sd[f"{p}wpe.weight"],
               "norm_f.weight": sd[f"{p}ln_f.weight"]}
        if m.bias:
            out["norm_f.bias"] = sd[f"{p}ln_f.bias"]
        return out

    def layer_from_hf(self, sd, i, m):
        a, h = f"blocks.{i}.", f"{self.prefix}h.{i}."
        out = {}
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[f"{a}{ours}.weight"] = sd[f"{h}{theirs}.weight"]
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                             ("mlp.proj", "mlp.c_proj")):
            out[f"{a}{ours}.weight"] = sd[f"{h}{theirs}.weight"].t()
        if m.bias:
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv", "attn.c_attn"),
                                 ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                out[f"{a}{ours}.bias"] = sd[f"{h}{theirs}.bias"]
        return out


class Llama(Adapter):
    architecture, model_type = "LlamaForCausalLM", "llama"
    layout = ("rope", "rmsnorm", "swiglu")
    prefix, lm_head = "model.", "lm_head.weight"
    _linears = (("q_proj", "self_attn"), ("k_proj", "self_attn"), ("v_proj", "self_attn"), ("o_proj", "self_attn"),
                ("gate_proj", "mlp"), ("up_proj", "mlp"), ("down_proj", "mlp"))

    def config(self, m):
        return {"num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "num_key_value_heads": m.n_head,
                "hidden_size": m.d_model, "head_dim": m.d_model // m.n_head, "intermediate_size": m.mlp_hidden,
                "max_position_embeddings": m.block_size, "vocab_size": m.vocab_size, "hidden_act": "silu",
                "rms_norm_eps": NORM_EPS, "rope_theta": m.rope_base, "rope_scaling": None,
                "attention_bias": m.bias, "mlp_bias": m.bias, "attention_dropout": m.dropout,
                "pretraining_tp": 1, "tie_word_embeddings": m.tie_embeddings}

    def _pairs(self, i: int, m: ModelConfig):
        """(nextoken name, checkpoint name, rows of nextoken's tensor) of layer i's linear layers."""
        a, h, D = f"blocks.{i}.", f"{self.prefix}layers.{i}.", m.d_model
        qkv = f"{a}attn.qkv"
        return [(qkv, f"{h}self_attn.q_proj", slice(0, D)), (qkv, f"{h}self_attn.k_proj", slice(D, 2 * D)),
                (qkv, f"{h}self_attn.v_proj", slice(2 * D, 3 * D)), (f"{a}attn.proj", f"{h}self_attn.o_proj", None),
                (f"{a}mlp.gate", f"{h}mlp.gate_proj", None), (f"{a}mlp.fc", f"{h}mlp.up_proj", None),
                (f"{a}mlp.proj", f"{h}mlp.down_proj", None)]

    def outer_to_hf(self, sd, m):
        return {f"{self.prefix}embed_tokens.weight": sd["wte.weight"], f"{self.prefix}norm.weight": sd["norm_f.weight"]}

    def layer_to_hf(self, sd, i, m):
        a, h = f"blocks.{i}.", f"{self.prefix}layers.{i}."
        out = {f"{h}input_layernorm.weight": sd[f"{a}norm1.weight"],
               f"{h}post_attention_layernorm.weight": sd[f"{a}norm2.weight"]}
        for ours, theirs, rows in self._pairs(i, m):
            for kind in ("weight", "bias") if m.bias else ("weight",):
                t = sd[f"{ours}.{kind}"]
                out[f"{theirs}.{kind}"] = t[rows] if rows is not None else t
        return out

    def model_config(self, hf, sd):
        d, H = hf["hidden_size"], hf["num_attention_heads"]
        base, frac, kind = _rope(hf)
        act = hf.get("hidden_act", "silu")
        _need(act == "silu", f"hidden_act {act!r}: nextoken's SwiGLU uses silu")
        kv = hf.get("num_key_value_heads") or H
        _need(kv == H, f"num_key_value_heads {kv} (grouped-query attention): nextoken has {H} key/value heads "
                       "for its query heads")
        _need((hf.get("head_dim") or d // H) == d // H, f"head_dim {hf.get('head_dim')}: nextoken's head size is "
                                                         f"hidden_size / num_attention_heads ({d // H})")
        _need(kind == "default" and frac == 1.0, f"rope_type {kind!r} with partial_rotary_factor {frac}: nextoken "
                                                 "rotates whole heads without scaling")
        eps = hf.get("rms_norm_eps", 1e-6)
        _need(eps == NORM_EPS, f"rms_norm_eps {eps}: nextoken's RMSNorm uses {NORM_EPS}")
        biases = [t for k, t in sd.items() if k.endswith(".bias")]
        return ModelConfig(n_layer=hf["num_hidden_layers"], n_head=H, d_model=d,
                           block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"], norm="pre",
                           norm_type="rmsnorm", pos="rope", mlp="swiglu",
                           mlp_ratio=_ratio_for(hf["intermediate_size"], d, "swiglu"),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)), bias=_any_nonzero(biases),
                           rope_base=base)

    def hf_names(self, m):
        names = {f"{self.prefix}embed_tokens.weight", f"{self.prefix}norm.weight"}
        for i in range(m.n_layer):
            h = f"{self.prefix}layers.{i}."
            names |= {f"{h}input_layernorm.weight", f"{h}post_attention_layernorm.weight"}
            for _, theirs, _ in self._pairs(i, m):
                names |= {f"{theirs}.weight", f"{theirs}.bias"}
        return names | ({self.lm_head} if not m.tie_embeddings else set())

    def outer_from_hf(self, sd, m):
        return {"wte.weight": sd[f"{self.prefix}embed_tokens.weight"], "norm_f.weight": sd[f"{self.prefix}norm.weight"]}

    def layer_from_hf(self, sd, i, m):
        a, h = f"blocks.{i}.", f"{self.prefix}layers.{i}."
        out = {f"{a}norm1.weight": sd[f"{h}input_layernorm.weight"],
               f"{a}norm2.weight": sd[f"{h}post_attention_layernorm.weight"]}
        parts: dict[str, list[torch.Tensor]] = {}
        for ours, theirs, _ in self._pairs(i, m):
            w = sd[f"{theirs}.weight"]
            parts.setdefault(f"{ours}.weight", []).append(w)
            if m.bias:
                parts.setdefault(f"{ours}.bias", []).append(_zeros_if_none(sd.get(f"{theirs}.bias"), w.shape[0], w))
        return out | {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in parts.items()}


class GPTNeoX(Adapter):
    """GPT-NeoX with full rotary (rotary_pct 1) and sequential residuals (use_parallel_residual false) is
    nextoken's RoPE + LayerNorm + GELU model; its fused query_key_value holds q, k, v interleaved per head."""

    architecture, model_type = "GPTNeoXForCausalLM", "gpt_neox"
    layout = ("rope", "layernorm", "gelu")
    prefix, lm_head = "gpt_neox.", "embed_out.weight"
    aliases = {"gpt_neox.lm_head.weight": "embed_out.weight", "lm_head.weight": "embed_out.weight"}

    def config(self, m):
        return {"num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "hidden_size": m.d_model,
                "intermediate_size": m.mlp_hidden, "max_position_embeddings": m.block_size,
                "vocab_size": m.vocab_size, "hidden_act": "gelu", "layer_norm_eps": NORM_EPS,
                "rotary_pct": 1.0, "rotary_emb_base": m.rope_base, "rope_theta": m.rope_base,
                "use_parallel_residual": False, "attention_bias": True, "attention_dropout": m.dropout,
                "hidden_dropout": m.dropout, "tie_word_embeddings": m.tie_embeddings}

    @staticmethod
    def _interleave(t: torch.Tensor, H: int) -> torch.Tensor:
        # rows [q heads | k heads | v heads] -> [q0 k0 v0 | q1 k1 v1 | ...], each head's K rows kept together
        return t.reshape(3, H, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    @staticmethod
    def _deinterleave(t: torch.Tensor, H: int) -> torch.Tensor:
        return t.reshape(H, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    def outer_to_hf(self, sd, m):
        p = self.prefix
        return {f"{p}embed_in.weight": sd["wte.weight"], f"{p}final_layer_norm.weight": sd["norm_f.weight"],
                f"{p}final_layer_norm.bias": _zeros_if_none(sd.get("norm_f.bias"), m.d_model, sd["norm_f.weight"])}

    _parts = (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"),
              ("attn.qkv", "attention.query_key_value"), ("attn.proj", "attention.dense"),
              ("mlp.fc", "mlp.dense_h_to_4h"), ("mlp.proj", "mlp.dense_4h_to_h"))

    def layer_to_hf(self, sd, i, m):
        a, h = f"blocks.{i}.", f"{self.prefix}layers.{i}."
        out = {}
        for ours, theirs in self._parts:
            w = sd[f"{a}{ours}.weight"]
            b = _zeros_if_none(sd.get(f"{a}{ours}.bias"), w.shape[0], w)
            if ours == "attn.qkv":
                w, b = self._interleave(w, m.n_head), self._interleave(b, m.n_head)
            out[f"{h}{theirs}.weight"], out[f"{h}{theirs}.bias"] = w, b
        return out

    def model_config(self, hf, sd):
        d = hf["hidden_size"]
        base, frac, kind = _rope(hf)
        _need(not hf.get("use_parallel_residual", True),
              "use_parallel_residual true: nextoken's blocks add attention, then the MLP (sequential residuals)")
        _need(frac == 1.0, f"rotary_pct {frac}: nextoken rotates whole heads (rotary_pct 1.0)")
        _need(kind == "default", f"rope_type {kind!r}: nextoken's RoPE is unscaled")
        act = hf.get("hidden_act", "gelu")
        _need(act == "gelu", f"hidden_act {act!r}: nextoken's GELU is the exact (erf) one, \"gelu\"")
        eps = hf.get("layer_norm_eps", NORM_EPS)
        _need(eps == NORM_EPS, f"layer_norm_eps {eps}: nextoken's LayerNorm uses {NORM_EPS}")
        biases = [t for k, t in sd.items() if k.endswith(".bias") and k.startswith(self.prefix)]
        return ModelConfig(n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=d,
                           block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
                           norm="pre", norm_type="layernorm", pos="rope", mlp="gelu",
                           mlp_ratio=_ratio_for(hf["intermediate_size"], d, "gelu"),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)), bias=_any_nonzero(biases),
                           rope_base=base)

    def hf_names(self, m):
        p = self.prefix
        names = {f"{p}embed_in.weight", f"{p}final_layer_norm.weight", f"{p}final_layer_norm.bias"}
        for i in range(m.n_layer):
            for _, theirs in self._parts:
                names |= {f"{p}layers.{i}.{theirs}.weight", f"{p}layers.{i}.{theirs}.bias"}
        return names | ({self.lm_head} if not m.tie_embeddings else set())

    def outer_from_hf(self, sd, m):
        p = self.prefix
        out = {"wte.weight": sd[f"{p}embed_in.weight"], "norm_f.weight": sd[f"{p}final_layer_norm.weight"]}
        if m.bias:
            out["norm_f.bias"] = sd[f"{p}final_layer_norm.bias"]
        return out

    def layer_from_hf(self, sd, i, m):
        a, h = f"blocks.{i}.", f"{self.prefix}layers.{i}."
        out = {}
        for ours, theirs in self._parts:
            w = sd[f"{h}{theirs}.weight"]
            b = _zeros_if_none(sd.get(f"{h}{theirs}.bias"), w.shape[0], w)  # attention_bias false leaves none
            if ours == "attn.qkv":
                w, b = self._deinterleave(w, m.n_head), self._deinterleave(b, m.n_head)
            out[f"{a}{ours}.weight"] = w
            if m.bias:
                out[f"{a}{ours}.bias"] = b
        return out


ADAPTERS: dict[str, Adapter] = {a.model_type: a for a in (GPT2(), Llama(), GPTNeoX())}

