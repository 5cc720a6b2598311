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


def english_like(folder: str | Path, n_docs: int = 60, seed: int = 0) -> Path:
    """Short English-like paragraphs from a small grammar ("The cat sat on the mat."): the second domain of the
    lab's `mixture` experiment at the smoke budget, beside python_like."""
    rng = random.Random(seed)
    nouns = ["cat", "dog", "bird", "child", "teacher", "farmer", "river", "garden", "house", "mat"]
    verbs = ["sat on", "looked at", "walked to", "slept near", "ran past", "painted", "found", "left"]
    adjectives = ["old", "small", "quiet", "green", "happy", "cold", "bright", "tired"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        sentences = []
        for _ in range(rng.randint(4, 12)):
            a, b = rng.sample(nouns, 2)
            adj = rng.choice(adjectives)
            sentences.append(rng.choice([f"The {a} {rng.choice(verbs)} the {b}.", f"The {adj} {a} was {adj}.",
                                         f"A {a} and a {b} {rng.choice(verbs)} the {adj} {rng.choice(nouns)}."]))
        (folder / f"doc_{d:03d}.txt").write_text(" ".join(sentences) + "\n")
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


def modular_addition(out: str | Path, p: int = 97, train_fraction: float = 0.5, seed: int = 0) -> Path:
    """Prepared data of every equation "a + b = c", c = (a + b) mod p, one token per number (Power et al. 2022):
    a random `train_fraction` of the p² pairs in train, the rest in val. Written through `prepare` (a word-level
    tokenizer, each equation a document of 6 tokens with its end-of-text), then marked as fixed-length examples
    whose one target is c: the loader then yields whole equations and the loss counts only the answer
    (data/loader.py, ExampleSampler)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    from nextoken.data.prepare import PrepareOptions, prepare
    from nextoken.data.tokenizer import save_tokenizer

    out = Path(out)
    if (out / "manifest.json").is_file() and "examples" in json.loads((out / "manifest.json").read_text()):
        return out
    val_every = round(1 / (1 - train_fraction))  # prepare puts document i in val when i % val_every == 0
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(p) for b in range(p)]
    rng.shuffle(pairs)
    src = out.with_name(out.name + "-text")
    src.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"text": f"{a} + {b} = {(a + b) % p}"}) for a, b in pairs]
    (src / "equations.jsonl").write_text("\n".join(rows) + "\n")
    vocab = {str(i): i for i in range(p)} | {"+": p, "=": p + 1, "<|endoftext|>": p + 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>"])
    save_tokenizer(tok, src / "tokenizer.json")
    prepare([str(src / "equations.jsonl")], out, PrepareOptions(tokenizer=str(src / "tokenizer.json"),
            val_fraction=1 / val_every, progress=False, force=True), log=lambda m: None)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["examples"] = {"length": 6, "targets": [3], "p": p}  # [a + b = c eot]: y[3] is c
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
