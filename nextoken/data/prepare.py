"""Text to token shards: DATA/tokenizer.json, DATA/{train,val}/*.bin, DATA/manifest.json.

Beside each token shard `shard_N.bin` lies `bytes_N.bin`: the UTF-8 bytes of text each token position
stands for (BYTES_DTYPE), so bits per byte is exact for any window of any tokenizer. Data prepared
before 2026-11-30 has no byte shards; evaluation then falls back on token_byte_lengths.

Streaming: documents are read one at a time, tokenized in batches of about `buffer_mb`, and
appended to the current shard, so memory is bounded by the buffer, not by the corpus. BPE training
needs a first pass over the train documents; it reads at most `tokenizer_sample_mb` of them.

The split is by document and deterministic: document i (in the sorted order of the sources) goes
to val when i % k == 0 with k = round(1 / val_fraction), so any corpus of two or more documents
has both splits.

Everything is written into a temporary directory beside `out` and renamed into place at the end,
so an interrupted or failed prepare leaves no half-written data and never touches an existing one.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from nextoken.atomic import building
from nextoken.data import sources as S
from nextoken.data.tokenizer import (
    bytes_tokenizer,
    encode_documents,
    eot_id,
    load_tokenizer,
    save_tokenizer,
    token_byte_lengths,
    tokenizer_hash,
    train_bpe,
)
from nextoken.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "val")
BYTES_DTYPE = np.dtype(np.uint16)  # bytes per token position; larger counts are spread (_fit_counts)
# 2: a byte-fallback piece <0xNN> counts its one byte (tokenizer._spread_byte_pieces); data without the key gave a
# character's bytes to its first position, exact for a whole split but not for a window cutting the character.
BYTE_COUNTS_VERSION = 2


@dataclass
class PrepareOptions:
    tokenizer: str = "bpe"
    vocab_size: int = 4096
    val_fraction: float = 0.02
    text_field: str = "text"
    utf8: str = "strict"
    buffer_mb: float = 8.0
    shard_tokens: int = 1 << 28
    tokenizer_sample_mb: float = 64.0
    force: bool = False
    progress: bool = True


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        folder.mkdir(parents=True)
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.tokens = self.bytes = self.documents = 0
        self.shards: list[str] = []
        self.byte_shards: list[str] = []
        self._fhs = None  # (token file, byte-count file) of the current shard
        self._in_shard = 0

    def write(self, ids: np.ndarray, counts: np.ndarray) -> None:
        counts = _fit_counts(counts)
        while len(ids):
            if self._fhs is None or self._in_shard >= self.shard_tokens:
                self._open()
            take = min(len(ids), self.shard_tokens - self._in_shard)
            try:
                self._fhs[0].write(ids[:take].astype(self.dtype, copy=False).tobytes())
                self._fhs[1].write(counts[:take].astype(BYTES_DTYPE, copy=False).tobytes())
            except OSError as e:
                raise DataError(f"cannot write {self.folder}: {e.strerror}; free disk space and rerun") from None
            self._in_shard += take
            self.tokens += take
            ids, counts = ids[take:], counts[take:]

    def _open(self) -> None:
        self.close()
        n = len(self.shards)
        self.shards.append(f"shard_{n:05d}.bin")
        self.byte_shards.append(f"bytes_{n:05d}.bin")
        self._fhs = tuple(open(self.folder / name, "wb") for name in (self.shards[-1], self.byte_shards[-1]))
        self._in_shard = 0

    def close(self) -> None:
        for fh in self._fhs or ():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        self._fhs = None


def _fit_counts(counts: np.ndarray) -> np.ndarray:
    """Byte counts that fit BYTES_DTYPE with the same sum: a position standing for more (a WordPiece
    [UNK] for a 100 kB word, a long stretch a tokenizer drops) keeps the most it can hold and its
    excess goes to the next positions, then to the previous ones. Rare, so a Python loop."""
    cap = np.iinfo(BYTES_DTYPE).max
    if len(counts) == 0 or counts.max() <= cap:
        return counts
    out = np.minimum(counts, cap)
    carry = int((counts - out).sum())
    for i in itertools.chain(range(int(np.argmax(counts > cap)), len(out)), range(len(out) - 1, -1, -1)):
        take = min(carry, cap - int(out[i]))
        out[i] += take
        carry -= take
        if not carry:
            return out
    raise DataError(f"{int(counts.sum())} bytes of text gave only {len(counts)} tokens; the tokenizer drops "
                    "most of the text: pass one that covers the corpus (bpe or bytes cover any text)")


def _split_of(i: int, val_fraction: float) -> str:
    if val_fraction <= 0:
        return "train"
    k = max(1, round(1 / val_fraction))
    return "val" if i % k == 0 else "train"


def _build_tokenizer(srcs: list[S.Source], opt: PrepareOptions) -> Tokenizer:
    if opt.tokenizer == "bytes":
        return bytes_tokenizer()
    if opt.tokenizer != "bpe":
        return load_tokenizer(opt.tokenizer)
    limit = int(opt.tokenizer_sample_mb * 1e6)

    def train_docs() -> Iterator[str]:
        seen = 0
        stats = S.ReadStats()
        for i, doc in enumerate(S.iter_documents(srcs, stats, opt.text_field, opt.utf8)):
            if _split_of(i, opt.val_fraction) == "train":
                yield doc
                seen += len(doc)
                if seen >= limit:
                    return

    return train_bpe(train_docs(), opt.vocab_size)


def prepare(specs: list[str], out: str | Path, opt: PrepareOptions, log=None) -> dict:
    """Prepare `specs` into `out`; returns the manifest."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not opt.force:
        raise DataError(f"{out} already exists and is not empty; choose another --out or pass --force")
    if not 0 <= opt.val_fraction < 1:
        raise DataError("--val-fraction must be in [0, 1)")
    srcs = S.resolve(specs)
    total_bytes = sum(s.size for s in srcs)
    t0 = time.perf_counter()

    tok = _build_tokenizer(srcs, opt)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = shard_dtype(vocab)
    eot = eot_id(tok)
    t_tok = time.perf_counter() - t0

    with building(out) as tmp:
        writers = {s: _ShardWriter(tmp / s, dtype, opt.shard_tokens) for s in SPLITS}
        stats = S.ReadStats()
        _encode_all(srcs, tok, writers, stats, opt, total_bytes)
        for w in writers.values():
            w.close()
        if stats.documents == 0:
            raise DataError("the corpus holds no text (every document is empty or binary); "
                            "pass files with text in them")
        if writers["train"].tokens == 0:
            raise DataError("the train split is empty; give more documents or lower --val-fraction")
        save_tokenizer(tok, tmp / "tokenizer.json")
        manifest = {
            "format_version": FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": vocab,
            "eot_id": eot,
            "tokenizer": opt.tokenizer if opt.tokenizer in ("bpe", "bytes") else "file",
            "tokenizer_hash": tokenizer_hash(tok),
            "sources": specs,
            "documents": stats.documents,
            "files": stats.files,
            "skipped_binary": len(stats.skipped_binary),
            "skipped_not_utf8": len(stats.skipped_not_utf8),
            "skipped_null": stats.skipped_null,
            "utf8_replacements": stats.replaced,
            "val_fraction": opt.val_fraction,
            "byte_dtype": BYTES_DTYPE.name,
            "byte_counts_version": BYTE_COUNTS_VERSION,
            "splits": {s: {"tokens": w.tokens, "bytes": w.bytes, "documents": w.documents, "shards": w.shards,
                           "byte_shards": w.byte_shards}
                       for s, w in writers.items()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    dt = time.perf_counter() - t0
    n_tok = sum(w.tokens for w in writers.values())
    n_bytes = sum(w.bytes for w in writers.values())
    log(f"prepared {stats.documents} documents ({n_bytes / 1e6:.1f} MB) into {n_tok:,} tokens "
        f"(train {writers['train'].tokens:,}, val {writers['val'].tokens:,}), vocab {vocab}, {dtype.name}; "
        f"{n_bytes / 1e6 / dt:.2f} MB/s, {n_tok / dt:,.0f} tokens/s "
        f"({t_tok:.1f}s of it training the tokenizer)")
    if stats.replaced:
        log(f"replaced {stats.replaced} invalid UTF-8 sequences with U+FFFD")
    if stats.skipped_binary:
        log(f"skipped {len(stats.skipped_binary)} binary files (e.g. {stats.skipped_binary[0]})")
    if stats.skipped_null:
        log(f"skipped {stats.skipped_null} rows whose {opt.text_field!r} is null")
    if stats.skipped_not_utf8:
        log(f"skipped {len(stats.skipped_not_utf8)} files of the built-in corpus that are not UTF-8 "
            f"(e.g. {stats.skipped_not_utf8[0]})")
    return manifest


def _encode_all(srcs, tok, writers, stats, opt, total_bytes) -> None:
    buffers: dict[str, list[str]] = {s: [] for s in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    limit = int(opt.buffer_mb * 1e6)

    def flush(split: str) -> None:
        docs = buffers[split]
        if not docs:
            return
        ids, counts = encode_documents(tok, docs, token_bytes)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        assert int(counts.sum()) == n_bytes, "encode_documents attributes every byte of the documents once"
        w = writers[split]
        w.write(ids, counts)
        w.documents += len(docs)
        w.bytes += n_bytes
        buffers[split], sizes[split] = [], 0

    token_bytes = token_byte_lengths(tok)
    progress = _progress(total_bytes) if opt.progress else None
    on_bytes = (lambda n: progress.advance(progress.task_ids[0], n)) if progress else None
    try:
        if progress:
            progress.start()
        docs = S.iter_documents(srcs, stats, opt.text_field, opt.utf8, on_bytes=on_bytes)
        for i, doc in enumerate(docs):
            split = _split_of(i, opt.val_fraction)
            buffers[split].append(doc)
            sizes[split] += len(doc)
            if sizes[split] >= limit:
                flush(split)
        for s in SPLITS:
            flush(s)
    finally:
        if progress:
            progress.stop()


def _progress(total_bytes: int):
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    p = Progress("[bold]prepare", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                 transient=True, disable=not sys.stderr.isatty())
    p.add_task("read", total=total_bytes)
    return p


def check_tokenizer(data_dir: str | Path, tokenizer: Tokenizer, owner: str, tokenizer_file: str) -> None:
    """Raises DataError, in one line, when `data_dir` was not tokenized with `tokenizer` (the model's, named by
    `owner`): its ids would mean other strings, and every figure computed on them nothing."""
    manifest = read_manifest(data_dir)
    if manifest.get("tokenizer_hash") != tokenizer_hash(tokenizer):
        raise DataError(f"{data_dir} was prepared with another tokenizer than {owner}'s; prepare it with "
                        f"`nextoken prepare SOURCE --out DIR --tokenizer {tokenizer_file}`")


def read_manifest(data_dir: str | Path) -> dict:
    d = Path(data_dir)
    m = d / "manifest.json"
    if not m.is_file():
        raise DataError(f"{d} is not prepared data (no manifest.json); run `nextoken prepare SOURCE --out {d}`")
    try:
        manifest = json.loads(m.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{m} is corrupt; prepare the data again") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{d} was prepared by an incompatible nextoken (format "
                        f"{manifest.get('format_version')}); prepare it again")
    return manifest


def open_byte_counts(data_dir: str | Path, split: str) -> list[np.memmap] | None:
    """The bytes each token position of `split` stands for, one memmap per token shard (shards laid
    out as TokenData's), or None for data prepared before prepare recorded them."""
    d = Path(data_dir)
    manifest = read_manifest(d)
    info = manifest["splits"][split]
    if "byte_shards" not in info:
        return None
    out = []
    for name in info["byte_shards"]:
        path = d / split / name
        if not path.is_file():
            raise DataError(f"{path} is missing; prepare the data again")
        if path.stat().st_size:  # TokenData skips empty token shards too
            out.append(np.memmap(path, dtype=np.dtype(manifest["byte_dtype"]), mode="r"))
    return out


def open_tokenizer(data_dir: str | Path) -> Tokenizer:
    return load_tokenizer(Path(data_dir) / "tokenizer.json")
