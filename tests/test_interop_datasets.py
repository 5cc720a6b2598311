"""`nextoken prepare` from Hugging Face `datasets` (interop/datasets_source.py): a save_to_disk folder, a
DatasetDict's split, and data files through `load_dataset`, each giving the tokens of the same documents read
natively; a missing column is one line. Nothing is downloaded."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from nextoken.cli import main  # noqa: E402
from nextoken.data.prepare import PrepareOptions, prepare  # noqa: E402

DOCS = [f"def f{i}(x):\n    return x * {i}  # ünïcode 🙂 {'word ' * (i % 7)}\n" for i in range(60)]


def _prepare(src, out, **kw):
    opt = PrepareOptions(**{"tokenizer": "bytes", "val_fraction": 0.1, "progress": False, **kw})
    return prepare([str(src)], out, opt, log=lambda m: None)


def _tokens(data, split):
    return np.concatenate([np.fromfile(p, dtype=np.uint16) for p in sorted((data / split).glob("shard_*.bin"))])


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The same documents as a .jsonl file, read by nextoken's own reader."""
    root = tmp_path_factory.mktemp("native")
    (root / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in DOCS))
    _prepare(root / "docs.jsonl", root / "data", text_field="content")
    return root


def _same_tokens(a, b):
    for split in ("train", "val"):
        assert np.array_equal(_tokens(a, split), _tokens(b, split)), split
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["documents"] == mb["documents"] == len(DOCS)
    assert ma["splits"]["val"]["bytes"] == mb["splits"]["val"]["bytes"]


def test_save_to_disk_folder_is_a_source(tmp_path, native):
    ds = datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "content": DOCS})
    ds.save_to_disk(str(tmp_path / "ds"))
    _prepare(tmp_path / "ds", tmp_path / "data", text_field="content")  # found by its files, no prefix needed
    _same_tokens(tmp_path / "data", native / "data")


def test_dataset_dict_takes_train_or_the_named_split(tmp_path, native):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": DOCS}),
                               "test": datasets.Dataset.from_dict({"content": DOCS[:5]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    _prepare(tmp_path / "dd", tmp_path / "data", text_field="content")
    _same_tokens(tmp_path / "data", native / "data")
    m = _prepare(f"hf:{tmp_path / 'dd'}@test", tmp_path / "test", text_field="content", val_fraction=0.2)
    assert m["documents"] == 5


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow"])
def test_data_files_through_load_dataset(tmp_path, native, fmt):
    ds = datasets.Dataset.from_dict({"content": DOCS})
    path = tmp_path / f"docs.{fmt}"
    if fmt == "jsonl":
        path.write_text((native / "docs.jsonl").read_text())
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(tmp_path / "saved"))
        path = next((tmp_path / "saved").glob("*.arrow"))
    _prepare(f"hf:{path}", tmp_path / "data", text_field="content")
    _same_tokens(tmp_path / "data", native / "data")


def test_missing_column_is_one_line(tmp_path, capsys):
    datasets.Dataset.from_dict({"content": DOCS}).save_to_disk(str(tmp_path / "ds"))
    capsys.readouterr()
    code = main(["prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "data"), "--tokenizer", "bytes"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "'text'" in err and "content" in err, err
    assert not (tmp_path / "data").exists()
