"""Sampling (temperature, top-k, top-p, KV-cache) and the next-token distribution."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator

import torch

from nextoken.errors import NextokenError
from nextoken.model import GPT, KVCache
from nextoken.paths import shown


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int = 1) -> None:
    """Raises NextokenError, naming the flag, for settings sampling cannot use."""
    if not math.isfinite(temperature) or temperature < 0:
        raise NextokenError(f"--temperature must be >= 0 (0 is greedy); got {temperature}")
    if top_k is not None and top_k < 1:
        raise NextokenError(f"--top-k must be >= 1; got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise NextokenError(f"--top-p must be in (0, 1]; got {top_p}")
    if max_new_tokens < 1:
        raise NextokenError(f"--max-new-tokens must be >= 1; got {max_new_tokens}")


def check_distribution(temperature: float, top: int) -> None:
    """Raises NextokenError for a temperature or a row count the next-token distribution cannot show."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise NextokenError(f"--temperature must be > 0 to show a distribution; got {temperature}")
    if top < 1:
        raise NextokenError(f"--top must be >= 1; got {top}")


def draw_seed() -> int:
    """A fresh sampling seed for a call that gave none: each call samples anew, and printing the seed lets
    `--seed` reproduce it (an unseeded generator starts from the same state every time)."""
    return secrets.randbits(48)


def _check_finite(logits_V: torch.Tensor) -> torch.Tensor:
    """`logits_V`, or NextokenError when any is inf or nan: a diverged model has no distribution to draw from."""
    if not bool(torch.isfinite(logits_V).all()):
        raise NextokenError("the model's next-token logits are not finite (inf or nan): its weights diverged; "
                            "use a checkpoint from before the divergence (--step N)")
    return logits_V


def filter_logits(logits_V: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the k most likely tokens, then the smallest set whose probability reaches p (nucleus,
    Holtzman et al. 2020); the rest get -inf."""
    out = logits_V.clone()
    if top_k is not None and top_k < out.numel():
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens after the nucleus is complete
        out[order[drop]] = float("-inf")
    return out


@torch.no_grad()
def generate(model: GPT, ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; each costs one position thanks to the KV-cache. Without a `seed`
    every call draws a fresh one."""
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(draw_seed() if seed is None else seed)
    T = model.cfg.block_size
    context = list(ids)[-T:]
    cache = KVCache(model.cfg, 1, device, next(model.parameters()).dtype)
    logits = model(torch.tensor([context], device=device), cache)[0, -1]
    for _ in range(max_new_tokens):
        _check_finite(logits)
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        yield nxt
        context.append(nxt)
        if cache.pos >= T:  # the window is full: start again from its second half
            context = context[-(T // 2):]
            cache = KVCache(model.cfg, 1, device, next(model.parameters()).dtype)
            logits = model(torch.tensor([context], device=device), cache)[0, -1]
        else:
            logits = model(torch.tensor([[nxt]], device=device), cache)[0, -1]


def stream_text(tokenizer, model: GPT, prompt: str, max_new_tokens: int, stop_at_eot: bool = True,
                **kw) -> Iterator[str]:
    """Decoded text pieces as tokens arrive; a piece is held back while it ends inside a UTF-8 character. The
    sample ends at the end-of-text token, the end of its document (as the exported model's generation_config
    says), unless `stop_at_eot` is off: then it goes on into a new document, the separator shown."""
    from nextoken.data.tokenizer import eot_id

    ids = encode_prompt(tokenizer, prompt)
    eot = eot_id(tokenizer)
    out: list[int] = []
    shown = 0
    for nxt in generate(model, ids, max_new_tokens, **kw):
        if stop_at_eot and nxt == eot:
            break
        out.append(nxt)
        text = tokenizer.decode(out, skip_special_tokens=False)
        if not text.endswith("\ufffd"):
            yield text[shown:]
            shown = len(text)
    text = tokenizer.decode(out, skip_special_tokens=False)
    if len(text) > shown:
        yield text[shown:]


def check_prompt(prompt: str) -> None:
    """A prompt is text: bytes that are not UTF-8 (which Python passes on from argv as lone surrogates) are
    refused in one line rather than by the tokenizer's TypeError."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NextokenError(f"the prompt is not valid UTF-8 (character {e.start}: "
                            f"{shown(prompt[e.start:e.end])}); pass UTF-8 text") from None


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    from nextoken.data.tokenizer import eot_id

    check_prompt(prompt)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids  # a typed "<|endoftext|>" is text, as in training
    if prompt and not ids:  # a tokenizer without byte fallback drops characters it does not know
        raise NextokenError(f"the prompt {prompt[:40]!r} has no character this model's tokenizer knows; "
                            "use text like the training data")
    # An empty prompt starts a fresh document, as after an end-of-text separator.
    return ids if ids else [eot_id(tokenizer)]


@torch.no_grad()
def next_token_distribution(model: GPT, tokenizer, prompt: str, temperature: float = 1.0, top: int = 10) -> dict:
    """The model's distribution over the next token. Temperature reshapes what sampling draws from;
    the loss and perplexity are always computed from the unscaled logits (temperature 1)."""
    check_distribution(temperature, top)
    ids = encode_prompt(tokenizer, prompt)[-model.cfg.block_size:]
    device = next(model.parameters()).device
    logits = _check_finite(model(torch.tensor([ids], device=device))[0, -1].float())
    logp = (logits / temperature).log_softmax(-1)
    p = logp.exp()
    entropy = float(-(p * logp).sum())
    values, idx = torch.topk(p, min(top, p.numel()))
    rows = [{"id": int(i), "token": tokenizer.decode([int(i)], skip_special_tokens=False), "prob": float(v),
             "neg_log_p": float(-logp[i])} for v, i in zip(values, idx, strict=True)]
    pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    return {"prompt": prompt, "prompt_tokens": pieces, "temperature": temperature, "entropy_nats": entropy,
            "effective_choices": math.exp(entropy), "top": rows,
            "trailing_space": bool(prompt) and not pieces[-1].strip() and _merges_spaces(tokenizer)}


def _merges_spaces(tokenizer) -> bool:
    """Whether the tokenizer glues a space to the word after it (GPT-2-style BPE: ' os' is one token). Then a
    prompt that ends in a space ends on a token boundary that training text rarely has, and the next-token
    distribution after it is skewed: the model expects the space inside the next token, not before it."""
    return any(len(t) > 1 and t[0] == " " and not t[1].isspace()
               for t in tokenizer.decode_batch([[i] for i in range(tokenizer.get_vocab_size())]))
