"""Device, precision and compilation choices, made once per process."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from nextoken.config import TrainConfig
from nextoken.errors import ConfigError


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None means plain fp32
    compile: bool

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
    # auto: bf16 autocast with fp32 master weights on CUDA; fp32 on CPUs, where bf16 matmuls are
    # ~500x slower on this project's 2-core AMD machines (docs/LOG.md).
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile_ = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    return Runtime(device, torch.bfloat16 if bf16 else None, compile_)



# Dense bf16 peaks in FLOP/s from the vendors' data sheets (no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def peak_flops(rt: Runtime) -> float | None:
    """The device's peak for MFU, where it is known; None on CPUs (no meaningful vendor peak)."""
    if rt.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(rt.device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak if rt.dtype is not None else peak / 2  # fp32 matmuls run as TF32: half the rate
    return None
