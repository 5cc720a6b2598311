"""Small generated corpora, written as text files for `prepare` (the lab's smoke budget, the periodic sequence of
`perplexity-bounds`) or as ready token examples (modular arithmetic for `grokking`)."""

from __future__ import annotations

import random
import string
from pathlib import Path


def python_like(folder: str | Path, n_docs: int = 60, seed: int = 0) -> Path:
    """Python-like text with structure a tiny model learns in a few dozen steps (the tests' corpus)."""
    rng = random.Random(seed)
    names = ["alpha", "beta", "gamma", "delta", "count", "value", "items", "total", "result", "name"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        lines = []
        for _ in range(rng.randint(8, 20)):
            a, b = rng.sample(names, 2)
            lines.append(rng.choice([
                f"def {a}_{b}({a}, {b}):\n    return {a} + {b}\n",
                f"for {a} in {b}:\n    {a} += 1\n",
                f"if {a} > {rng.randint(0, 99)}:\n    print({b})\n",
                f"{a} = [{b} * {rng.randint(1, 9)} for {b} in range({rng.randint(2, 20)})]\n",
            ]))
        (folder / f"doc_{d:03d}.py").write_text("".join(lines))
    return folder


def periodic(folder: str | Path, period: int = 16, n_docs: int = 40, doc_chars: int = 2000, seed: int = 0) -> Path:
    """Documents that repeat one string of `period` distinct letters, each from a random phase: every character
    determines the next, so a model can reach perplexity 1 on it."""
    rng = random.Random(seed)
    unit = "".join(rng.sample(string.ascii_lowercase, period))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        phase = rng.randrange(period)
        text = (unit * (doc_chars // period + 2))[phase:phase + doc_chars]
        (folder / f"doc_{d:03d}.txt").write_text(text)
    return folder
