"""Tokenizers, stored in Hugging Face `tokenizers` format (tokenizer.json).

- `bpe`:   a byte-level BPE trained on the corpus (GPT-2's pre-tokenization, no prefix space).
- `bytes`: ids 0..255 are the raw bytes, then the special tokens; nothing is trained.
- a path:  an existing tokenizer.json of any kind (byte-level, byte-fallback, SentencePiece, WordPiece...).

Byte-level means lossless: every string is a sequence of bytes and every byte has a token, so
decode(encode(s)) == s for any valid text (emoji, CJK, control characters).

Text is text: the literal characters of a special token ("<|endoftext|>" in a tokenizer tutorial or in
nextoken's own source) are encoded like any other characters, in documents and in prompts alike; only
prepare inserts the separator id, once after each document. Every tokenizer this module returns has
`encode_special_tokens` set for that (the flag is not saved in tokenizer.json, so loading sets it again).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from nextoken.errors import DataError
from nextoken.paths import shown

EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT]
# The end-of-text token of a tokenizer is the first of these it has: nextoken's own, then Llama 2's and
# Llama 3's, so that an imported model separates documents with the token it was trained with (interop/).
EOT_SPELLINGS = (EOT, "</s>", "<|end_of_text|>")


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The printable stand-in for each byte used by byte-level BPE (GPT-2, Radford et al. 2019):
    printable Latin-1 bytes stand for themselves, the others map to code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _text_only(tok: Tokenizer) -> Tokenizer:
    # tokenizers splits added tokens out of the input before the model sees it, so a literal
    # "<|endoftext|>" inside a document would become a separator; this makes it ordinary text.
    tok.encode_special_tokens = True
    return tok


def _byte_level(tok: Tokenizer, use_regex: bool) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE on the given documents; the 256 byte symbols are always in the vocabulary.
    The trainer adds the special tokens only after training, so it learns from their literals in the
    documents as ordinary text: the same way the documents are then encoded."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(f"--vocab-size {vocab_size} is too small; a byte-level BPE needs at least "
                        f"{256 + len(SPECIAL_TOKENS)}")
    tok = _byte_level(Tokenizer(models.BPE()), use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _text_only(tok)


def bytes_tokenizer() -> Tokenizer:
    """Ids 0..255 are bytes 0..255; the special tokens follow."""
    vocab = {ch: b for b, ch in byte_to_unicode().items()}
    tok = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=[])), use_regex=False)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return _text_only(tok)


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"tokenizer file {shown(p)} does not exist; pass bpe, bytes or a path to a tokenizer.json")
    try:  # read by Python: the Rust bindings refuse a path that is not UTF-8
        tok = Tokenizer.from_str(p.read_text(encoding="utf-8"))
    except Exception:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{shown(p)} is not a Hugging Face tokenizer.json; pass bpe, bytes or a valid file") from None
    if end_of_text(tok) is None:
        tok.add_special_tokens([EOT])
    return _text_only(tok)


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """tokenizer.json as `Tokenizer.save` writes it, written by Python (any path the OS takes)."""
    Path(path).write_text(tok.to_str(pretty=True), encoding="utf-8")


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def end_of_text(tok: Tokenizer) -> str | None:
    """The tokenizer's end-of-text token (EOT_SPELLINGS), or None."""
    return next((t for t in EOT_SPELLINGS if tok.token_to_id(t) is not None), None)


def eot_id(tok: Tokenizer) -> int:
    token = end_of_text(tok)
    assert token is not None, "every nextoken tokenizer carries an end-of-text token"
    return tok.token_to_id(token)


def encode_documents(tok: Tokenizer, docs: Sequence[str], token_bytes: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the documents, each followed by the end-of-text separator, and the UTF-8 bytes
    each position stands for; both int64 arrays of shape (sum of tokens + len(docs),). The bytes of
    a document's positions add up to its UTF-8 length, for any tokenizer.

    A token's id alone cannot say its bytes in general: a lone byte-fallback `<0xC3>` decodes to
    U+FFFD (3 bytes, for 1), a "▁" piece may be a space the normalizer prepended, a WordPiece word
    stands for whatever whitespace its pre-tokenizer dropped before it. So a document whose
    `token_bytes` (token_byte_lengths, passed to compute it once) add up to its UTF-8 length keeps
    them: each byte-level token stands for its own bytes. Any other document takes its bytes from the
    offsets of this very encoding: a position stands for the text from the end of the previous token
    to its own end, the separator for what is left of its document (nothing, for a lossless tokenizer)."""
    assert tok.encode_special_tokens, "nextoken tokenizers encode special-token literals as text"
    if token_bytes is None:
        token_bytes = token_byte_lengths(tok)
    encs = tok.encode_batch(list(docs), add_special_tokens=False)
    n = np.fromiter((len(e.ids) + 1 for e in encs), np.int64, len(encs))
    sep = eot_id(tok)
    ids = np.fromiter(itertools.chain.from_iterable(itertools.chain(e.ids, (sep,)) for e in encs), np.int64, n.sum())
    counts = token_bytes[ids]
    first = np.cumsum(n) - n
    doc_bytes = np.fromiter((len(d.encode("utf-8")) for d in docs), np.int64, len(docs))
    exact = (np.add.reduceat(counts, first) == doc_bytes) & (np.minimum.reduceat(counts, first) >= 0)
    if not exact.all():  # ~2x the encoding time, so only where the ids do not say the bytes
        redo = np.flatnonzero(~exact)
        counts[np.repeat(~exact, n)] = _offset_byte_counts([encs[i] for i in redo], [docs[i] for i in redo],
                                                           byte_fallback_pieces(tok))
    return ids, counts


def _offset_byte_counts(encs: list, docs: list[str], fallback: np.ndarray) -> np.ndarray:
    """Bytes per position (the separator after each document included) from the token offsets, then spread
    over the byte-fallback pieces of a character (_spread_byte_pieces)."""
    n = np.fromiter((len(e.ids) + 1 for e in encs), np.int64, len(encs))
    # End of each position in characters of its document (the separator ends at the document's end),
    # then in characters of the documents laid end to end.
    ends = np.fromiter(itertools.chain.from_iterable(
        itertools.chain((end for _, end in e.offsets), (len(d),)) for e, d in zip(encs, docs, strict=True)),
        np.int64, n.sum())
    doc_chars = np.fromiter((len(d) for d in docs), np.int64, len(docs))
    ends += np.repeat(np.cumsum(doc_chars) - doc_chars, n)
    ends = np.maximum.accumulate(ends)  # a token never ends before its predecessor (guards odd offsets)
    text = "".join(docs)
    if not text.isascii():  # characters to bytes: the UTF-8 length of each code point, accumulated
        cp = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        utf8_len = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
        ends = np.concatenate([[0], np.cumsum(utf8_len)])[ends]
    counts = np.diff(ends, prepend=0)
    if not fallback.any():
        return counts
    ids = np.fromiter(itertools.chain.from_iterable(itertools.chain(e.ids, (-1,)) for e in encs), np.int64, n.sum())
    spans = np.fromiter(itertools.chain.from_iterable(
        itertools.chain(itertools.chain.from_iterable(e.offsets), (-1, -1)) for e in encs), np.int64, 2 * n.sum())
    return _spread_byte_pieces(counts, np.where(ids >= 0, fallback[np.maximum(ids, 0)], False), spans.reshape(-1, 2))


def _spread_byte_pieces(counts: np.ndarray, is_piece: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """A character outside a byte-fallback vocabulary becomes one <0xNN> piece per UTF-8 byte, all with the
    character's offsets, so the offsets give its bytes to the first position of that span (a prepended "▁"
    included) and 0 to the rest; a window cutting the character then counts bytes that are not its targets'.
    Within each run of positions sharing one span, each piece gets its one byte and what is left of the span's
    bytes (the non-piece positions' share: a "▁" the normalizer prepended stands for none) goes to the first
    non-piece position. Sums per span are unchanged."""
    new_run = np.ones(len(counts), dtype=bool)
    new_run[1:] = (spans[1:] != spans[:-1]).any(axis=1) | (spans[1:, 0] < 0)
    run = np.cumsum(new_run) - 1
    total = np.bincount(run, weights=counts).astype(np.int64)
    pieces = np.bincount(run, weights=is_piece).astype(np.int64)
    fits = (pieces > 0) & (pieces <= total)
    at = fits[run]
    out = counts.copy()
    out[at] = is_piece[at]
    # the rest of each run's bytes: to its first non-piece position, or its first position if all are pieces
    first = np.flatnonzero(new_run)
    receiver = first.copy()
    others = np.flatnonzero(~is_piece)
    runs_with_other, where = np.unique(run[others], return_index=True)
    receiver[runs_with_other] = others[where]
    out[receiver[fits]] += total[fits] - pieces[fits]
    return out


def byte_fallback_pieces(tok: Tokenizer) -> np.ndarray:
    """Which ids are byte-fallback pieces <0x00>..<0xFF> (Llama 2, SentencePiece): one UTF-8 byte each."""
    n = tok.get_vocab_size(with_added_tokens=True)
    if not getattr(tok.model, "byte_fallback", False):
        return np.zeros(n, dtype=bool)
    return np.array([re.fullmatch(r"<0x[0-9A-F]{2}>", tok.id_to_token(i) or "") is not None for i in range(n)])


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for, shape (vocab,); special tokens 0, and -1 for every token
    of a tokenizer that is not byte-level, whose bytes depend on the context (see encode_documents).
    Evaluation falls back on this table only for data prepared before prepare recorded the bytes of
    each position (2026-11-30), where it is exact for byte-level tokenizers (bpe, bytes, GPT-2-style)."""
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    n = tok.get_vocab_size(with_added_tokens=True)
    special = {t["id"] for t in json.loads(tok.to_str()).get("added_tokens", []) if t.get("special")}
    lengths = np.zeros(n, dtype=np.int64)
    if not isinstance(tok.decoder, decoders.ByteLevel):
        lengths[:] = -1
        lengths[list(special)] = 0
        return lengths
    for i in range(n):
        if i in special:
            continue
        piece = tok.id_to_token(i)
        if piece is None:
            continue
        if all(c in to_byte for c in piece):
            lengths[i] = len(piece)
        else:
            lengths[i] = len(tok.decode([i]).encode("utf-8"))
    return lengths
