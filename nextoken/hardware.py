"""What the hardware can do: data-sheet peaks of known GPUs, the measured matmul rate of any device, and
model FLOPs utilization (MFU) against them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# Dense (no sparsity) bf16 peaks in FLOP/s from the vendors' data sheets. The first key found in a device
# name wins, so the specific names come first.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12, "H200": 989e12, "B200": 2250e12,
             "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12, "4090": 165e12}


def gpu_peak_bf16(name: str) -> float | None:
    """The data-sheet dense bf16 peak in FLOP/s of a GPU named like `torch.cuda.get_device_name` does
    ("NVIDIA H100 80GB HBM3") or a user does ("h100"); None for a GPU not in PEAK_BF16."""
    name = name.lower()
    return next((peak for key, peak in PEAK_BF16.items() if key.lower() in name), None)


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float | None:
    """The FLOP/s of one device that MFU divides by: the data-sheet peak of a known GPU (fp32, `dtype` None,
    runs as TF32 at half the bf16 rate), else this device's measured matmul rate (a CPU, an unlisted GPU)."""
    if device.type == "cuda":
        peak = gpu_peak_bf16(torch.cuda.get_device_name(device))
        if peak is not None:
            return peak if dtype is not None else peak / 2
    try:
        return matmul_flops(device, dtype or torch.float32, best_known=True)
    except RuntimeError:
        return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_per_device: float | None, world: int = 1) -> float | None:
    """Model FLOPs utilization: the job's model FLOP/s over the peak of all its devices (PaLM, Chowdhery et al.
    2022, appendix B). `tokens_per_s` is the whole job's (every process's tokens), so the denominator is
    `world` devices' peak; None where the peak is unknown."""
    if not peak_per_device:
        return None
    return tokens_per_s * flops_per_token / (world * peak_per_device)


_MATMUL: dict[tuple, float] = {}


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                 reps: int = 5, best_known: bool = False, fresh: bool = False) -> float:
    """The measured rate of an n x n by n x n matmul in FLOP/s (best of `reps`), once per process. With
    `best_known`, the best rate this machine has shown for the same device, dtype, size, threads and torch
    (remembered in the cache directory's matmul-peaks.json): on a shared CPU a figure taken while other work
    runs reads low, and MFU against it read above 100% (docs/LOG.md, 2026-11-30). `fresh` measures again."""
    n = n or (8192 if device.type == "cuda" else 1024)
    key = (str(device), dtype, n, torch.get_num_threads())
    if fresh or key not in _MATMUL:
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
    if not best_known:
        return _MATMUL[key]
    return _best_known(f"{device_name(device)}|torch {torch.__version__}|{dtype}|n {n}|threads {key[3]}",
                       _MATMUL[key])


def load_factor(device: torch.device) -> float:
    """This device's matmul rate now over the best it has shown here (1: as fast as ever; 0.3: shared with other
    work). Measures afresh and records a new best."""
    now = matmul_flops(device, fresh=True)
    return now / matmul_flops(device, best_known=True)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count: what a measured rate belongs to."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def _best_known(key: str, measured: float) -> float:
    """max(measured, the best recorded under `key`), recording a new best. A file that cannot be read or
    written only loses the memory, never the run."""
    from nextoken.data.builtin import cache_root

    path = cache_root() / "matmul-peaks.json"
    try:
        peaks = json.loads(path.read_text())
        peaks = peaks if isinstance(peaks, dict) else {}
    except (OSError, ValueError):
        peaks = {}
    best = peaks.get(key)
    if isinstance(best, (int, float)) and best >= measured:
        return float(best)
    peaks[key] = measured
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(peaks, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return measured


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
