"""The built-in task `builtin:nextline`: which line comes next, four choices, no download.

Built deterministically from the running interpreter's standard-library test suites (Lib/test, tests/,
idlelib/idle_test), which the default corpus `stdlib` never trains on (data/sources.py). Each item is up to
CONTEXT_LINES lines of a test file, the line that follows them, and three other lines of the same file
re-indented to the true line's indentation, so that indentation alone gives nothing away: choosing well needs
a model of what Python code says next. Chance is 25%. The items depend on the Python version: compare scores
across runs on the same interpreter.
"""

from __future__ import annotations

import random

from nextoken.errors import DataError
from nextoken.eval.tasks import Item, Task

N_ITEMS = 250  # 1,000 sequences, 100,231 tokens of forward passes for the default run: ~1.5 val evals
CONTEXT_LINES = 8
MIN_CHARS, MAX_CHARS = 12, 80  # a line with some content, short enough for a small context window
SEED = 0


def builtin_task(name: str) -> Task:
    if name != "nextline":
        raise DataError(f"no built-in task {name!r}; the built-in tasks: nextline")
    return nextline_task()


def _candidate(line: str) -> bool:
    s = line.strip()
    return MIN_CHARS <= len(s) <= MAX_CHARS and not s.startswith("#")


def nextline_task(n: int = N_ITEMS, seed: int = SEED) -> Task:
    from nextoken.data.sources import stdlib_files

    train_files = set(stdlib_files())
    files = [f for f in stdlib_files(include_tests=True) if f not in train_files]
    rng = random.Random(seed)
    rng.shuffle(files)
    items: list[Item] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # the test suite holds some non-UTF-8 files on purpose
            continue
        lines = text.splitlines()
        pool = [i for i, line in enumerate(lines) if _candidate(line)]
        answers = [i for i in pool if i >= CONTEXT_LINES]
        if len(pool) < 20 or not answers:
            continue
        for i in rng.sample(answers, min(2, len(answers))):  # two items a file: many files, many styles
            true = lines[i]
            indent = true[:len(true) - len(true.lstrip())]
            seen = {lines[j].strip() for j in range(i - CONTEXT_LINES, i + 1)}
            others = []
            for j in rng.sample(pool, len(pool)):
                s = lines[j].strip()
                if s not in seen:
                    seen.add(s)
                    others.append(indent + s)
                if len(others) == 3:
                    break
            if len(others) < 3:
                continue
            choices = [true, *others]
            rng.shuffle(choices)
            context = "".join(line + "\n" for line in lines[i - CONTEXT_LINES:i])
            items.append(Item(context, tuple(c + "\n" for c in choices), choices.index(true)))
            if len(items) == n:
                return Task("nextline", "choice", items)
    raise DataError(f"this Python's standard library has too few test files for builtin:nextline ({len(items)} "
                    f"items of {n}); is its test suite installed (Debian: python3-test)?")
