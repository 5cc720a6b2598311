"""Inside one forward pass: what `nextoken inspect` and the web app's inspect page show.

The model runs as it always does; forward hooks only read what passes through it (the embedding, each
block's input to attention and its output), so the numerics are the model's own. From those:

- the prompt's tokens and ids, the embedding's norm per position, the residual stream's norm after each layer;
- attention probabilities per layer and head, recomputed from the queries and keys the attention module
  itself produces (`Attention.qkv_heads`) as softmax(q k^T / sqrt(K)) under the run's mask;
- the logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): the final norm and the output
  layer applied to the residual stream after each layer, so every layer's would-be prediction per position;
  the last layer's is the model's own output;
- teacher forcing: every position predicts its next token at once, from the true tokens before it, and the
  cross-entropy of each; and the cross-entropy of a given continuation, all its tokens.

A bidirectional (masked-token) run sees both sides: its attention has no mask, and each position predicts its
own token (as it would were it [MASK]).
"""

from __future__ import annotations

import math
import threading

import torch

from nextoken.errors import NextokenError

MAX_TOKENS = 64  # positions shown: attention is L x H x T x T numbers


def _piece(tokenizer, i: int) -> str:
    return tokenizer.decode([int(i)], skip_special_tokens=False)


def target_ids(tokenizer, target: str) -> list[int]:
    ids = tokenizer.encode(target, add_special_tokens=False).ids
    if not ids:
        raise NextokenError(f"the target {target[:40]!r} has no character this model's tokenizer knows")
    return ids


@torch.no_grad()
def score_continuation(model, ids: list[int], cont: list[int]) -> list[float]:
    """-log p (nats) of each token of `cont` after `ids`, teacher forced: token k is predicted from `ids` and
    the true tokens of `cont` before it, all in one forward pass (the context keeps its last block_size)."""
    seq = (ids + cont)[-(model.cfg.block_size + 1):]
    n = len(cont)
    assert len(seq) > n, "a continuation longer than the context is cut by the caller"
    device = next(model.parameters()).device
    logp = model(torch.tensor([seq[:-1]], device=device))[0, -n:].float().log_softmax(-1)
    return [float(-logp[k, t]) for k, t in enumerate(seq[-n:])]


def score_target(model, tokenizer, ids: list[int], target: str, prompt: str) -> dict:
    """The cross-entropy of `target` as the continuation of `ids` (the prompt's), every token of it; and, where
    the target has no leading space but the tokenizer glues a space to the word after it (' mat' is one
    token) and the prompt ends in a non-space, the same for ' ' + target: which one the text means is the user's
    call, the page shows both."""
    def one(text: str) -> dict:
        t_ids = target_ids(tokenizer, text)[:model.cfg.block_size // 2]
        nl = score_continuation(model, ids, t_ids)
        return {"text": text, "tokens": [{"id": i, "text": _piece(tokenizer, i), "neg_log_p": v}
                                         for i, v in zip(t_ids, nl, strict=True)],
                "neg_log_p": sum(nl), "tokens_in_target": len(t_ids)}

    out = one(target)
    if target[:1].isalnum() and prompt[-1:].strip() and _glues_spaces(tokenizer):
        out["with_space"] = one(" " + target)
    return out


_GLUES: dict[int, tuple] = {}  # id(tokenizer): (tokenizer, answer); the check decodes the whole vocabulary


def _glues_spaces(tokenizer) -> bool:
    from nextoken.generate import _merges_spaces

    hit = _GLUES.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        if len(_GLUES) > 16:
            _GLUES.clear()
        hit = _GLUES[id(tokenizer)] = (tokenizer, _merges_spaces(tokenizer))
    return hit[1]


class _Capture:
    """Forward hooks that keep, for one forward pass, the embedding (the first block's input), each attention
    module's input and positions (its args), and each block's output (the residual stream after it). They
    record only this thread's forward: a server runs other requests through the same model meanwhile."""

    def __init__(self, model):
        self.model, self.embed, self.attn_in, self.resid = model, None, [], []
        self.thread = threading.get_ident()

    def __enter__(self):
        blocks = self.model.blocks
        self.hooks = [blocks[0].register_forward_pre_hook(self._embed)]
        for b in blocks:
            self.hooks.append(b.attn.register_forward_pre_hook(self._attn, with_kwargs=True))
            self.hooks.append(b.register_forward_hook(self._block))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()

    def _embed(self, module, args):
        if threading.get_ident() == self.thread:
            self.embed = args[0]

    def _attn(self, module, args, kwargs):
        if threading.get_ident() != self.thread:
            return
        rope = args[1] if len(args) > 1 else kwargs.get("rope")
        self.attn_in.append((args[0] if args else kwargs["x_BTD"], rope))

    def _block(self, module, args, out):
        if threading.get_ident() == self.thread:
            self.resid.append(out)


def attention_probs(attn, x_BTD: torch.Tensor, rope) -> torch.Tensor:
    """(B, H, T, T) attention probabilities of attention module `attn` on its input: softmax(q k^T / sqrt(K))
    (Vaswani et al. 2017, eq. 1), causal unless the run is bidirectional. Key heads shared by several query
    heads (grouped-query attention) are repeated to match."""
    q, k, _ = attn.qkv_heads(x_BTD, rope)
    q, k = q.float(), k.float()
    if k.size(1) != q.size(1):
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if attn.cfg.attention == "causal":
        T = scores.size(-1)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=scores.device).tril(), float("-inf"))
    return scores.softmax(-1)


@torch.no_grad()
def trace(model, ids: list[int]) -> dict:
    """The tensors of one forward pass over `ids` (batch 1): `logits` (T, V), `embed` (T, D), `resid` (L, T, D)
    after each block, `attention` (L, H, T, T), `lens` (L + 1, T, V): log-probabilities of the logit lens on
    the embedding and after each block (its last row is log_softmax(logits))."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    with _Capture(model) as cap:
        logits = model(x)[0].float()
    attn = torch.stack([attention_probs(b.attn, xin, rope)[0]
                        for b, (xin, rope) in zip(model.blocks, cap.attn_in, strict=True)])
    resid = torch.stack([r[0] for r in cap.resid])
    lens = [model.lm_head(model.norm_f(cap.embed))[0]] + [model.lm_head(model.norm_f(r))[0] for r in cap.resid]
    return {"logits": logits, "embed": cap.embed[0].float(), "resid": resid.float(), "attention": attn,
            "lens": torch.stack(lens).float().log_softmax(-1)}


def _round(t: torch.Tensor, digits: int = 4) -> list:
    return (t * 10**digits).round().div(10**digits).tolist()


@torch.no_grad()
def inspect(loaded, prompt: str, target: str | None = None, top: int = 5, final_top: int = 20) -> dict:
    """Everything the inspect page draws for `prompt` at one checkpoint (`loaded`: a run.Loaded), as plain
    JSON: see docs/serve.md, POST /api/inspect."""
    from nextoken.generate import encode_prompt

    if not 1 <= top <= 20:
        raise NextokenError(f"top must be between 1 and 20; got {top}")
    model, tok = loaded.model, loaded.tokenizer
    all_ids = encode_prompt(tok, prompt)
    keep = min(MAX_TOKENS, model.cfg.block_size)
    ids = all_ids[-keep:]
    bidirectional = model.cfg.attention != "causal"
    t = trace(model, ids)
    T = len(ids)
    # the token each position predicts: the next one (teacher forcing), or its own in a bidirectional run
    truth = list(ids) if bidirectional else ids[1:] + [None]
    scored = None
    if target and not bidirectional:
        scored = score_target(model, tok, ids, target, prompt)
        truth[-1] = scored["tokens"][0]["id"]

    lens_rows = []
    names = ["embedding"] + [f"layer {i + 1}" for i in range(model.cfg.n_layer)]
    for name, lp_TV in zip(names, t["lens"], strict=True):
        values, idx = lp_TV.topk(min(top, lp_TV.size(-1)), -1)
        cells = []
        for pos in range(T):
            cell = {"top": [{"id": int(i), "text": _piece(tok, i), "p": float(v.exp())}
                            for v, i in zip(values[pos], idx[pos], strict=True)]}
            y = truth[pos]
            if y is not None:
                cell["true_rank"] = int((lp_TV[pos] > lp_TV[pos, y]).sum()) + 1
                cell["true_p"] = float(lp_TV[pos, y].exp())
            cells.append(cell)
        lens_rows.append({"name": name, "positions": cells})

    logp = t["logits"].log_softmax(-1)
    last = logp[-1]
    values, idx = last.topk(min(final_top, last.numel()))
    forcing = []
    for pos in range(T):
        y = truth[pos]
        if y is None:
            continue
        forcing.append({"position": pos, "input": _piece(tok, ids[pos]), "true": _piece(tok, y), "true_id": y,
                        "neg_log_p": float(-logp[pos, y]), "predicted": _piece(tok, int(logp[pos].argmax()))})
    tf_loss = sum(f["neg_log_p"] for f in forcing) / len(forcing) if forcing else None
    return {
        "prompt": prompt, "step": loaded.step, "checkpoint": loaded.checkpoint.name,
        "bidirectional": bidirectional, "truncated": len(all_ids) > T,
        "shape": {"n_layer": model.cfg.n_layer, "n_head": model.cfg.n_head, "d_model": model.cfg.d_model,
                  "vocab_size": int(logp.size(-1))},
        "tokens": [{"id": int(i), "text": _piece(tok, i)} for i in ids],
        "embedding_norm": _round(t["embed"].norm(dim=-1), 3),
        "residual_norm": _round(t["resid"].norm(dim=-1), 3),
        "attention": _round(t["attention"]),
        "lens": lens_rows,
        "final": {"top": [{"id": int(i), "text": _piece(tok, i), "p": float(v.exp())}
                          for v, i in zip(values, idx, strict=True)],
                  "entropy_nats": float(-(last.exp() * last).sum())},
        "teacher_forcing": {"positions": forcing, "loss": tf_loss,
                            "ppl": math.exp(min(tf_loss, 700)) if tf_loss is not None else None},
        "target": scored,
    }
