"""What the hardware can do: data-sheet peaks of known GPUs, the measured matmul rate of any device, and
model FLOPs utilization (MFU) against them."""

from __future__ import annotations

import time

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
        return matmul_flops(device, dtype or torch.float32)
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
