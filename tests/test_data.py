import json
import tracemalloc

import numpy as np
import pytest
from conftest import make_corpus

from nextoken.data.loader import BatchSampler, TokenData, eval_windows
from nextoken.data.prepare import PrepareOptions, prepare
from nextoken.data.sources import ReadStats, Source, iter_documents, resolve, stdlib_files
from nextoken.data.tokenizer import bytes_tokenizer, load_tokenizer, token_byte_lengths, train_bpe
from nextoken.errors import DataError

HARD_TEXT = "héllo wörld 🤖🚀 日本語のテキスト 한국어 \x00\x01\x7f\t\r\n  mixed   spaces\u200b\ufeff end"


def quiet(**kw):
    return PrepareOptions(progress=False, **kw)


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_byte_level_tokenizers_are_lossless(kind):
    tok = bytes_tokenizer() if kind == "bytes" else train_bpe(["def f(x):\n    return x + 1\n"] * 50, 300)
    for text in [HARD_TEXT, "", " ", "\n\n\n", "a" * 1000, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∀x∈ℝ"]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_bytes_tokenizer_ids_are_bytes():
    tok = bytes_tokenizer()
    assert tok.encode("A\x00é").ids == [65, 0, 0xC3, 0xA9]
    assert tok.get_vocab_size() == 257


def test_token_byte_lengths_sum_to_utf8_bytes():
    tok = train_bpe([HARD_TEXT * 3, "import os\nimport sys\n" * 20], 320)
    lengths = token_byte_lengths(tok)
    assert lengths.sum() > 0
    ids = tok.encode(HARD_TEXT).ids
    assert int(lengths[ids].sum()) == len(HARD_TEXT.encode("utf-8"))


def test_prepare_writes_the_contract(bpe_data, corpus_dir):
    m = json.loads((bpe_data / "manifest.json").read_text())
    assert m["dtype"] == "uint16" and m["vocab_size"] == 320
    for split in ("train", "val"):
        info = m["splits"][split]
        ids = np.concatenate([np.fromfile(bpe_data / split / s, dtype=np.uint16) for s in info["shards"]])
        assert len(ids) == info["tokens"] and info["documents"] > 0
        assert (ids == m["eot_id"]).sum() == info["documents"]  # one separator per document
    total = sum(len(p.read_bytes()) for p in corpus_dir.iterdir())
    assert m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"] == total
    load_tokenizer(bpe_data / "tokenizer.json")


def test_split_is_deterministic_and_by_document(tmp_path, corpus_dir):
    a = prepare([str(corpus_dir)], tmp_path / "a", quiet(tokenizer="bytes", val_fraction=0.1), log=print)
    b = prepare([str(corpus_dir)], tmp_path / "b", quiet(tokenizer="bytes", val_fraction=0.1), log=print)
    assert a["splits"] == b["splits"]
    for split in ("train", "val"):
        assert (tmp_path / "a" / split / "shard_00000.bin").read_bytes() == \
            (tmp_path / "b" / split / "shard_00000.bin").read_bytes()
    assert a["splits"]["val"]["documents"] == 4  # documents 0, 10, 20, 30 of 40


def test_uint32_when_the_vocabulary_does_not_fit_uint16(tmp_path, corpus_dir):
    tok = bytes_tokenizer()
    tok.add_tokens([f"<extra_{i}>" for i in range(70_000)])
    tok.save(str(tmp_path / "big.json"))
    m = prepare([str(corpus_dir)], tmp_path / "d", quiet(tokenizer=str(tmp_path / "big.json")), log=print)
    assert m["dtype"] == "uint32" and m["vocab_size"] > 65536


def test_jsonl_and_parquet_sources(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"body": f"document number {i} " * 20} for i in range(12)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.table({"body": [r["body"] for r in rows]}), tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.parquet"):
        m = prepare([str(tmp_path / name)], tmp_path / f"out-{name}", quiet(tokenizer="bytes", text_field="body"),
                    log=print)
        assert m["documents"] == 12
        assert m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"] == sum(len(r["body"]) for r in rows)
    with pytest.raises(DataError, match="no 'text' field"):
        prepare([str(tmp_path / "c.jsonl")], tmp_path / "x", quiet(tokenizer="bytes"), log=print)


def test_rows_with_null_text_are_skipped_and_counted_alike_in_jsonl_and_parquet(tmp_path):
    """Issue 23: a .jsonl row with null text refused the whole file while parquet skipped such rows silently."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"document number {i} " * 20 if i % 4 else None for i in range(12)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    pq.write_table(pa.table({"text": texts}), tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.parquet"):
        logs = []
        m = prepare([str(tmp_path / name)], tmp_path / f"out-{name}", quiet(tokenizer="bytes"), log=logs.append)
        assert m["documents"] == 9 and m["skipped_null"] == 3
        assert any("skipped 3 rows whose 'text' is null" in line for line in logs), logs
    (tmp_path / "n.jsonl").write_text(json.dumps({"text": 5}))
    pq.write_table(pa.table({"text": [5]}), tmp_path / "n.parquet")
    for name in ("n.jsonl", "n.parquet"):
        with pytest.raises(DataError, match="is not a string"):
            prepare([str(tmp_path / name)], tmp_path / f"x-{name}", quiet(tokenizer="bytes"), log=print)


def test_invalid_utf8_is_refused_or_replaced_and_counted(tmp_path, corpus_dir):
    src = make_corpus(tmp_path / "c", n_docs=4)
    (src / "bad.txt").write_bytes(b"good text \xff\xfe more text \xc3 end")
    with pytest.raises(DataError, match="not valid UTF-8"):
        prepare([str(src)], tmp_path / "strict", quiet(tokenizer="bytes"), log=print)
    assert not (tmp_path / "strict").exists()
    m = prepare([str(src)], tmp_path / "replace", quiet(tokenizer="bytes", utf8="replace"), log=print)
    assert m["utf8_replacements"] == 3


def test_globs_and_directories(tmp_path, corpus_dir):
    m = prepare([str(corpus_dir / "doc_00*.py")], tmp_path / "g", quiet(tokenizer="bytes"), log=print)
    assert m["documents"] == 10


def test_prepare_streams_with_bounded_memory(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    chunk = ("x = compute(alpha, beta) + 1\n" * 3000)  # ~90 KB per document
    for i in range(120):  # ~11 MB in all
        (folder / f"f{i:03d}.py").write_text(f"# doc {i}\n" + chunk)
    tracemalloc.start()
    m = prepare([str(folder)], tmp_path / "out", quiet(tokenizer="bytes", buffer_mb=0.5, shard_tokens=2_000_000),
                log=print)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert m["splits"]["train"]["tokens"] > 10_000_000
    assert len(m["splits"]["train"]["shards"]) >= 5
    assert peak < 40e6, f"peak Python memory {peak / 1e6:.1f} MB grows with the corpus"


def test_prepare_never_overwrites_existing_data(tmp_path, corpus_dir):
    out = tmp_path / "d"
    prepare([str(corpus_dir)], out, quiet(tokenizer="bytes"), log=print)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        prepare([str(corpus_dir)], out, quiet(tokenizer="bytes"), log=print)
    with pytest.raises(DataError):
        prepare([str(tmp_path / "missing")], out, quiet(tokenizer="bytes", force=True), log=print)
    assert (out / "manifest.json").read_bytes() == before


def test_stdlib_corpus_excludes_tests():
    files = stdlib_files()
    assert len(files) > 300
    assert not any("test" in p.parts[-2:-1] or "tests" in p.parts for p in files)


def test_stdlib_with_tests_adds_the_test_suites_and_skips_non_utf8_files(tmp_path):
    plain, full = resolve(["stdlib"]), resolve(["stdlib+tests"])
    assert {s.path for s in plain} < {s.path for s in full}
    assert all(s.builtin for s in full)
    # the test suite holds files in other encodings on purpose: a built-in source skips them, a user's fails
    latin = tmp_path / "latin.py"
    latin.write_bytes("# caf\u00e9\n".encode("latin-1"))
    stats = ReadStats()
    assert list(iter_documents([Source(latin, "text", False, builtin=True)], stats)) == []
    assert stats.skipped_not_utf8 == [str(latin)]
    with pytest.raises(DataError, match="not valid UTF-8"):
        list(iter_documents([Source(latin, "text", False)], ReadStats()))


def test_partial_evaluation_spreads_its_windows_over_the_whole_split(bytes_data):
    data = TokenData(bytes_data, "train")
    T = 16
    whole = [x for x, _ in eval_windows(data, T, 0)]
    assert len(whole) * T > data.n_tokens - len(data.shards) * 2 * T  # every full window of every shard
    part = [x for x, _ in eval_windows(data, T, 10 * T)]
    assert len(part) == 10
    index = {tuple(w.tolist()): i for i, w in enumerate(whole)}
    picked = [index[tuple(w.tolist())] for w in part]  # each a window of the whole evaluation, evenly spaced
    assert picked == [j * len(whole) // 10 for j in range(10)]
    assert picked[-1] > 0.8 * len(whole)  # not the split's first documents
    assert len([x for x, _ in eval_windows(data, T, T + 1)]) == 2


def test_batches_are_teacher_forced_and_deterministic(bytes_data):
    data = TokenData(bytes_data, "train")
    s = BatchSampler(data, 16, seed=3)
    x, y = s.batch(5, 8)
    assert x.shape == y.shape == (8, 16)
    assert (x[:, 1:] == y[:, :-1]).all()  # targets are the inputs shifted by one
    x2, _ = s.batch(5, 8)
    assert (x == x2).all()
    xa, _ = s.batch(5, 8, 0, 4)
    xb, _ = s.batch(5, 8, 4, 4)
    assert (torch_cat(xa, xb) == x).all()  # rank slices make up the global batch


def torch_cat(a, b):
    import torch

    return torch.cat([a, b])


def test_context_longer_than_data_is_a_clear_error(bytes_data):
    data = TokenData(bytes_data, "val")
    with pytest.raises(DataError, match="fewer than one context window"):
        BatchSampler(data, data.n_tokens + 10, seed=0)


# ---- special-token literals are text (issue 15, fault 3) ----

LITERAL_DOCS = [
    "import tokenizers\n# GPT-2 ends every text with <|endoftext|>; a document may say so.\n",
    "def f():\n    return 1\n",
    "s = 'a<|endoftext|>b<|endoftext|>'  # twice, and the bare literal: <|endoftext|>",
]


def _write_corpus(tmp_path, docs, fmt):
    if fmt == "files":
        folder = tmp_path / "corpus"
        folder.mkdir()
        for i, doc in enumerate(docs):
            (folder / f"doc_{i}.py").write_text(doc)
        return str(folder)
    if fmt == "jsonl":
        (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
        return str(tmp_path / "c.jsonl")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet")
    return str(tmp_path / "c.parquet")


def _documents(data_dir, split):
    """The documents of a prepared split, decoded: the token runs between separators."""
    m = json.loads((data_dir / "manifest.json").read_text())
    tok = load_tokenizer(data_dir / "tokenizer.json")
    ids = np.concatenate([np.fromfile(data_dir / split / s, dtype=m["dtype"]) for s in m["splits"][split]["shards"]])
    ends = np.flatnonzero(ids == m["eot_id"])
    assert len(ends) == m["splits"][split]["documents"] and ends[-1] == len(ids) - 1  # one separator each
    return [tok.decode(run[:-1].tolist(), skip_special_tokens=False) for run in np.split(ids, ends + 1)[:-1]]


@pytest.mark.parametrize("fmt", ["files", "jsonl", "parquet"])
@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_special_token_literals_in_documents_are_text(tmp_path, kind, fmt):
    src = _write_corpus(tmp_path, LITERAL_DOCS, fmt)
    m = prepare([src], tmp_path / "d", quiet(tokenizer=kind, vocab_size=300, val_fraction=0.5), log=print)
    assert m["documents"] == 3
    assert m["splits"]["val"]["bytes"] + m["splits"]["train"]["bytes"] == sum(len(d.encode()) for d in LITERAL_DOCS)
    assert _documents(tmp_path / "d", "val") == LITERAL_DOCS[0::2]  # documents 0 and 2 (val_fraction 0.5)
    assert _documents(tmp_path / "d", "train") == LITERAL_DOCS[1:2]


def test_literals_of_any_registered_special_token_are_text(tmp_path):
    tok = bytes_tokenizer()
    tok.add_special_tokens(["<s>", "</s>", "<|im_start|>"])
    tok.save(str(tmp_path / "chat.json"))
    docs = ["<s>a chat</s> template: <|im_start|>user\n", "plain text\n", "<|im_start|><|endoftext|></s>"]
    prepare([_write_corpus(tmp_path, docs, "files")], tmp_path / "d",
            quiet(tokenizer=str(tmp_path / "chat.json"), val_fraction=0.5), log=print)
    assert _documents(tmp_path / "d", "val") + _documents(tmp_path / "d", "train") == [docs[0], docs[2], docs[1]]


def test_bpe_learns_special_token_literals_as_the_text_it_then_encodes():
    tok = train_bpe(["x = '<|endoftext|>'\n" * 50, "print(x)\n" * 50], 300)
    enc = tok.encode("a<|endoftext|>b", add_special_tokens=False)
    assert tok.token_to_id("<|endoftext|>") not in enc.ids
    assert tok.decode(enc.ids, skip_special_tokens=False) == "a<|endoftext|>b"
    assert "endoftext" in tok.get_vocab()  # merges learned from the literal, not skipped


def test_a_special_token_literal_typed_in_a_prompt_is_text(bytes_data):
    from nextoken.generate import encode_prompt

    tok = load_tokenizer(bytes_data / "tokenizer.json")
    ids = encode_prompt(tok, "x<|endoftext|>")
    assert tok.token_to_id("<|endoftext|>") not in ids and tok.decode(ids) == "x<|endoftext|>"
    assert encode_prompt(tok, "") == [tok.token_to_id("<|endoftext|>")]  # an empty prompt starts a document
