"""Downstream tasks scored by log-likelihood, with lm-evaluation-harness's conventions (docs/eval.md).

A task file is JSON lines, all of one shape:
    multiple choice  {"context": str, "choices": [str, ...], "label": int}
    cloze            {"context": str, "continuation": str}          (LAMBADA's shape)

Scoring a (context, continuation) pair, as lm-eval's TemplateLM and HFLM do:
- whitespace that ends the context moves to the start of the continuation;
- the continuation's tokens are encode(context + continuation) after the first len(encode(context)) tokens;
- the sequence is cut from the left to the model's window (block_size + 1 tokens, the last one never an input);
- one difference, deliberate: every context starts with the run's end-of-text token, because nextoken trains
  every document after one (lm-eval's `add_bos_token=True` with that token as BOS does the same).

Per task: `acc` (the choice with the highest summed log-likelihood; a cloze item counts when every continuation
token is the greedy one), `acc_norm` (the highest log-likelihood per UTF-8 byte of the choice: lm-eval's
`acc_bytes`; `None` for cloze) and `bits_per_byte` of the correct continuation, summed bits over summed bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from nextoken.errors import DataError


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]  # a cloze item: its one continuation
    label: int  # index of the correct choice (0 for cloze)


@dataclass
class Task:
    name: str  # the file's stem, or the built-in task's name
    kind: str  # "choice" | "cloze"
    items: list[Item]


BUILTIN_PREFIX = "builtin:"


def load_task(spec: str) -> Task:
    """A task file, or `builtin:NAME` (eval/nextline.py). Raises DataError, in one line naming the line, for a
    file that is not one JSON object of one shape per line."""
    if spec.startswith(BUILTIN_PREFIX):
        from nextoken.eval.nextline import builtin_task

        return builtin_task(spec[len(BUILTIN_PREFIX):])
    return read_task(spec)


def read_task(path: str | Path) -> Task:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file {path} does not exist; pass a .jsonl file or builtin:nextline")
    items, kind = [], None
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"{where} is not valid JSON; each line of a task file is one JSON object") from None
            item, shape = _parse_item(row, where)
            if kind is not None and shape != kind:
                raise DataError(f"{where} is a {_SHAPES[shape]} item but the file's first is {_SHAPES[kind]}; "
                                "keep one shape per task file")
            kind = shape
            items.append(item)
    if not items:
        raise DataError(f"task file {path} holds no items; write one JSON object per line")
    return Task(path.stem, kind, items)


_SHAPES = {"choice": "multiple-choice", "cloze": "cloze"}


def _parse_item(row, where: str) -> tuple[Item, str]:
    if not isinstance(row, dict) or not isinstance(row.get("context"), str):
        raise DataError(f'{where} has no "context" string; write {{"context": ..., "choices": [...], "label": N}} '
                        'or {"context": ..., "continuation": ...}')
    if "choices" in row:
        choices, label = row["choices"], row.get("label")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)):
            raise DataError(f'{where}: "choices" must be a list of at least two non-empty strings')
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise DataError(f'{where}: "label" must be the index of the correct choice, an integer in '
                            f"[0, {len(choices) - 1}]")
        return Item(row["context"], tuple(choices), label), "choice"
    if isinstance(row.get("continuation"), str) and row["continuation"]:
        return Item(row["context"], (row["continuation"],), 0), "cloze"
    raise DataError(f'{where} has neither "choices" (multiple choice) nor a non-empty "continuation" string (cloze)')


# ---- scoring -------------------------------------------------------------------------------------------------

def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's `_encode_pair`: whitespace that ends the context moves to the continuation (a word-initial space
    belongs to the word's token in byte-level BPE)."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def encode_pair(tok, context: str, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids): the continuation's are encode(context + continuation) after the context's
    own, and the context starts with `prefix_id` (the document-start token)."""
    context, continuation = split_pair(context, continuation)
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    n_ctx = len(tok.encode(context, add_special_tokens=False).ids) if context else 0
    cont = whole[n_ctx:]
    if not cont:
        raise DataError(f"the continuation {continuation[:40]!r} has no token this model's tokenizer knows")
    return [prefix_id, *whole[:n_ctx]], cont


MAX_LOGITS = 1 << 28  # logits a batch may hold (1 GiB in fp32)


@torch.no_grad()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], block_size: int, batch_size: int = 32,
                   device: torch.device | str = "cpu", autocast=contextlib.nullcontext
                   ) -> list[tuple[float, bool]]:
    """(summed log-likelihood in nats, every token greedy) of each continuation after its context, the pair cut
    from the left to block_size + 1 tokens. Batched: sequences of similar length share a forward pass, padded on
    the right (a causal model's earlier positions never see the padding)."""
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    rows = []
    for i, (ctx, cont) in enumerate(requests):
        if len(cont) > block_size:
            raise DataError(f"a continuation of {len(cont)} tokens does not fit the model's context of {block_size}")
        rows.append((i, (ctx + cont)[-(block_size + 1):][:-1], cont))
    rows.sort(key=lambda r: -len(r[1]))  # longest first: each batch pads little
    vocab = getattr(model, "module", model).cfg.vocab_size  # DDP wraps the GPT
    was_training = model.training
    model.eval()
    start = 0
    while start < len(rows):
        width = len(rows[start][1])
        n = max(1, min(batch_size, MAX_LOGITS // (width * vocab)))  # GPT-2's 1024 x 50257 logits: 5 rows a batch
        chunk, start = rows[start:start + n], start + n
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, (_, inp, _) in enumerate(chunk):
            x[j, :len(inp)] = torch.tensor(inp)
        with autocast():
            logits_BTV = model(x.to(device))
        for j, (i, inp, cont) in enumerate(chunk):
            # the positions whose next token is a continuation token: the last len(cont) inputs
            logp_CV = logits_BTV[j, len(inp) - len(cont):len(inp)].float().log_softmax(-1)
            target = torch.tensor(cont, device=logp_CV.device)
            ll = float(logp_CV.gather(1, target[:, None]).sum())
            out[i] = (ll, bool((logp_CV.argmax(-1) == target).all()))
    model.train(was_training)
    return out


def score_task(model, tok, task: Task, block_size: int, batch_size: int = 32, device: torch.device | str = "cpu",
               autocast=contextlib.nullcontext) -> dict:
    """{"n", "acc", "acc_norm", "bits_per_byte"} of `model` on `task` (the module's docstring says how)."""
    from nextoken.data.tokenizer import eot_id

    prefix = eot_id(tok)
    requests = [encode_pair(tok, it.context, c, prefix) for it in task.items for c in it.choices]
    results = iter(loglikelihoods(model, requests, block_size, batch_size, device, autocast))
    acc = acc_norm = 0
    nll_bits, n_bytes = 0.0, 0
    for it in task.items:
        scored = [next(results) for _ in it.choices]
        lls = [ll for ll, _ in scored]
        if task.kind == "cloze":
            acc += scored[0][1]
        else:
            acc += _argmax(lls) == it.label
            acc_norm += _argmax([ll / len(c.encode()) for ll, c in zip(lls, it.choices, strict=True)]) == it.label
        nll_bits -= lls[it.label] / math.log(2)
        n_bytes += len(split_pair(it.context, it.choices[it.label])[1].encode())
    n = len(task.items)
    return {"n": n, "acc": acc / n, "acc_norm": acc_norm / n if task.kind == "choice" else None,
            "bits_per_byte": nll_bits / n_bytes}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equals, as numpy's argmax


def score_tasks(model, tok, tasks: list[Task], block_size: int, batch_size: int = 32,
                device: torch.device | str = "cpu", autocast=contextlib.nullcontext) -> dict[str, dict]:
    """score_task for each task, keyed by its name."""
    return {t.name: score_task(model, tok, t, block_size, batch_size, device, autocast) for t in tasks}


def load_tasks(specs: list[str]) -> list[Task]:
    """Each spec's task; two with the same name are refused (their figures would share a key)."""
    tasks = [load_task(s) for s in specs]
    names = [t.name for t in tasks]
    if dup := next((n for n in names if names.count(n) > 1), None):
        raise DataError(f"two tasks are named {dup!r} (a task's name is its file's stem); rename one file")
    return tasks


def trained_on_tests(data_dir: str | Path | None) -> bool:
    """Whether prepared data includes the standard library's test suites, which builtin:nextline is built from."""
    if not data_dir:
        return False
    try:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "stdlib+tests" in manifest.get("sources", [])


def contamination_warning(specs: list[str], data_dir: str | Path | None) -> str | None:
    """The warning for scoring builtin:nextline on a run that trained on its source, else None."""
    if any(s.startswith(BUILTIN_PREFIX) for s in specs) and trained_on_tests(data_dir):
        return ("warning: this run trained on stdlib+tests, the test suites builtin:nextline is built from; its "
                "nextline score measures memory, not prediction")
    return None
