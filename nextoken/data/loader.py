"""Batches from token shards: x = ids[t : t+T], y = ids[t+1 : t+T+1] (teacher forcing).

The loader is stateless: the sequences of data step `s` are drawn from a generator seeded with
(seed, s), so the loader position is one integer. Resuming sets it, a rollback that skips batches
adds to it, and the global batch of a step is the same whatever the number of processes: rank r of
W takes its own slice of the step's sequences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nextoken.data.prepare import read_manifest
from nextoken.errors import DataError

IGNORE_INDEX = -100  # a target with this id contributes nothing to the loss (F.cross_entropy's default)


class TokenData:
    """The token shards of one split, memory-mapped (nothing is read until it is sampled)."""

    def __init__(self, data_dir: str | Path, split: str):
        self.dir = Path(data_dir)
        self.manifest = read_manifest(self.dir)
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.dir} has no {split!r} split; splits: {', '.join(self.manifest['splits'])}")
        info = self.manifest["splits"][split]
        dtype = np.dtype(self.manifest["dtype"])
        self.shards = []
        for name in info["shards"]:
            path = self.dir / split / name
            if not path.is_file():
                raise DataError(f"{path} is missing; prepare the data again")
            if path.stat().st_size % dtype.itemsize:
                raise DataError(f"{path} is truncated; prepare the data again")
            if path.stat().st_size:
                self.shards.append(np.memmap(path, dtype=dtype, mode="r"))
        self.n_tokens = sum(len(s) for s in self.shards)
        self.n_bytes = info["bytes"]
        self.split = split

    def check_context(self, block_size: int) -> None:
        longest = max((len(s) for s in self.shards), default=0)
        if longest < block_size + 1:
            raise DataError(
                f"the {self.split} split has {longest} tokens, fewer than one context window "
                f"({block_size}+1); lower --model.block_size or add text to the corpus"
            )


class BatchSampler:
    """Random windows of `block_size + 1` tokens, drawn by (seed, data_step); `stream` gives a source of a mix
    (data/mixture.py) its own draws."""

    def __init__(self, data: TokenData, block_size: int, seed: int, stream: int | None = None):
        data.check_context(block_size)
        self.data, self.T, self.seed, self.stream = data, block_size, seed, stream
        starts = np.array([max(len(s) - block_size, 0) for s in data.shards], dtype=np.int64)
        self._cum = np.cumsum(starts)

    def batch(self, data_step: int, n_seqs: int, offset: int = 0, count: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences [offset, offset+count) of the `n_seqs` drawn for `data_step`, as (x, y) int64."""
        count = n_seqs - offset if count is None else count
        return self.take(data_step, n_seqs, np.arange(offset, offset + count))

    def take(self, data_step: int, n_seqs: int, which: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences `which` of the `n_seqs` drawn for `data_step`."""
        picks = _rng(self.seed, self.stream, data_step).integers(0, self._cum[-1], size=n_seqs)[which]
        shard_idx = np.searchsorted(self._cum, picks, side="right")
        local = picks - np.concatenate([[0], self._cum[:-1]])[shard_idx]
        rows = np.stack([self.data.shards[s][o:o + self.T + 1] for s, o in zip(shard_idx, local, strict=True)])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


def _rng(seed: int, stream: int | None, data_step: int) -> np.random.Generator:
    return np.random.default_rng([seed, data_step] if stream is None else [seed, stream, data_step])


class PackedSampler:
    """Rows that start at a document boundary: best-fit packing with a BOS (nanochat's dataloader; Ding et al.
    2024, "Fewer Truncations Improve Language Modeling"), drawn by (seed, data_step) like the windows.

    A document becomes a unit: the end-of-text token before it, which serves as its BOS (the split's first
    document gets one), then its tokens. A unit of at most `block_size + 1` tokens is one piece; a longer one is
    cut into row-sized pieces overlapping by one token, so every one of its tokens is still a target once. Pieces
    shorter than a row are packed best-fit decreasing (each into the fullest row it fits), and a row's free end
    is padding: end-of-text inputs whose targets are IGNORE_INDEX. So every token of every document is a target
    exactly once, and a separator is one where another document follows in its row (nothing is predicted after
    a row's last document); every row starts at a document start except those that continue a document longer
    than a row. The plan is computed once from the data alone (nothing depends on the seed but the draws)."""

    def __init__(self, data: TokenData, block_size: int, seed: int, stream: int | None = None):
        data.check_context(block_size)
        self.data, self.T, self.seed, self.stream = data, block_size, seed, stream
        self.eot = int(data.manifest["eot_id"])
        self.segments, self.row_start = self._plan()

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(segments, row_start): segment i is (shard, start, length), start -1 for a made-up BOS before the
        shard's first token; row r is segments row_start[r]:row_start[r + 1]."""
        import bisect

        R = self.T + 1
        full, short = [], []  # pieces: (shard, start, length)
        for si, shard in enumerate(self.data.shards):
            ends = np.flatnonzero(np.asarray(shard) == self.eot)
            starts = np.concatenate([[-1], ends[:-1]])  # each unit starts at the separator before its document
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                length = end - start  # the BOS (separator or made-up) and the document's tokens
                if length <= R:
                    (full if length == R else short).append((si, start, length))
                    continue
                for p in range(start, end - 1, self.T):  # stride T: consecutive pieces share one token
                    n = min(R, end - p)
                    if n >= 2:
                        (full if n == R else short).append((si, p, n))
        rows: list[list[tuple[int, int, int]]] = [[piece] for piece in full]
        free: dict[int, list[int]] = {}  # free space -> rows with that much left
        sizes: list[int] = []  # the free-space values present, sorted
        for piece in sorted(short, key=lambda p: -p[2]):  # best-fit decreasing, stable
            i = bisect.bisect_left(sizes, piece[2])
            if i < len(sizes):
                f = sizes[i]
                r = free[f].pop()
                if not free[f]:
                    del free[f]
                    sizes.pop(i)
                rows[r].append(piece)
            else:
                f, r = R, len(rows)
                rows.append([piece])
            left = f - piece[2]
            if left > 0:
                if left not in free:
                    bisect.insort(sizes, left)
                free.setdefault(left, []).append(r)
        segments = np.array([seg for row in rows for seg in row], dtype=np.int64).reshape(-1, 3)
        row_start = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
        return segments, row_start

    @property
    def n_rows(self) -> int:
        return len(self.row_start) - 1

    def row(self, r: int) -> tuple[np.ndarray, int]:
        """Row r's tokens, padded to block_size + 1 with end-of-text, and how many of them are real."""
        parts = []
        for shard, start, length in self.segments[self.row_start[r]:self.row_start[r + 1]].tolist():
            if start < 0:
                parts += [np.array([self.eot]), np.asarray(self.data.shards[shard][:length - 1])]
            else:
                parts.append(np.asarray(self.data.shards[shard][start:start + length]))
        tokens = np.concatenate(parts).astype(np.int64)
        n = len(tokens)
        return np.concatenate([tokens, np.full(self.T + 1 - n, self.eot, dtype=np.int64)]), n

    def batch(self, data_step: int, n_seqs: int, offset: int = 0, count: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        count = n_seqs - offset if count is None else count
        return self.take(data_step, n_seqs, np.arange(offset, offset + count))

    def take(self, data_step: int, n_seqs: int, which: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        picks = _rng(self.seed, self.stream, data_step).integers(0, self.n_rows, size=n_seqs)[which]
        rows, real = zip(*(self.row(int(r)) for r in picks), strict=True) if len(picks) else ((), ())
        rows = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, self.T + 1, dtype=torch.long)
        y = rows[:, 1:].clone()
        y[torch.arange(self.T)[None, :] >= torch.tensor(real, dtype=torch.long)[:, None] - 1] = IGNORE_INDEX
        return rows[:, :-1], y


class ExampleSampler:
    """Batches of whole fixed-length examples (data a synthetic module marked as such: the manifest's
    `examples` gives their length and which target positions count), for tasks such as modular arithmetic:
    x = example[:-1], y = example[1:] with every target but the counted ones IGNORE_INDEX. Drawn by (seed,
    data_step) without replacement, so a batch as large as the split is the full batch every step."""

    def __init__(self, data: TokenData, block_size: int, seed: int, stream: int | None = None):
        self.data, self.seed, self.stream = data, seed, stream
        self.L = data.manifest["examples"]["length"]
        if block_size != self.L - 1:
            raise DataError(f"{data.dir} holds examples of {self.L} tokens; train it with --model.block_size "
                            f"{self.L - 1}")
        self.rows = torch.from_numpy(np.concatenate(data.shards).astype(np.int64)).view(-1, self.L)
        self.keep = torch.zeros(self.L - 1, dtype=torch.bool)
        self.keep[data.manifest["examples"]["targets"]] = True

    def batch(self, data_step: int, n_seqs: int, offset: int = 0, count: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        count = n_seqs - offset if count is None else count
        return self.take(data_step, n_seqs, np.arange(offset, offset + count))

    def take(self, data_step: int, n_seqs: int, which: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rng = _rng(self.seed, self.stream, data_step)
        n = len(self.rows)
        picks = np.concatenate([rng.permutation(n) for _ in range(-(-n_seqs // n))])[:n_seqs][which]
        rows = self.rows[torch.from_numpy(picks)]
        return rows[:, :-1], example_targets(rows[:, 1:], self.keep)


def example_targets(y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, y, IGNORE_INDEX)


PACKINGS = ("windows", "bestfit")


def make_sampler(data: TokenData, block_size: int, seed: int, packing: str = "windows", stream: int | None = None
                 ) -> BatchSampler | PackedSampler | ExampleSampler:
    """The training batches of `data`: random windows of a token stream, or rows packed from whole documents
    (`packing` bestfit), or whole examples where the data is."""
    assert packing in PACKINGS, packing
    if "examples" in data.manifest:
        return ExampleSampler(data, block_size, seed, stream)
    if packing == "bestfit":
        return PackedSampler(data, block_size, seed, stream)
    return BatchSampler(data, block_size, seed, stream)


def eval_windows(data: TokenData, block_size: int, max_tokens: int):
    """Non-overlapping windows over the split, up to `max_tokens` targets (0: all of them). A partial
    evaluation takes windows evenly spaced over the whole split, not its first documents: the val split
    is whole documents, and its first 65k tokens are a handful of files (on the stdlib+tests corpus 28 sweep
    runs scored 0.13-0.20 nats worse on them than on the whole split, the gap differing by up to 0.07 from
    model to model: more than the differences a sweep measures; docs/LOG.md)."""
    if "examples" in data.manifest:  # every example of the split, its uncounted targets IGNORE_INDEX
        sampler = ExampleSampler(data, block_size, 0)
        for row in sampler.rows:
            yield row[:-1], example_targets(row[1:], sampler.keep)
        return
    data.check_context(block_size)
    per_shard = np.array([len(range(0, len(shard) - block_size, block_size)) for shard in data.shards])
    first = np.concatenate([[0], np.cumsum(per_shard)])  # window index where each shard's windows begin
    n = int(first[-1])
    k = min(n, -(-max_tokens // block_size)) if max_tokens else n  # as many windows as cover max_tokens
    for j in range(k):
        w = j * n // k  # evenly spaced over all n windows (every one of them when k == n)
        i = int(np.searchsorted(first, w, side="right")) - 1
        start = (w - int(first[i])) * block_size
        row = torch.from_numpy(data.shards[i][start:start + block_size + 1].astype(np.int64))
        yield row[:-1], row[1:]
