"""Held-out loss, perplexity, bits per token and bits per byte.

bits_per_byte = loss * n_tokens / (n_bytes * ln 2), n_bytes the UTF-8 bytes of the evaluated
targets: each target token contributes the bytes it stands for (0 for the end-of-text separator),
so the figure is exact for any slice of the split and compares runs with different tokenizers.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from nextoken.data.loader import TokenData, eval_windows


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TokenData, block_size: int, token_bytes: np.ndarray,
             max_tokens: int = 0, batch_size: int = 16, device: torch.device | str = "cpu",
             autocast=contextlib.nullcontext) -> dict:
    was_training = model.training
    model.eval()
    nll_sum, n_tokens, n_bytes = 0.0, 0, 0
    lengths = torch.from_numpy(token_bytes)
    xs, ys = [], []

    def run_batch() -> None:
        nonlocal nll_sum, n_tokens, n_bytes
        x, y = torch.stack(xs).to(device), torch.stack(ys)
        with autocast():
            logits = model(x)
        nll_sum += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        n_tokens += y.numel()
        n_bytes += int(lengths[y].sum())
        xs.clear()
        ys.clear()

    for x, y in eval_windows(data, block_size, max_tokens):
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
        "ppl": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "bits_per_byte": nll_sum / (max(n_bytes, 1) * math.log(2)),
        "eval_tokens": n_tokens,
        "eval_bytes": n_bytes,
    }
