"""Device, precision and compilation choices, made once per process."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from nextoken.config import TrainConfig
from nextoken.errors import ConfigError


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None means plain fp32

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype is None else "bf16"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is visible; use --train.device cpu")
    return dev


def make_runtime(cfg: TrainConfig, device: torch.device | None = None) -> Runtime:
    device = device or pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        keep_large_allocations_on_the_heap()
    # auto: bf16 autocast with fp32 master weights on CUDA; fp32 on CPUs, where bf16 matmuls are
    # ~500x slower on this project's 2-core AMD machines (docs/LOG.md).
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, torch.bfloat16 if bf16 else None)


@functools.cache
def keep_large_allocations_on_the_heap() -> bool:
    """Serve tensors up to 1 GiB from glibc's heap and never give freed memory back, so that a training step
    reuses the memory of the last one. By default glibc maps every allocation over 32 MiB afresh and unmaps it
    on free: the tiny preset's logits, their gradient and the output layer's result were page-faulted anew
    every step (13,000 faults a step); this way 0, and a step is 9% faster (151 -> 138 ms, three A/B pairs
    on a quiet 2-core box; docs/LOG.md). The same reuse is why PyTorch's CPU tuning guide suggests jemalloc or
    tcmalloc. A no-op where libc is not glibc; done once per process. Returns whether it took effect."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


# Dense (no sparsity) bf16 peaks in FLOP/s from the vendors' data sheets; the first key found in the
# device name wins, so the specific names come first.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "B200": 2250e12,
             "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12, "4090": 165e12}


def peak_flops(rt: Runtime) -> float | None:
    """The FLOP/s that MFU divides by: the data-sheet peak of a known GPU (fp32 runs as TF32 at half
    the bf16 rate), else this device's measured matmul rate (a CPU, an unlisted GPU)."""
    if rt.device.type == "cuda":
        name = torch.cuda.get_device_name(rt.device)
        for key, peak in PEAK_BF16.items():
            if key in name:
                return peak if rt.dtype is not None else peak / 2
    try:
        return matmul_flops(rt.device, rt.dtype or torch.float32)
    except RuntimeError:
        return None


_MATMUL: dict[tuple, float] = {}


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                 reps: int = 5) -> float:
    """The measured rate of an n x n by n x n matmul in FLOP/s (best of `reps`), once per process.
    Not cached on disk: on a shared CPU a figure taken while other work runs reads low."""
    n = n or (8192 if device.type == "cuda" else 1024)
    key = (str(device), dtype, n, torch.get_num_threads())
    if key not in _MATMUL:
        g = torch.Generator(device).manual_seed(0)  # not the global RNG: a run's RNG state must not depend on it
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        best = float("inf")
        for _ in range(reps + 1):  # the first is a warm-up
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        _MATMUL[key] = 2 * n**3 / best
    return _MATMUL[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
