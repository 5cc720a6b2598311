"""Tokenizers, all byte-level and stored in Hugging Face `tokenizers` format (tokenizer.json).

- `bpe`:   a byte-level BPE trained on the corpus (GPT-2's pre-tokenization, no prefix space).
- `bytes`: ids 0..255 are the raw bytes, then the special tokens; nothing is trained.
- a path:  an existing tokenizer.json.

Byte-level means lossless: every string is a sequence of bytes and every byte has a token, so
decode(encode(s)) == s for any valid text (emoji, CJK, control characters).

Text is text: the literal characters of a special token ("<|endoftext|>" in a tokenizer tutorial or in
nextoken's own source) are encoded like any other characters, in documents and in prompts alike; only
prepare inserts the separator id, once after each document. Every tokenizer this module returns has
`encode_special_tokens` set for that (the flag is not saved in tokenizer.json, so loading sets it again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from nextoken.errors import DataError

EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT]


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
        raise DataError(f"tokenizer file {p} does not exist; pass bpe, bytes or a path to a tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{p} is not a Hugging Face tokenizer.json; pass bpe, bytes or a valid file") from None
    if tok.token_to_id(EOT) is None:
        tok.add_special_tokens([EOT])
    return _text_only(tok)


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    assert i is not None, "every nextoken tokenizer carries the end-of-text token"
    return i


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (special tokens: 0). Bits per byte sums these over the
    evaluated targets, so it is exact for any slice of the data."""
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    n = tok.get_vocab_size(with_added_tokens=True)
    special = {t["id"] for t in json.loads(tok.to_str()).get("added_tokens", []) if t.get("special")}
    lengths = np.zeros(n, dtype=np.int64)
    byte_level = isinstance(tok.decoder, decoders.ByteLevel)
    for i in range(n):
        if i in special:
            continue
        piece = tok.id_to_token(i)
        if piece is None:
            continue
        if byte_level and all(c in to_byte for c in piece):
            lengths[i] = len(piece)
        else:
            lengths[i] = len(tok.decode([i]).encode("utf-8"))
    return lengths
