"""Models for `nextoken serve`: loaded once per checkpoint through `Run.load` and kept in a bounded LRU, and
what the probing pages compute with them (the next-token logits, per-token surprise, val documents)."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from nextoken import checkpoint as ckpt
from nextoken.errors import NextokenError
from nextoken.run import Loaded, Run
from nextoken.serve.runs import NotFound

MAX_MODELS = 4
MAX_BYTES = 2 * 2**30  # parameters kept loaded, all models together
MAX_TEXT_TOKENS = 2048  # surprise: tokens scored per request
REST_BINS = 64  # the histogram of the logits outside the top N


class ModelCache:
    """Loaded models by checkpoint, least recently used dropped first past MAX_MODELS or MAX_BYTES. Concurrent
    requests for the same checkpoint wait for one load instead of loading it twice."""

    def __init__(self, max_models: int = MAX_MODELS, max_bytes: int = MAX_BYTES):
        self.max_models, self.max_bytes = max_models, max_bytes
        self._models: OrderedDict[tuple, tuple[Loaded, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self.loads = 0

    def get(self, run: Run, step: int | None) -> Loaded:
        """The model of `run` at `step` (None: the pinned or newest checkpoint). Training may prune the chosen
        checkpoint before it loads: the newest is then chosen again, and a named step is a NotFound that says so
        (not the load's own error, whose cause would be wrong)."""
        for _ in range(3):
            path = run.checkpoint(step)  # CheckpointError names the steps there are
            try:
                return self._get(run, path)
            except (NextokenError, OSError):
                if ckpt.is_checkpoint(path):
                    raise  # the checkpoint is there: the error is its own
                if step is not None or run.pinned is not None:
                    steps = ", ".join(str(int(p.name.removeprefix("step_"))) for p in run.checkpoints()) or "none"
                    raise NotFound(f"checkpoint {path.name} of {run.name} was pruned while it loaded (steps now: "
                                   f"{steps})") from None
        raise NextokenError(f"the checkpoints of {run.name} were pruned faster than one loaded; retry")

    @staticmethod
    def key(run: Run, path: Path) -> tuple[str, int]:
        """(checkpoint path, its trainer.json's mtime): a re-written step is a new model."""
        try:
            return str(path), (path / "trainer.json").stat().st_mtime_ns
        except OSError:
            raise NextokenError(f"checkpoint {path.name} of {run.name} was just replaced; retry") from None

    def _get(self, run: Run, path: Path) -> Loaded:
        key = self.key(run, path)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key][0]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._models:
                    return self._models[key][0]
            loaded = run.load(int(path.name.removeprefix("step_")) if run.pinned is None else None)
            size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
            self.loads += 1
            with self._lock:
                self._models[key] = (loaded, size)
                self._loading.pop(key, None)
                while len(self._models) > 1 and (len(self._models) > self.max_models
                                                 or sum(s for _, s in self._models.values()) > self.max_bytes):
                    self._models.popitem(last=False)
        return loaded


def _piece(tokenizer, i: int) -> str:
    return tokenizer.decode([int(i)], skip_special_tokens=False)


@torch.no_grad()
def next_logits(loaded: Loaded, prompt: str, top: int = 20, target: str | None = None) -> dict:
    """The next-token distribution after `prompt` as the client needs it to reshape it at any temperature
    without a round trip: the top-`top` logits, the log-sum-exp of all the others (exact at temperature 1) and
    a histogram of them (their count and mean logit per bin: sum_j exp(l_j / T) over the rest at other T).
    With `target`, the cross-entropy of all its tokens (inspect.score_target) and its first token's logit and
    rank in this distribution; with `with_space`, the same for the target after a space."""
    from nextoken.generate import encode_prompt

    if not 1 <= top <= 200:
        raise NextokenError(f"top must be between 1 and 200; got {top}")
    model, tok = loaded.model, loaded.tokenizer
    ids = encode_prompt(tok, prompt)[-model.cfg.block_size:]
    logits = model(torch.tensor([ids]))[0, -1].float()
    lse = float(torch.logsumexp(logits, -1))
    values, idx = torch.topk(logits, min(top, logits.numel()))
    rest_mask = torch.ones_like(logits, dtype=torch.bool)
    rest_mask[idx] = False
    rest = logits[rest_mask]
    hist = {"count": [], "mean": []}
    if rest.numel():
        lo, hi = float(rest.min()), float(rest.max())
        bins = torch.clamp(((rest - lo) / max(hi - lo, 1e-6) * REST_BINS).long(), 0, REST_BINS - 1)
        count = torch.bincount(bins, minlength=REST_BINS)
        total = torch.bincount(bins, weights=rest.double(), minlength=REST_BINS)
        keep = count > 0
        hist = {"count": count[keep].tolist(), "mean": (total[keep] / count[keep]).tolist()}
    logp = logits - lse
    p = logp.exp()
    out = {
        "prompt": prompt, "prompt_tokens": [{"id": i, "text": _piece(tok, i)} for i in ids],
        "vocab_size": int(logits.numel()), "step": loaded.step, "checkpoint": loaded.checkpoint.name,
        "top": [{"id": int(i), "text": _piece(tok, i), "logit": float(v)} for v, i in zip(values, idx, strict=True)],
        "lse_rest": float(torch.logsumexp(rest, -1)) if rest.numel() else None, "rest_hist": hist,
        "lse": lse, "entropy_nats": float(-(p * logp).sum()),
    }
    if target:
        out["target"] = _target(model, tok, ids, logits, logp, target, prompt)
    return out


def _target(model, tok, ids, logits, logp, target: str, prompt: str) -> dict:
    from nextoken.inspect import score_target

    scored = score_target(model, tok, ids, target, prompt)

    def first(s: dict) -> dict:
        t = s["tokens"][0]["id"]
        return {"id": t, "text": _piece(tok, t), "logit": float(logits[t]), "neg_log_p": float(-logp[t]),
                "rank": int((logits > logits[t]).sum()) + 1, "tokens_in_target": s["tokens_in_target"],
                "scored": s["text"], "tokens": s["tokens"], "neg_log_p_total": s["neg_log_p"]}

    out = first(scored)
    if "with_space" in scored:
        out["with_space"] = first(scored["with_space"])
    return out


@torch.no_grad()
def surprise(loaded: Loaded, text: str, alternatives: int = 5) -> dict:
    """Every token of `text` with the loss the model gives it (context: the text before it, after an
    end-of-text start) and its top alternatives; the text's loss, perplexity and bits per byte."""
    from nextoken.data.tokenizer import eot_id

    if not text:
        raise NextokenError("the text is empty; paste some text or pick a val document")
    model, tok = loaded.model, loaded.tokenizer
    ids = tok.encode(text, add_special_tokens=False).ids
    if not ids:
        raise NextokenError(f"the text {text[:40]!r} has no character this model's tokenizer knows")
    truncated = len(ids) > MAX_TEXT_TOKENS
    ids = ids[:MAX_TEXT_TOKENS]
    seq = [eot_id(tok)] + ids
    T = model.cfg.block_size
    nll = torch.empty(len(ids))
    alt_p, alt_i = torch.empty(len(ids), alternatives), torch.empty(len(ids), alternatives, dtype=torch.long)
    # Windows of T inputs, each scoring its second half (the first scores all): every token sees >= T/2 context.
    start, scored = 0, 0
    while scored < len(ids):
        x = seq[start:start + T]
        logp = model(torch.tensor([x]))[0].float().log_softmax(-1)
        y = torch.tensor(seq[start + 1:start + 1 + len(x)])
        first = scored - start
        for pos in range(first, len(y)):
            nll[start + pos] = -logp[pos, y[pos]]
        top = logp[first:len(y)].topk(min(alternatives, logp.shape[-1]), -1)
        alt_p[start + first:start + len(y)], alt_i[start + first:start + len(y)] = top.values.exp(), top.indices
        scored = start + len(y)
        start = max(scored - T // 2, 0)
    n_bytes = len(tok.decode(ids, skip_special_tokens=False).encode("utf-8"))
    total = float(nll.sum())
    tokens = [{"id": i, "text": _piece(tok, i), "loss": float(nll[k]),
               "alternatives": [{"text": _piece(tok, int(j)), "p": float(q)} for q, j in zip(alt_p[k], alt_i[k],
                                                                                          strict=True)]}
              for k, i in enumerate(ids)]
    loss = total / len(ids)
    return {"tokens": tokens, "loss": loss, "ppl": math.exp(min(loss, 700)),
            "bits_per_byte": total / (max(n_bytes, 1) * math.log(2)), "n_tokens": len(ids), "n_bytes": n_bytes,
            "truncated": truncated, "step": loaded.step, "checkpoint": loaded.checkpoint.name}


def val_documents(run: Run, limit: int = 50, preview: int = 80) -> list[dict]:
    """The first `limit` documents of the run's val split (its prepared data, separated by end-of-text)."""
    docs = _val_docs(run, limit)
    return [{"index": i, "preview": d[:preview], "chars": len(d)} for i, d in enumerate(docs)]


def val_document(run: Run, index: int) -> str:
    docs = _val_docs(run, index + 1)
    if not 0 <= index < len(docs):
        raise NextokenError(f"the val split has {len(docs)} documents; no document {index}")
    return docs[index]


def _val_docs(run: Run, limit: int) -> list[str]:
    from nextoken.data.loader import TokenData
    from nextoken.data.tokenizer import eot_id

    data = TokenData(Path(run.config.data.path), "val")  # DataError: not there (moved, another machine)
    tok = run.tokenizer
    sep = eot_id(tok)
    docs: list[str] = []
    for shard in data.shards:
        ids = np.asarray(shard)
        cuts = np.flatnonzero(ids == sep)
        start = 0
        for c in [*cuts.tolist(), len(ids)]:
            if c > start:
                docs.append(tok.decode(ids[start:c].tolist(), skip_special_tokens=False))
                if len(docs) >= limit:
                    return docs
            start = c + 1
    return docs
