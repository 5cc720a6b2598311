"""Held-out loss, perplexity, bits per token and bits per byte.

bits_per_byte = loss * n_tokens / (n_bytes * ln 2), n_bytes the UTF-8 bytes of the evaluated
targets: each target position contributes the bytes of text it stands for, as prepare recorded them
beside the tokens (data/tokenizer.py encode_documents), so the figure is exact for any slice of the
split and compares runs with different tokenizers, byte-level or not.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from nextoken.data.loader import IGNORE_INDEX, TokenData, eval_windows
from nextoken.data.prepare import open_byte_counts
from nextoken.errors import DataError


def perplexity(loss: float) -> float:
    """exp(loss): inf where that is above the float range (a loss above ~709.78 nats, a diverged model), never
    an OverflowError; nan for a nan loss."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TokenData, block_size: int, token_bytes: np.ndarray,
             max_tokens: int = 0, batch_size: int = 16, device: torch.device | str = "cpu",
             autocast=contextlib.nullcontext, doc_sep: int | None = None) -> dict:
    """`token_bytes` (token_byte_lengths) counts the bytes only for data prepared without byte shards; `doc_sep`
    (the end-of-text id) keeps attention inside documents, as a model trained with data.doc_mask saw it."""
    was_training = model.training
    model.eval()
    nll_sum, n_tokens, n_bytes = 0.0, 0, 0
    xs, ys = [], []
    counts = open_byte_counts(data.dir, data.split)
    if counts is None:
        lengths = torch.from_numpy(token_bytes)
        target_bytes = (lengths[y] for _, y in eval_windows(data, block_size, max_tokens))
    else:
        if [len(c) for c in counts] != [len(s) for s in data.shards]:
            raise DataError(f"the byte shards of {data.dir}/{data.split} do not match its token shards; "
                            "prepare the data again")
        # The byte counts are laid out as the tokens, so the same windows over them give each target's bytes.
        if (data.manifest.get("byte_counts_version", 1) < 2 and (token_bytes < 0).any() and max_tokens
                and max_tokens < data.n_tokens):
            warnings.warn(f"{data.dir} was prepared before nextoken counted a byte-fallback piece as one byte: "
                          "bits per byte of a partial evaluation may be off by a few bytes where a window cuts a "
                          "character; prepare the data again for the exact figure", stacklevel=2)
        layout = copy.copy(data)
        layout.shards = counts
        target_bytes = (y for _, y in eval_windows(layout, block_size, max_tokens))

    def run_batch() -> None:
        nonlocal nll_sum, n_tokens
        x, y = torch.stack(xs).to(device), torch.stack(ys)
        with autocast():
            logits = model(x) if doc_sep is None else model(x, doc_BT=(x == doc_sep).cumsum(dim=1))
        nll_sum += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        n_tokens += int((y != IGNORE_INDEX).sum())  # examples data counts only its answers (data/loader.py)
        xs.clear()
        ys.clear()

    for (x, y), y_bytes in zip(eval_windows(data, block_size, max_tokens), target_bytes, strict=True):
        y_bytes = y_bytes[y != IGNORE_INDEX]
        if (y_bytes < 0).any():
            raise DataError(f"{data.dir} was prepared before nextoken recorded the bytes of each token, which "
                            "this tokenizer needs for bits per byte; prepare the data again")
        n_bytes += int(y_bytes.sum())
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            run_batch()
    if xs:
        run_batch()
    model.train(was_training)
    loss = nll_sum / n_tokens
    return {
        "split": data.split,
        "loss": loss,
        "ppl": perplexity(loss),
        "bits_per_token": loss / math.log(2),
        "bits_per_byte": nll_sum / (max(n_bytes, 1) * math.log(2)),
        "eval_tokens": n_tokens,
        "eval_bytes": n_bytes,
    }


def evaluate_mixture(model: torch.nn.Module, vals: dict[str, TokenData], weights: dict[str, float], block_size: int,
                     token_bytes: np.ndarray, max_tokens: int = 0, batch_size: int = 16,
                     device: torch.device | str = "cpu", autocast=contextlib.nullcontext,
                     doc_sep: int | None = None) -> dict:
    """Each source's figures, as `evaluate` on that source alone with the same `max_tokens` (so a source's curve
    compares across mixes), and the mixture's: the loss a token drawn at the mix's weights has in expectation,
    sum_k w_k L_k, and bits per byte over the bytes such a token stands for, sum_k w_k L_k / (ln 2 sum_k w_k b_k),
    b_k the bytes per token of source k. Returns the overall figures with `sources`: name -> figures."""
    per = {name: evaluate(model, val, block_size, token_bytes, max_tokens, batch_size, device, autocast, doc_sep)
           for name, val in vals.items()}
    loss = sum(weights[n] * r["loss"] for n, r in per.items())
    bytes_per_token = sum(weights[n] * r["eval_bytes"] / max(r["eval_tokens"], 1) for n, r in per.items())
    return {
        "split": next(iter(per.values()))["split"],
        "loss": loss,
        "ppl": perplexity(loss),
        "bits_per_token": loss / math.log(2),
        "bits_per_byte": loss / (max(bytes_per_token, 1e-12) * math.log(2)),
        "eval_tokens": sum(r["eval_tokens"] for r in per.values()),
        "eval_bytes": sum(r["eval_bytes"] for r in per.values()),
        "sources": per,
    }
