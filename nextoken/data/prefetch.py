"""Batches on the device: this rank's micro-batches of each step, read ahead of the compute on CUDA."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch


class DeviceBatches:
    """This rank's micro-batches of each step, on the device. On CUDA the next micro-batch is read
    in a background thread into pinned memory while the GPU computes, and copied asynchronously, so
    the GPU never waits for data; on the CPU reading a batch costs microseconds and runs inline."""

    def __init__(self, sampler, n_seqs: int, slices: list[tuple[int, int]], device: torch.device):
        self.sampler, self.n_seqs, self.slices, self.device = sampler, n_seqs, slices, device
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batches") if device.type == "cuda" else None
        self.pending: dict[tuple[int, int], Future] = {}

    def __len__(self) -> int:
        return len(self.slices)

    def _read(self, data_step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        offset, count = self.slices[micro]
        x, y = self.sampler.batch(data_step, self.n_seqs, offset, count)
        return (x.pin_memory(), y.pin_memory()) if self.pool else (x, y)

    def get(self, data_step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `micro` of data step `data_step`; a jump in data_step (a rollback) just reads inline."""
        future = self.pending.pop((data_step, micro), None)
        x, y = future.result() if future is not None else self._read(data_step, micro)
        if self.pool is not None:
            nxt = (data_step, micro + 1) if micro + 1 < len(self.slices) else (data_step + 1, 0)
            self.pending = {nxt: self.pool.submit(self._read, *nxt)}
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
