"""Hugging Face `datasets` as a corpus source of `nextoken prepare` (data/sources.py dispatches here).

    nextoken prepare DIR ...                  a folder written by `Dataset.save_to_disk` (or a DatasetDict's:
                                              its `train` split, or DIR/SPLIT for another), found by its files
    nextoken prepare hf:FILES ...             .arrow, .parquet, .json/.jsonl or .csv files (a glob too), read by
                                              `datasets.load_dataset(builder, data_files=FILES, streaming=True)`
    nextoken prepare hf:NAME[@SPLIT] ...      a dataset directory, or a hub name where the machine has the
                                              internet (untested here): `load_dataset(NAME, split=SPLIT,
                                              streaming=True)`, split `train` by default

Rows are read in record batches (`save_to_disk` folders are memory-mapped Arrow, the others streamed), so memory
stays bounded whatever the dataset's size. `--text-field` names the column (default `text`); each row is a
document, in the dataset's order, so the train/val split by document stays deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from nextoken.errors import DataError
from nextoken.interop import require

PREFIX = "hf:"
_BUILDERS = {".arrow": "arrow", ".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_BATCH = 1000


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder `save_to_disk` wrote (a Dataset, or a DatasetDict of them)."""
    return path.is_dir() and ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def size_of(spec: str) -> int:
    """Bytes on disk behind a dataset source (0 for a hub name), for the progress bar."""
    p = Path(spec.removeprefix(PREFIX).rsplit("@", 1)[0])
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return 0


def iter_texts(spec: str, text_field: str) -> Iterator[str]:
    """The `text_field` of each row of the dataset `spec` (a save_to_disk folder, or `hf:...`), in order.
    Raises DataError for a missing column or a non-string value, InteropError without `datasets`."""
    datasets = require("datasets", "reading a Hugging Face dataset")
    ds, where = _open(datasets, spec)
    names = getattr(ds, "column_names", None)
    if names is not None and text_field not in names:
        raise DataError(f"{where} has no column {text_field!r} (columns: {', '.join(names)}); set the column with "
                        "--text-field NAME")
    if names is not None and len(names) > 1:
        ds = ds.select_columns([text_field])  # read only the text column's pages
    for batch in ds.iter(batch_size=_BATCH):
        if text_field not in batch:
            raise DataError(f"{where} has no column {text_field!r}; set the column with --text-field NAME")
        for text in batch[text_field]:
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(f"{where}: column {text_field!r} holds {type(text).__name__}, not text")
            yield text


def _open(datasets, spec: str):
    target, _, split = spec.removeprefix(PREFIX).partition("@")
    p = Path(target)
    try:
        if is_saved_dataset(p):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[_pick_split(list(ds), split, target)]
            return ds, target
        if not spec.startswith(PREFIX):
            raise DataError(f"{spec} is not a dataset folder")
        suffix = next((s for s in _BUILDERS if target.lower().endswith(s)), None)
        if suffix:
            return datasets.load_dataset(_BUILDERS[suffix], data_files=target, split=split or "train",
                                         streaming=True), target
        return datasets.load_dataset(target, split=split or "train", streaming=True), target
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (its own DatasetNotFoundError, OSError, ValueError, ...)
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
        raise DataError(f"datasets cannot read {target} ({why}); pass a save_to_disk folder, data files, or a dataset "
                        "name where the machine has the internet") from None


def _pick_split(splits: list[str], split: str, target: str) -> str:
    if split:
        if split not in splits:
            raise DataError(f"{target} has no split {split!r} (splits: {', '.join(splits)})")
        return split
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise DataError(f"{target} holds the splits {', '.join(splits)}; pick one with {PREFIX}{target}@SPLIT")
