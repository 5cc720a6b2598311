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
    """Random windows of `block_size + 1` tokens, drawn by (seed, data_step)."""

    def __init__(self, data: TokenData, block_size: int, seed: int):
        data.check_context(block_size)
        self.data, self.T, self.seed = data, block_size, seed
        starts = np.array([max(len(s) - block_size, 0) for s in data.shards], dtype=np.int64)
        self._cum = np.cumsum(starts)

    def batch(self, data_step: int, n_seqs: int, offset: int = 0, count: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences [offset, offset+count) of the `n_seqs` drawn for `data_step`, as (x, y) int64."""
        count = n_seqs - offset if count is None else count
        rng = np.random.default_rng([self.seed, data_step])
        picks = rng.integers(0, self._cum[-1], size=n_seqs)[offset:offset + count]
        shard_idx = np.searchsorted(self._cum, picks, side="right")
        local = picks - np.concatenate([[0], self._cum[:-1]])[shard_idx]
        rows = np.stack([self.data.shards[s][o:o + self.T + 1] for s, o in zip(shard_idx, local, strict=True)])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


class ExampleSampler:
    """Batches of whole fixed-length examples (data a synthetic module marked as such: the manifest's
    `examples` gives their length and which target positions count), for tasks such as modular arithmetic:
    x = example[:-1], y = example[1:] with every target but the counted ones IGNORE_INDEX. Drawn by (seed,
    data_step) without replacement, so a batch as large as the split is the full batch every step."""

    def __init__(self, data: TokenData, block_size: int, seed: int):
        self.data, self.seed = data, seed
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
        rng = np.random.default_rng([self.seed, data_step])
        n = len(self.rows)
        picks = np.concatenate([rng.permutation(n) for _ in range(-(-n_seqs // n))])[:n_seqs][offset:offset + count]
        rows = self.rows[torch.from_numpy(picks)]
        return rows[:, :-1], example_targets(rows[:, 1:], self.keep)


def example_targets(y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, y, IGNORE_INDEX)


def make_sampler(data: TokenData, block_size: int, seed: int) -> BatchSampler | ExampleSampler:
    """The training batches of `data`: random windows of a token stream, or whole examples where the data is."""
    if "examples" in data.manifest:
        return ExampleSampler(data, block_size, seed)
    return BatchSampler(data, block_size, seed)


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
