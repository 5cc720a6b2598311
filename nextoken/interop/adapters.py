"""State-dict adapters between nextoken's GPT (model/gpt.py) and `transformers` causal LMs, one per
architecture (torchtitan keeps the same beside each model: `state_dict_adapter.py`).

An adapter answers three questions for its architecture, both ways:
- which nextoken options it computes exactly (`refusal` names the first option it cannot);
- the `config.json` of a ModelConfig, and the ModelConfig of a `config.json`;
- the weights: names, layouts (GPT-2's Conv1D is transposed, GPT-NeoX interleaves q, k, v per head) and the
  biases nextoken leaves out (written as zeros; read back as "no biases" when every one is zero).

Exact, not approximate: every mapping here is checked by logit parity in tests/test_interop_hf.py.
Shared facts, verified there: RoPE rotates the first half of each rotated slice against the second
(`rotate_half`; GPT-NeoX rotates only the first rotary_pct of each head); grouped-query attention gives query
head h the key/value head h // (H / J) (`repeat_kv`); attention scales by 1/sqrt(head size); GELU "gelu" is the
erf form, "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" the tanh one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from nextoken.config import ModelConfig
from nextoken.interop import InteropError

Tensors = dict[str, torch.Tensor]
_GELU_TO_HF = {"exact": "gelu", "tanh": "gelu_new"}  # gelu_new: GPT-2's own name
_GELU_FROM_HF = {"gelu": "exact", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu_pytorch_tanh": "tanh"}
# Families transformers has that nextoken does not compute, each with the one detail that differs.
_REFUSED = {
    "olmo2": "OLMo-2 normalizes each sublayer's output (x + norm(attn(x))) and its q/k norms span all heads "
             "together; nextoken normalizes sublayer inputs, q/k per head",
    "mistral": "Mistral's sliding-window attention is not nextoken's full causal attention",
}


def adapter_for_model(m: ModelConfig) -> Adapter:
    """The architecture that computes exactly what a nextoken model with these options computes.
    Raises InteropError naming the option that has no exact equivalent."""
    if m.norm != "pre":
        raise InteropError(f"model.norm {m.norm} (post-LN) has no exact equivalent in transformers' causal LMs; "
                           "only pre-LN runs export")
    layout = (m.pos, m.norm_type, m.mlp)
    candidates = [a for a in EXPORT_ORDER if a.layout == layout and a.claims(m)]
    for adapter in candidates:
        if adapter.refusal(m) is None:
            return adapter
    if candidates:
        raise InteropError(candidates[0].refusal(m))
    known = "; ".join(f"{a.architecture}: model.pos {a.layout[0]}, model.norm_type {a.layout[1]}, "
                      f"model.mlp {a.layout[2]}" for a in ADAPTERS.values())
    raise InteropError(f"model.pos {m.pos} with model.norm_type {m.norm_type} and model.mlp {m.mlp} has no exact "
                       f"equivalent in transformers (exported: {known})")


def adapter_for_hf(hf: dict[str, Any]) -> Adapter:
    """The adapter of a transformers config (as a dict). Raises InteropError for an architecture it has none for."""
    kind = hf.get("model_type")
    if kind in _REFUSED:
        raise InteropError(f"model_type {kind!r} is not supported: {_REFUSED[kind]}")
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


def _rope_config(m: ModelConfig) -> dict[str, Any]:
    """Both spellings of the RoPE fields: transformers 5 reads `rope_parameters`, 4.x `rope_theta`."""
    params = {"rope_type": "default", "rope_theta": m.rope_base}
    if m.rotary_fraction != 1.0:
        params["partial_rotary_factor"] = m.rotary_fraction
    return {"rope_parameters": params, "rope_theta": m.rope_base}


def _gelu(act: str, key: str) -> str:
    _need(act in _GELU_FROM_HF, f"{key} {act!r}: nextoken's GELU is the exact (\"gelu\") or the tanh one "
                                "(\"gelu_new\", \"gelu_pytorch_tanh\")")
    return _GELU_FROM_HF[act]


def _any_nonzero(tensors) -> bool:
    return any(bool(t.any()) for t in tensors)


def _biases(sd: Tensors, prefix: str, qkv_parts: tuple[str, ...]) -> tuple[bool, bool]:
    """(model.bias, model.qkv_bias) of checkpoint tensors: biases that are all zero are no biases; nonzero ones
    only on the query, key and value projections (names ending in one of `qkv_parts`) are qkv_bias."""
    qkv = [t for k, t in sd.items() if k.startswith(prefix) and k.endswith(".bias") and
           k.removesuffix(".bias").endswith(qkv_parts)]
    rest = [t for k, t in sd.items() if k.startswith(prefix) and k.endswith(".bias") and
            not k.removesuffix(".bias").endswith(qkv_parts)]
    bias = _any_nonzero(rest)
    return bias, not bias and _any_nonzero(qkv)


class Adapter(ABC):
    architecture: str  # transformers class
    model_type: str
    layout: tuple[str, str, str]  # (model.pos, model.norm_type, model.mlp)
    prefix: str  # of the base model's weights inside the causal LM
    lm_head: str  # the untied output projection's checkpoint name

    def claims(self, m: ModelConfig) -> bool:
        """Whether `m` has what sets this family apart within its layout (Qwen3: the q/k norm)."""
        return True

    def refusal(self, m: ModelConfig) -> str | None:
        """Why this architecture cannot compute what `m` computes (one line naming the option), or None."""
        for option, ok, why in self.options(m):
            if not ok:
                return f"{option}: {why} ({self.architecture})"
        return None

    @abstractmethod
    def options(self, m: ModelConfig) -> list[tuple[str, bool, str]]:
        """(option as set in m, whether this architecture has it, what it has instead)."""

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


def _mha_only(m: ModelConfig, family: str) -> list[tuple[str, bool, str]]:
    """The options of a family with one key/value head per query head, d_model-wide heads and no q/k norm."""
    return [(f"model.n_kv_head {m.n_kv_head}", m.kv_heads == m.n_head, f"{family} has a key/value head per query "
             "head"),
            (f"model.head_size {m.head_size}", m.head_dim * m.n_head == m.d_model,
             f"{family}'s heads are d_model / n_head wide"),
            ("model.qk_norm true", not m.qk_norm, f"{family} has no query/key norm")]


class GPT2(Adapter):
    architecture, model_type = "GPT2LMHeadModel", "gpt2"
    layout = ("learned", "layernorm", "gelu")
    prefix, lm_head = "transformer.", "lm_head.weight"
    _parts = (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
              ("mlp.proj", "mlp.c_proj"))

    def options(self, m):
        return _mha_only(m, "GPT-2") + [("model.parallel_residual true", not m.parallel_residual,
                                         "GPT-2's blocks add attention, then the MLP")]

    def config(self, m):
        return {"n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.d_model, "n_positions": m.block_size,
                "n_inner": m.mlp_width, "vocab_size": m.vocab_size, "activation_function": _GELU_TO_HF[m.gelu],
                "layer_norm_epsilon": m.norm_eps, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "resid_pdrop": m.dropout, "embd_pdrop": m.dropout,
                "attn_pdrop": m.dropout, "tie_word_embeddings": m.tie_embeddings}

    def outer_to_hf(self, sd, m):
        p, D = self.prefix, m.d_model
        return {f"{p}wte.weight": sd["wte.weight"], f"{p}wpe.weight": sd["wpe.weight"],
                f"{p}ln_f.weight": sd["norm_f.weight"],
                f"{p}ln_f.bias": _zeros_if_none(sd.get("norm_f.bias"), D, sd["norm_f.weight"])}

    def layer_to_hf(self, sd, i, m):
        a, h = f"blocks.{i}.", f"{self.prefix}h.{i}."
        out = {}
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            w = sd[f"{a}{ours}.weight"]
            out[f"{h}{theirs}.weight"] = w
            out[f"{h}{theirs}.bias"] = _zeros_if_none(sd.get(f"{a}{ours}.bias"), len(w), w)
        for ours, theirs in self._parts:
            w = sd[f"{a}{ours}.weight"]
            out[f"{h}{theirs}.weight"] = w.t()  # Conv1D stores (in, out)
            out[f"{h}{theirs}.bias"] = _zeros_if_none(sd.get(f"{a}{ours}.bias"), w.shape[0], w)
        return out

    def model_config(self, hf, sd):
        d = hf["n_embd"]
        gelu = _gelu(hf.get("activation_function", "gelu_new"), "activation_function")
        _need(hf.get("scale_attn_weights", True), "scale_attn_weights false: nextoken scales by 1/sqrt(head size)")
        _need(not hf.get("scale_attn_by_inverse_layer_idx", False),
              "scale_attn_by_inverse_layer_idx true: nextoken scales every layer alike")
        _need(not hf.get("add_cross_attention", False), "add_cross_attention true: nextoken is decoder-only")
        bias, qkv_bias = _biases(sd, self.prefix, ("attn.c_attn",))
        return ModelConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], d_model=d, block_size=hf["n_positions"],
                           vocab_size=hf["vocab_size"], norm="pre", norm_type="layernorm", pos="learned",
                           mlp="gelu", mlp_hidden=hf.get("n_inner") or 4 * d, gelu=gelu,
                           norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)), bias=bias, qkv_bias=qkv_bias)

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
            if m.bias:
                out[f"{a}{ours}.bias"] = sd[f"{h}{theirs}.bias"]
        for ours, theirs in self._parts:
            out[f"{a}{ours}.weight"] = sd[f"{h}{theirs}.weight"].t()
            if m.bias or (m.qkv_bias and ours == "attn.qkv"):
                out[f"{a}{ours}.bias"] = sd[f"{h}{theirs}.bias"]
        return out


class GPTNeoX(Adapter):
    """GPT-NeoX / Pythia: RoPE on the first rotary_pct of each head, parallel or sequential residuals; its fused
    query_key_value holds q, k, v interleaved per head."""

    architecture, model_type = "GPTNeoXForCausalLM", "gpt_neox"
    layout = ("rope", "layernorm", "gelu")
    prefix, lm_head = "gpt_neox.", "embed_out.weight"
    aliases = {"gpt_neox.lm_head.weight": "embed_out.weight", "lm_head.weight": "embed_out.weight"}
    _parts = (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"),
              ("attn.qkv", "attention.query_key_value"), ("attn.proj", "attention.dense"),
              ("mlp.fc", "mlp.dense_h_to_4h"), ("mlp.proj", "mlp.dense_4h_to_h"))

    def options(self, m):
        return _mha_only(m, "GPT-NeoX")

    def config(self, m):
        return {"num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "hidden_size": m.d_model,
                "intermediate_size": m.mlp_width, "max_position_embeddings": m.block_size,
                "vocab_size": m.vocab_size, "hidden_act": _GELU_TO_HF[m.gelu], "layer_norm_eps": m.norm_eps,
                **_rope_config(m), "rotary_pct": m.rotary_fraction, "rotary_emb_base": m.rope_base,
                "use_parallel_residual": m.parallel_residual, "attention_bias": True,
                "attention_dropout": m.dropout, "hidden_dropout": m.dropout, "tie_word_embeddings": m.tie_embeddings}

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
        _need(kind == "default", f"rope_type {kind!r}: nextoken's RoPE is unscaled")
        gelu = _gelu(hf.get("hidden_act", "gelu"), "hidden_act")
        bias, qkv_bias = _biases(sd, self.prefix, ("attention.query_key_value",))
        return ModelConfig(n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=d,
                           block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
                           norm="pre", norm_type="layernorm", pos="rope", mlp="gelu", gelu=gelu,
                           mlp_hidden=hf["intermediate_size"], norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
                           parallel_residual=bool(hf.get("use_parallel_residual", True)), rotary_fraction=frac,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)), bias=bias, qkv_bias=qkv_bias,
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
            if m.bias or (m.qkv_bias and ours == "attn.qkv"):
                out[f"{a}{ours}.bias"] = b
        return out


class Llama(Adapter):
    """Llama (and SmolLM, TinyLlama, Llama 3 without RoPE scaling): RMSNorm, SwiGLU, RoPE, grouped-query
    attention; `attention_bias` puts biases on q, k, v and o, `mlp_bias` on the MLP."""

    architecture, model_type = "LlamaForCausalLM", "llama"
    layout = ("rope", "rmsnorm", "swiglu")
    prefix, lm_head = "model.", "lm_head.weight"

    def claims(self, m):
        return not m.qk_norm

    def options(self, m):
        return self._rope_options(m)

    def _rope_options(self, m):
        return [(f"model.rotary_fraction {m.rotary_fraction}", m.rotary_fraction == 1.0,
                 "its RoPE rotates whole heads"),
                ("model.parallel_residual true", not m.parallel_residual, "its blocks add attention, then the MLP")]

    def config(self, m):
        return {"num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads,
                "hidden_size": m.d_model, "head_dim": m.head_dim, "intermediate_size": m.mlp_width,
                "max_position_embeddings": m.block_size, "vocab_size": m.vocab_size, "hidden_act": "silu",
                "rms_norm_eps": m.norm_eps, **_rope_config(m), "rope_scaling": None,
                "attention_bias": m.bias or m.qkv_bias, "mlp_bias": m.bias, "attention_dropout": m.dropout,
                "pretraining_tp": 1, "tie_word_embeddings": m.tie_embeddings}

    def _pairs(self, i: int, m: ModelConfig):
        """(nextoken name, checkpoint name, rows of nextoken's tensor) of layer i's linear layers."""
        a, h = f"blocks.{i}.", f"{self.prefix}layers.{i}."
        Q, KV, qkv = m.n_head * m.head_dim, m.kv_heads * m.head_dim, f"{a}attn.qkv"
        return [(qkv, f"{h}self_attn.q_proj", slice(0, Q)), (qkv, f"{h}self_attn.k_proj", slice(Q, Q + KV)),
                (qkv, f"{h}self_attn.v_proj", slice(Q + KV, Q + 2 * KV)),
                (f"{a}attn.proj", f"{h}self_attn.o_proj", None),
                (f"{a}mlp.gate", f"{h}mlp.gate_proj", None), (f"{a}mlp.fc", f"{h}mlp.up_proj", None),
                (f"{a}mlp.proj", f"{h}mlp.down_proj", None)]

    def _norms(self, i: int, m: ModelConfig):
        a, h = f"blocks.{i}.", f"{self.prefix}layers.{i}."
        pairs = [(f"{a}norm1", f"{h}input_layernorm"), (f"{a}norm2", f"{h}post_attention_layernorm")]
        if m.qk_norm:
            pairs += [(f"{a}attn.q_norm", f"{h}self_attn.q_norm"), (f"{a}attn.k_norm", f"{h}self_attn.k_norm")]
        return pairs

    def outer_to_hf(self, sd, m):
        return {f"{self.prefix}embed_tokens.weight": sd["wte.weight"], f"{self.prefix}norm.weight": sd["norm_f.weight"]}

    def layer_to_hf(self, sd, i, m):
        out = {f"{theirs}.weight": sd[f"{ours}.weight"] for ours, theirs in self._norms(i, m)}
        for ours, theirs, rows in self._pairs(i, m):
            w = sd[f"{ours}.weight"]
            out[f"{theirs}.weight"] = w[rows] if rows is not None else w
            if self._has_bias(theirs, m):
                b = _zeros_if_none(sd.get(f"{ours}.bias"), w.shape[0], w)
                out[f"{theirs}.bias"] = b[rows] if rows is not None else b
        return out

    def _has_bias(self, theirs: str, m: ModelConfig) -> bool:
        """Whether the exported checkpoint holds a bias for this linear layer (config(m) decides)."""
        return m.bias or (m.qkv_bias and "self_attn" in theirs)

    def _hf_options(self, hf: dict[str, Any]) -> dict[str, Any]:
        """The ModelConfig fields a family sets beyond Llama's (Qwen3: qk_norm)."""
        return {}

    def model_config(self, hf, sd):
        d, H = hf["hidden_size"], hf["num_attention_heads"]
        base, frac, kind = _rope(hf)
        act = hf.get("hidden_act", "silu")
        _need(act == "silu", f"hidden_act {act!r}: nextoken's SwiGLU uses silu")
        _need(kind == "default", f"rope_type {kind!r}" + (" (Llama 3.1's RoPE frequency scaling)" if kind == "llama3"
                                                          else "") + ": nextoken's RoPE is unscaled")
        _need(frac == 1.0, f"partial_rotary_factor {frac}: {self.architecture} rotates whole heads")
        types = set(hf.get("layer_types") or []) - {"full_attention"}
        _need(not hf.get("use_sliding_window") and not types,
              "use_sliding_window true (sliding-window attention): nextoken attends to the whole context")
        kv = hf.get("num_key_value_heads") or H
        head = hf.get("head_dim") or d // H
        bias, qkv_bias = _biases(sd, self.prefix, ("q_proj", "k_proj", "v_proj"))
        return ModelConfig(n_layer=hf["num_hidden_layers"], n_head=H, n_kv_head=0 if kv == H else kv,
                           head_size=0 if head * H == d else head, d_model=d,
                           block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"], norm="pre",
                           norm_type="rmsnorm", pos="rope", mlp="swiglu", mlp_hidden=hf["intermediate_size"],
                           norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)), bias=bias,
                           qkv_bias=qkv_bias or self.fixed_qkv_bias, rope_base=base, **self._hf_options(hf))

    fixed_qkv_bias = False  # Qwen2's q, k and v always have biases

    def hf_names(self, m):
        names = {f"{self.prefix}embed_tokens.weight", f"{self.prefix}norm.weight"}
        for i in range(m.n_layer):
            names |= {f"{theirs}.weight" for _, theirs in self._norms(i, m)}
            for _, theirs, _ in self._pairs(i, m):
                names |= {f"{theirs}.weight", f"{theirs}.bias"}
        return names | ({self.lm_head} if not m.tie_embeddings else set())

    def outer_from_hf(self, sd, m):
        return {"wte.weight": sd[f"{self.prefix}embed_tokens.weight"], "norm_f.weight": sd[f"{self.prefix}norm.weight"]}

    def layer_from_hf(self, sd, i, m):
        out = {f"{ours}.weight": sd[f"{theirs}.weight"] for ours, theirs in self._norms(i, m)}
        parts: dict[str, list[torch.Tensor]] = {}
        for ours, theirs, _ in self._pairs(i, m):
            w = sd[f"{theirs}.weight"]
            parts.setdefault(f"{ours}.weight", []).append(w)
            if m.bias or (m.qkv_bias and ours.endswith("attn.qkv")):
                parts.setdefault(f"{ours}.bias", []).append(_zeros_if_none(sd.get(f"{theirs}.bias"), w.shape[0], w))
        return out | {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in parts.items()}


class Qwen2(Llama):
    """Qwen2 / Qwen2.5: Llama's layout with biases on q, k and v only (Qwen2 technical report, §2.1)."""

    architecture, model_type = "Qwen2ForCausalLM", "qwen2"
    fixed_qkv_bias = True

    def claims(self, m):
        return m.qkv_bias and not m.qk_norm

    def options(self, m):
        return self._rope_options(m) + [("model.bias true", not m.bias, "Qwen2 has biases on q, k and v only")]

    def config(self, m):
        out = super().config(m)
        for k in ("attention_bias", "mlp_bias", "pretraining_tp"):
            out.pop(k)
        return out | {"use_sliding_window": False}

    def _has_bias(self, theirs, m):
        return "self_attn" in theirs and not theirs.endswith("o_proj")


class Qwen3(Llama):
    """Qwen3: Llama's layout with RMSNorm on each head's queries and keys (Qwen3 technical report, §2);
    `attention_bias` puts biases on q, k, v and o, the MLP has none."""

    architecture, model_type = "Qwen3ForCausalLM", "qwen3"

    def claims(self, m):
        return m.qk_norm

    def options(self, m):
        return self._rope_options(m) + [("model.bias true", not m.bias, "Qwen3's MLP has no biases")]

    def config(self, m):
        out = super().config(m)
        out.pop("mlp_bias")
        out.pop("pretraining_tp")
        return out | {"use_sliding_window": False}

    def _has_bias(self, theirs, m):
        return m.qkv_bias and "self_attn" in theirs

    def _hf_options(self, hf):
        return {"qk_norm": True}


# Export picks the first whose options fit, among those of the model's layout.
EXPORT_ORDER: list[Adapter] = [GPT2(), GPTNeoX(), Qwen3(), Qwen2(), Llama()]
ADAPTERS: dict[str, Adapter] = {a.model_type: a for a in EXPORT_ORDER}
