"""The device a process trains on, its precision (autocast dtype), and CPU allocator tuning: chosen once per
process."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import time
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


def run_threads(setting: int, recorded: int | None, distributed: bool) -> int:
    """The torch threads a CPU run computes with: `train.threads` where set; else the count the run recorded when
    it started (a resume must reduce in the same order: at 1 and 2 threads the tiny preset's gradients differ in
    their last bits); else, under torchrun or with OMP_NUM_THREADS set, torch's default; else one per core that
    is free now (`free_cores`), at most torch's default. A 2-thread run beside a busy core waited on its
    descheduled thread at every parallel region, 4-5x slower; one thread on the free core is not (docs/LOG.md)."""
    if setting:
        return setting
    if recorded:
        return recorded
    default = torch.get_num_threads()
    if distributed or os.environ.get("OMP_NUM_THREADS"):
        return default
    return max(1, min(default, free_cores()))


def free_cores(sample_s: float = 0.25) -> int:
    """Cores this process may use that were idle over `sample_s` seconds (from /proc/stat), rounded; where
    /proc/stat cannot be read, the cores less the 1-minute load average."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        a = _cpu_times()
        time.sleep(sample_s)
        b = _cpu_times()
        busy = sum(b) - sum(a) - ((b[3] + b[4]) - (a[3] + a[4]))  # all but idle and iowait
        total = sum(b) - sum(a)
        used = (os.cpu_count() or cores) * busy / total if total > 0 else 0.0
    except (OSError, ValueError, IndexError):
        used = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - used)))


def _cpu_times() -> list[int]:
    with open("/proc/stat") as fh:
        return [int(v) for v in fh.readline().split()[1:8]]  # user nice system idle iowait irq softirq


@contextlib.contextmanager
def exact_kernels(device: torch.device):
    """On a CPU, where nextoken promises bit-identical reruns and resumes, run only kernels whose result does not
    depend on thread timing: `torch.use_deterministic_algorithms(True)`, restored on exit. Under it inductor
    calls ATen's own index_put/scatter instead of generating kernels that accumulate with atomic adds from
    several threads (the embedding's backward): compiled, the tiny preset's gradients at 2 threads differed
    between passes over one batch (4 distinct of 6) and two runs parted at step 4; with it, all equal
    (docs/LOG.md, 2026-12-06). Uninitialized memory is not filled (its NaN fill only helps find reads of
    it, and costs a pass). Elsewhere (CUDA) nothing changes: docs/stability.md says what is exact there."""
    if device.type != "cpu":
        yield
        return
    import torch.utils.deterministic

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


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
