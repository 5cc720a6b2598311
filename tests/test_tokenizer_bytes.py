"""Bits per byte for any tokenizer prepare accepts (issue 15, fault 2): the bytes attributed to the token
positions of a document add up to its UTF-8 length, a split's to the manifest's count, and evaluation sums
them over its targets. Each tokenizer family is built here with `tokenizers`; nothing is downloaded."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from nextoken.config import ModelConfig
from nextoken.data.loader import TokenData
from nextoken.data.prepare import PrepareOptions, _fit_counts, open_byte_counts, prepare
from nextoken.data.tokenizer import (
    bytes_tokenizer,
    encode_documents,
    eot_id,
    load_tokenizer,
    token_byte_lengths,
    train_bpe,
)
from nextoken.errors import DataError
from nextoken.eval.evaluate import evaluate
from nextoken.model import GPT

TRAIN = ["def café(x):\n    return x + 1  # ok\n", "Hello world, naïve café!\n\tTabs  and  spaces.\n"] * 20
DOCS = [  # every val document starts with "x", one byte whatever the tokenizer (see test_evaluation_...)
    "x café🐕",
    "leading  spaces\n\n\ttabs, punctuation! and 日本語 ",
    "x = [naïve, 'ünïcode']  # 🤖🚀\n",
    "  Zebra \u200b\ufeff\x01 end\n\n",
]


def llama() -> Tokenizer:
    """Byte-fallback BPE as Llama 2's tokenizer.json: pieces "▁caf", bytes as <0xC3>, a prepended "▁"."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in "▁abcdefghijklmnopqrstuvwxyz":
        vocab[piece] = len(vocab)
    merges = [("▁", "c"), ("▁c", "a"), ("▁ca", "f"), ("▁", "x")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def sentencepiece_bpe() -> Tokenizer:
    """"▁" pieces from a Metaspace pre-tokenizer and decoder, <unk> for characters outside the vocabulary."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"], show_progress=False))
    return tok


def wordpiece() -> Tokenizer:
    """BERT-style: lower-cased, split on whitespace (dropped) and punctuation, "##" continuations."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    tok.train_from_iterator(TRAIN, trainers.WordPieceTrainer(vocab_size=80, special_tokens=["[UNK]", "[SEP]"],
                                                             show_progress=False))
    return tok


def unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(TRAIN, trainers.UnigramTrainer(vocab_size=60, special_tokens=["<unk>"], unk_token="<unk>",
                                                           show_progress=False))
    return tok


FAMILIES = {
    "byte-level-bpe": lambda: train_bpe(TRAIN, 300),
    "bytes": bytes_tokenizer,
    "byte-fallback-bpe": llama,
    "sentencepiece-bpe": sentencepiece_bpe,
    "wordpiece": wordpiece,
    "unigram": unigram,
}


@pytest.fixture(params=list(FAMILIES))
def tokenizer_file(request, tmp_path):
    """The family's tokenizer.json, as `prepare --tokenizer PATH` takes it."""
    path = tmp_path / f"{request.param}.json"
    FAMILIES[request.param]().save(str(path))
    return path


def utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def test_the_bytes_of_a_documents_tokens_are_its_utf8_bytes(tokenizer_file):
    tok = load_tokenizer(tokenizer_file)
    ids, counts = encode_documents(tok, DOCS)
    ends = np.flatnonzero(ids == eot_id(tok))  # "</s>" for the Llama-like family, "<|endoftext|>" added to others
    assert len(ends) == len(DOCS) and (counts >= 0).all()
    per_doc = np.add.reduceat(counts, np.concatenate([[0], ends[:-1] + 1]))
    assert per_doc.tolist() == [utf8(d) for d in DOCS]


def test_byte_fallback_pieces_count_one_byte_each():
    """The issue's case: with the lone <0xC3> decoded to U+FFFD, "café🐕" (9 bytes) was counted as 21."""
    tok = llama()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.encode_special_tokens = True
    ids, counts = encode_documents(tok, ["café🐕"])
    assert tok.encode("café🐕").tokens[:3] == ["▁caf", "<0xC3>", "<0xA9>"]
    assert int(counts.sum()) == 9
    assert (token_byte_lengths(tok) == -1).sum() > 0  # an id alone does not say its bytes here


def test_prepare_records_the_bytes_of_each_split(tokenizer_file, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(DOCS * 2):
        (corpus / f"doc_{i}.txt").write_text(doc, encoding="utf-8")
    m = prepare([str(corpus)], tmp_path / "d", PrepareOptions(tokenizer=str(tokenizer_file), val_fraction=0.5,
                                                             progress=False), log=print)
    for split in ("train", "val"):
        counts = open_byte_counts(tmp_path / "d", split)
        data = TokenData(tmp_path / "d", split)
        assert [len(c) for c in counts] == [len(s) for s in data.shards]
        assert sum(int(c.sum()) for c in counts) == m["splits"][split]["bytes"]
    # documents 0, 2, 4, 6 go to val (val_fraction 0.5); the sorted order of doc_0..doc_7 is the written one
    assert m["splits"]["val"]["bytes"] == sum(utf8(d) for d in DOCS[0::2]) * 2
    assert m["splits"]["train"]["bytes"] == sum(utf8(d) for d in DOCS[1::2]) * 2


def test_evaluation_counts_the_bytes_its_targets_stand_for(tokenizer_file, tmp_path):
    """One window over the whole val split: its targets are every position but the first, which is the
    "x" of the first val document, so the bytes evaluated are the split's bytes less one."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(DOCS):
        (corpus / f"doc_{i}.txt").write_text(doc, encoding="utf-8")
    m = prepare([str(corpus)], tmp_path / "d", PrepareOptions(tokenizer=str(tokenizer_file), val_fraction=0.5,
                                                             progress=False), log=print)
    val = TokenData(tmp_path / "d", "val")
    T = val.n_tokens - 1
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=T, vocab_size=m["vocab_size"]))
    table = token_byte_lengths(load_tokenizer(tmp_path / "d" / "tokenizer.json"))
    res = evaluate(model, val, T, table)
    assert res["eval_tokens"] == T
    assert res["eval_bytes"] == m["splits"]["val"]["bytes"] - 1


def test_data_without_byte_shards_falls_back_on_the_table_only_where_it_is_exact(bytes_data, tmp_path):
    """Data prepared before the byte shards: a byte-level tokenizer's table gives the same figure; any
    other tokenizer is refused with a one-line error rather than a wrong bits per byte."""
    old = tmp_path / "old"
    shutil.copytree(bytes_data, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for info in manifest["splits"].values():
        del info["byte_shards"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=16, vocab_size=manifest["vocab_size"]))
    table = token_byte_lengths(bytes_tokenizer())
    new_res = evaluate(model, TokenData(bytes_data, "val"), 16, table, max_tokens=256)
    old_res = evaluate(model, TokenData(old, "val"), 16, table, max_tokens=256)
    assert old_res["eval_bytes"] == new_res["eval_bytes"] > 0
    with pytest.raises(DataError, match="prepare the data again"):
        evaluate(model, TokenData(old, "val"), 16, token_byte_lengths(llama()), max_tokens=256)


def test_byte_counts_too_large_for_their_dtype_are_spread_with_the_same_sum():
    counts = np.array([3, 200_000, 1, 0, 5], dtype=np.int64)
    fitted = _fit_counts(counts)
    assert fitted.sum() == counts.sum() and fitted.max() <= np.iinfo(np.uint16).max
    with pytest.raises(DataError, match="drops most of the text"):
        _fit_counts(np.array([10**6, 0], dtype=np.int64))


def test_a_window_cutting_a_byte_fallback_character_counts_the_bytes_of_its_own_targets(tmp_path):
    """Issue 23: a character split over several <0xNN> pieces had all its bytes on the first piece (and the
    prepended "▁" took them before that), so a window starting or ending inside it counted the wrong bytes.
    Each piece now stands for its one byte: every window of a partial evaluation counts exactly the bytes of
    its targets, and the windows of the whole split still add up to the split's bytes."""
    tok = llama()
    path = tmp_path / "llama.json"
    tok.save(str(path))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc_{i}.txt").write_text("é日🐕ü" * (20 + i) + " x", encoding="utf-8")
    prepare([str(corpus)], tmp_path / "d", PrepareOptions(tokenizer=str(path), val_fraction=0.5, progress=False),
            log=lambda m: None)
    tok = load_tokenizer(tmp_path / "d" / "tokenizer.json")
    fallback = np.array([bool(re.fullmatch(r"<0x[0-9A-F]{2}>", tok.id_to_token(i) or ""))
                         for i in range(tok.get_vocab_size())])
    val = TokenData(tmp_path / "d", "val")
    (counts,) = open_byte_counts(tmp_path / "d", "val")
    ids = np.asarray(val.shards[0])
    assert (counts[fallback[ids]] == 1).all()  # one byte per <0xNN> piece, the "▁" before them none
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=7, vocab_size=tok.get_vocab_size()))
    table = token_byte_lengths(tok)
    whole = evaluate(model, val, 7, table)
    n_windows = whole["eval_tokens"] // 7
    for w in range(n_windows):  # each window alone: its targets are positions 7w+1 .. 7w+7
        y = ids[7 * w + 1:7 * w + 8]
        true_bytes = int(fallback[y].sum()) + 2 * int((y == tok.token_to_id("▁x")).sum())  # "▁" and "</s>": 0
        counted = int(counts[7 * w + 1:7 * w + 8].sum())
        assert counted == true_bytes, w
    assert whole["eval_bytes"] == int(counts[1:n_windows * 7 + 1].sum())


def test_byte_fallback_data_prepared_before_the_spread_still_evaluates_with_a_warning(tmp_path):
    tok = llama()
    tok.save(str(tmp_path / "llama.json"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc_{i}.txt").write_text("é日" * 30 + " x", encoding="utf-8")
    prepare([str(corpus)], tmp_path / "d", PrepareOptions(tokenizer=str(tmp_path / "llama.json"), val_fraction=0.5,
                                                         progress=False), log=lambda m: None)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    del manifest["byte_counts_version"]
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=manifest["vocab_size"]))
    table = token_byte_lengths(load_tokenizer(tmp_path / "d" / "tokenizer.json"))
    with pytest.warns(UserWarning, match="prepare the data again"):
        evaluate(model, TokenData(tmp_path / "d", "val"), 8, table, max_tokens=16)
