"""Paths as the OS has them: bytes that are not UTF-8 reach Python as lone surrogates (PEP 383), which can be
neither printed as UTF-8 nor handed to the Rust bindings (tokenizers, safetensors); nextoken reads and writes
such files through Python's own calls and prints them through `shown`."""

from __future__ import annotations

from pathlib import Path


def shown(text: str | Path) -> str:
    """`text` (a path, or a message naming one) printable: bytes that are not UTF-8 escaped as \\xNN."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no undecodable byte stands for
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
