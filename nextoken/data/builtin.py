"""The built-in corpora, prepared once and cached: the running interpreter's standard library (`stdlib`) and its
English (`stdlib-prose`, data/sources.py)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from nextoken.atomic import locked
from nextoken.data.prepare import PrepareOptions, prepare
from nextoken.data.sources import stdlib_files
from nextoken.errors import DataError

# what `--data NAME`, a mix (`--data stdlib=0.8,stdlib-prose=0.2`) and `eval --data NAME` accept
NAMES = ("stdlib", "stdlib+tests", "stdlib-prose")


def is_builtin(spec: str) -> bool:
    """`spec` names a built-in corpus (a prepared directory of the same name, in the working directory, wins)."""
    return spec in NAMES and not (Path(spec) / "manifest.json").is_file()


def cache_root() -> Path:
    if os.environ.get("NEXTOKEN_CACHE"):
        return Path(os.environ["NEXTOKEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nextoken"


def builtin_data(name: str = "stdlib", tokenizer: str = "bpe", vocab_size: int = 4096, log=None) -> Path:
    """Prepared data for the built-in corpus `name` with this tokenizer (bpe, bytes or a tokenizer.json: a mix
    prepares its built-in sources with its first source's), preparing it on first use."""
    assert name in NAMES, name
    files = stdlib_files(include_tests=name == "stdlib+tests")
    digest = hashlib.sha256("".join(f"{f}:{f.stat().st_size}" for f in files).encode()).hexdigest()[:10]
    tag = "bytes" if tokenizer == "bytes" else f"{tokenizer}{vocab_size}"
    if tokenizer not in ("bpe", "bytes"):
        if not Path(tokenizer).is_file():
            raise DataError(f"data.tokenizer {tokenizer} does not exist; use bpe, bytes or a tokenizer.json path")
        tag = "tok" + hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()[:10]
    kind = {"stdlib": "", "stdlib+tests": "+tests", "stdlib-prose": "-prose"}[name]
    out = cache_root() / f"stdlib{kind}-py{sys.version_info.major}{sys.version_info.minor}-{tag}-{digest}"
    if (out / "manifest.json").is_file():
        return out
    # Two first runs at once: one prepares, the other waits on the lock and then finds the manifest.
    with locked(out.parent / f".{out.name}.lock"):
        if not (out / "manifest.json").is_file():
            if log:
                what = {"stdlib": "standard library", "stdlib+tests": "standard library and its test suites",
                        "stdlib-prose": "standard library's docstrings and comments"}[name]
                log(f"preparing the built-in corpus {name} (Python {sys.version.split()[0]} {what}) into {out}")
            prepare([name], out, PrepareOptions(tokenizer=tokenizer, vocab_size=vocab_size, force=True), log=log)
    return out


def stdlib_data(tokenizer: str = "bpe", vocab_size: int = 4096, log=None) -> Path:
    """Prepared data for `stdlib` with this tokenizer, preparing it on first use."""
    return builtin_data("stdlib", tokenizer, vocab_size, log)
