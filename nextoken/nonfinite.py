"""Figures that can be non-finite (a diverged run's loss, its perplexity, a gradient norm): how they are
written as strict JSON, read back, and told apart from a run that learned (docs/metrics.md).

Strict JSON (RFC 8259) has no NaN or Infinity, and Python's `json.dumps` writes them as bare tokens that
JavaScript's `JSON.parse`, jq and most other parsers refuse. nextoken writes a non-finite float as the
string "Infinity", "-Infinity" or "NaN": the spellings that both Python's `float()` and JavaScript's
`Number()` turn back into the value, so a reader recovers it with one call; a reader that does not expect
them fails loudly on a string instead of plotting or fitting a made-up number (the ±1e308 nextoken wrote
before poisoned fits and squashed plots without a word). `null` keeps its meaning: unknown, not measured.
"""

from __future__ import annotations

import json
import math

_ENCODE = {math.inf: "Infinity", -math.inf: "-Infinity"}
DECODE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}
LEGACY_INF = 1e308  # what metrics.jsonl held for ±inf before nextoken wrote strings (issue 15, fault 4)


def encode(obj):
    """`obj` with every non-finite float, however deep in dicts, lists and tuples, replaced by its string."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else _ENCODE[obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    return obj


def decode(obj, legacy: bool = False):
    """The inverse of `encode`: "Infinity", "-Infinity" and "NaN" strings back to floats. With `legacy`,
    ±1e308 too (metrics.jsonl files written before the strings)."""
    if isinstance(obj, str):
        return DECODE.get(obj, obj)
    if legacy and isinstance(obj, float) and abs(obj) == LEGACY_INF:
        return math.copysign(math.inf, obj)
    if isinstance(obj, dict):
        return {k: decode(v, legacy) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, legacy) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """Strict JSON of `obj`, non-finite floats as strings (never a bare NaN or Infinity)."""
    return json.dumps(encode(obj), allow_nan=False, **kw)


def divergence(loss, vocab_size: int | None = None) -> str | None:
    """Why a final loss (nats per token) is not the figure of a model that learned, or None when it may be: it is
    missing or non-finite, or, given the model's vocabulary V, more than one nat above ln V, the loss of a
    uniform guess over every token. An untrained model sits at about ln V (its logits start near zero), so the
    nat of margin keeps a short run from counting; a diverged one lands far above (millions of nats)."""
    if loss is None:
        return "no loss recorded"
    if not math.isfinite(loss):
        return f"its loss is {loss}"
    if vocab_size and loss > math.log(vocab_size) + 1:
        return (f"its loss {loss:.4g} nats is more than one nat above ln({vocab_size}) = {math.log(vocab_size):.3f}, "
                "a uniform guess over the vocabulary")
    return None
