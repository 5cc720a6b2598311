"""Corpus sources: files, directories, globs, .jsonl/.parquet, Hugging Face `datasets` (a save_to_disk folder or
`hf:...`, interop/datasets_source.py), and the built-in `stdlib` corpus.

`stdlib+tests` is the same corpus with the standard library's own test suites (about twice the
text: 31.5 MB against 14.4 MB on CPython 3.11), for experiments that need more unique data.

`stdlib-prose` is the English of the same files: per module one document of its docstrings (read with `ast`)
and comment blocks (read with `tokenize`), in source order, plus one document per topic of `pydoc_data`
(the language reference pages `help()` shows). Its i-th document is the prose of `stdlib`'s i-th (a module with
none gives the line "The module NAME."), so both corpora put the same modules in val: a mix of the two never
trains on the code whose docstrings it validates on. Deterministic for a given interpreter; its size and a
sample are in docs/corpora.md.

A source yields documents (str). Reading is streaming: one file, one JSON line or one parquet
record batch at a time, so memory never depends on the corpus size.

Invalid UTF-8: by default a source with bytes that are not UTF-8 is refused, naming the file and
offset (silently training on mojibake is worse than stopping). With `utf8="replace"` every bad
byte sequence becomes U+FFFD and the number of replacements is counted and reported.
"""

from __future__ import annotations

import ast
import glob
import io
import json
import os
import sysconfig
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nextoken.errors import DataError

# Directories of the standard library that hold its own test suites (excluded by default).
_STDLIB_TEST_DIRS = {"test", "tests", "idle_test"}
_STDLIB_SKIP_DIRS = {"site-packages", "__pycache__"}


@dataclass
class ReadStats:
    """What reading the sources found; bytes are of the decoded text re-encoded as UTF-8."""

    files: int = 0
    documents: int = 0
    bytes_read: int = 0
    replaced: int = 0
    skipped_binary: list[str] = field(default_factory=list)
    skipped_not_utf8: list[str] = field(default_factory=list)  # built-in sources only
    skipped_empty: int = 0
    skipped_null: int = 0  # jsonl and parquet rows whose text is null


def stdlib_files(include_tests: bool = False) -> list[Path]:
    """The .py sources of the running interpreter's standard library, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        skip = _STDLIB_SKIP_DIRS | (set() if include_tests else _STDLIB_TEST_DIRS)
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        if any(p in skip for p in rel):
            continue
        out += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return sorted(out)


@dataclass
class Source:
    """One resolved input: a path and how to read it."""

    path: Path
    kind: str  # text | jsonl | parquet | dataset (Hugging Face `datasets`, interop/datasets_source.py) | prose
    # (a stdlib module's docstrings and comments) | topics (pydoc_data's topics)
    explicit: bool  # named directly by the user (a binary file is then an error, not a skip)
    builtin: bool = False  # from `stdlib`: a file that is not UTF-8 (the test suite has some on purpose) is skipped
    spec: str = ""  # a dataset's spec as given (`hf:NAME@SPLIT`, or a save_to_disk folder)

    @property
    def size(self) -> int:
        """Bytes on disk it reads (0 for a hub dataset), for progress."""
        if self.kind == "dataset":
            from nextoken.interop.datasets_source import size_of

            return size_of(self.spec)
        if self.kind == "topics":
            return 0
        return self.path.stat().st_size


BUILTIN = ("stdlib", "stdlib+tests", "stdlib-prose")  # the corpora on every machine


def resolve(specs: list[str]) -> list[Source]:
    """Expand files, directories, globs and `stdlib` into a sorted, de-duplicated list of sources."""
    if not specs:
        raise DataError("no corpus given; pass files, directories, globs, `stdlib`, `stdlib+tests` or `stdlib-prose`")
    out: list[Source] = []
    for spec in specs:
        if spec in ("stdlib", "stdlib+tests"):
            out += [Source(p, "text", False, builtin=True)
                    for p in stdlib_files(include_tests=spec == "stdlib+tests")]
            continue
        if spec == "stdlib-prose":
            out += [Source(p, "prose", False, builtin=True) for p in stdlib_files()]
            out.append(Source(Path("pydoc_data/topics"), "topics", False, builtin=True))
            continue
        p = Path(spec)
        if spec.startswith("hf:") or _saved_dataset(p):
            out.append(Source(p, "dataset", True, spec=spec))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p)))
            if not files:
                raise DataError(f"directory {spec} holds no files; point at a directory with text files")
            out += [Source(f, _kind(f), False) for f in files]
        elif p.is_file():
            out.append(Source(p, _kind(p), True))
        elif any(c in spec for c in "*?["):
            files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            if not files:
                raise DataError(f"glob {spec!r} matches no files; check the pattern")
            out += [Source(f, _kind(f), False) for f in files]
        else:
            raise DataError(f"corpus source {spec} does not exist; pass an existing file, directory or glob")
    seen: set[Path] = set()
    unique = []
    for s in out:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def _saved_dataset(p: Path) -> bool:
    from nextoken.interop.datasets_source import is_saved_dataset

    return is_saved_dataset(p)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _kind(p: Path) -> str:
    name = p.name.lower()
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _decode(raw: bytes, where: str, utf8: str, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if utf8 != "replace":
            raise DataError(
                f"{where} is not valid UTF-8 (byte {e.start}); fix the file or pass --utf8 replace "
                "to replace bad bytes with U+FFFD"
            ) from None
    text = raw.decode("utf-8", errors="replace")
    stats.replaced += text.count("\ufffd") - raw.count("\ufffd".encode())
    return text


def _looks_binary(raw: bytes) -> bool:
    return b"\x00" in raw[:8192]


def iter_documents(sources: list[Source], stats: ReadStats, text_field: str = "text",
                   utf8: str = "strict", on_bytes=None) -> Iterator[str]:
    """Yield documents: a text file is one document, a jsonl line or parquet row is one."""
    for src in sources:
        stats.files += 1
        size = src.size
        if src.kind == "dataset":
            from nextoken.interop.datasets_source import iter_texts

            for text in iter_texts(src.spec, text_field):
                yield from _emit(text, stats)
        elif src.kind == "text":
            raw = src.path.read_bytes()
            if _looks_binary(raw):
                if src.explicit:
                    raise DataError(f"{src.path} looks like a binary file (it holds NUL bytes); "
                                    "pass text files")
                stats.skipped_binary.append(str(src.path))
            else:
                try:
                    text = _decode(raw, str(src.path), "strict" if src.builtin else utf8, stats)
                except DataError:
                    if not src.builtin:
                        raise
                    stats.skipped_not_utf8.append(str(src.path))
                else:
                    yield from _emit(text, stats)
        elif src.kind == "prose":  # one document per document of `stdlib`, so that the two split alike
            raw = src.path.read_bytes()
            try:
                code = "" if _looks_binary(raw) else raw.decode("utf-8")
            except UnicodeDecodeError:
                code = ""
            if code.strip():
                yield from _emit(module_prose(raw) or f"The module {_module_name(src.path)}.", stats)
        elif src.kind == "topics":
            from pydoc_data.topics import topics

            for name in sorted(topics):
                yield from _emit(topics[name], stats)
        elif src.kind == "jsonl":
            yield from _iter_jsonl(src.path, text_field, utf8, stats)
        else:
            yield from _iter_parquet(src.path, text_field, stats)
        if on_bytes:
            on_bytes(size)


def module_prose(source: bytes) -> str:
    """The English of a Python module: its docstrings (module, classes, functions; `ast.get_docstring`, indentation
    cleaned) and its comment blocks (consecutive `#` lines, `tokenize`), in source order, blank-line separated.
    Shebangs, coding lines and commented-out code are not prose and are left out; a module that does not parse
    gives what could be read before the error."""
    pieces: list[tuple[int, str]] = []  # (line, text)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and doc.strip():
                    line = node.body[0].lineno if node.body else 0
                    pieces.append((line, doc.strip()))
    block: list[str] = []
    start, last = 0, -2

    def close() -> None:
        text = "\n".join(block).strip()
        if text and any(c.isalpha() for c in text):
            pieces.append((start, text))
        block.clear()

    try:
        for tok in tokenize.tokenize(io.BytesIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            text = tok.string.lstrip("#").strip()
            line = tok.start[0]
            if text.startswith("!") or "coding" in text and "-*-" in text or _looks_like_code(text):
                continue
            if line != last + 1:
                close()
                start = line
            block.append(text)
            last = line
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        pass
    close()
    return "\n\n".join(text for _, text in sorted(pieces, key=lambda p: p[0]))


def _module_name(path: Path) -> str:
    rel = path.relative_to(sysconfig.get_paths()["stdlib"]).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


_CODE = ("import ", "from ", "def ", "class ", "return", "print(", "self.", "if ", "for ", "else:", "elif ")


def _looks_like_code(comment: str) -> bool:
    """A commented-out line of code rather than a sentence (a cheap test: it starts like a statement or ends in
    a colon or bracket)."""
    return comment.startswith(_CODE) or comment.endswith((":", ")", "]", "}", ",")) and " = " in comment


def _emit(text: str, stats: ReadStats) -> Iterator[str]:
    if not text.strip():
        stats.skipped_empty += 1
        return
    stats.documents += 1
    stats.bytes_read += len(text.encode("utf-8"))
    yield text


def _emit_row(text, where: str, stats: ReadStats) -> Iterator[str]:
    """A jsonl or parquet row alike: null text is skipped and counted (a dataset's missing documents), any other
    value that is not a string refused."""
    if text is None:
        stats.skipped_null += 1
        return
    if not isinstance(text, str):
        raise DataError(f"{where} is not a string ({type(text).__name__}); point --text-field at the text")
    yield from _emit(text, stats)


def _iter_jsonl(path: Path, text_field: str, utf8: str, stats: ReadStats) -> Iterator[str]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            line = _decode(raw, f"{path}:{lineno}", utf8, stats)
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{lineno} is not valid JSON; each line of a .jsonl file must be "
                                "one JSON object") from None
            if not isinstance(row, dict) or text_field not in row:
                raise DataError(f"{path}:{lineno} has no {text_field!r} field; set the field with "
                                "--text-field NAME")
            yield from _emit_row(row[text_field], f"{path}:{lineno}: field {text_field!r}", stats)


def _iter_parquet(path: Path, text_field: str, stats: ReadStats) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet needs pyarrow: pip install 'nextoken[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path} is not a readable parquet file ({type(e).__name__}); check the file") from None
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                        "set the column with --text-field NAME")
    for i, batch in enumerate(pf.iter_batches(columns=[text_field], batch_size=1024)):
        for j, text in enumerate(batch.column(0).to_pylist()):
            yield from _emit_row(text, f"{path} row {i * 1024 + j}: column {text_field!r}", stats)
