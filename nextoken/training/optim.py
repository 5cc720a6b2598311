"""The optimizers (AdamW with decoupled weight decay on matrices only; Muon for the blocks' matrices) and the
learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping

import torch
from torch import nn

from nextoken.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices and embeddings (dim >= 2); never norms or biases (nanoGPT, OLMo)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def muon_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters Muon updates: the 2-D weight matrices inside the transformer blocks (attention's qkv and
    output projection, the MLP's). Embeddings, the output layer, norms and biases stay with AdamW, as in Jordan
    et al. (2024) and the modded-nanogpt recipes: Muon's orthogonalized update suits hidden linear maps, not
    lookup tables or the logits."""
    return [(n, p) for n, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and n.startswith("blocks.")]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device):
    """AdamW over every parameter (`optim.name adamw`), or Muon over `muon_params` with AdamW over the rest
    (`optim.name muon`), both from PyTorch. Each param group carries `lr_scale`, its peak LR over optim.lr, so
    one schedule drives both (set_lr)."""
    fused = device.type in ("cuda", "cpu") or None
    # Fused (one kernel over all parameters) on CUDA and on CPUs: on the tiny preset's 1.3M parameters a CPU
    # step takes 0.5 ms fused against 2.3 ms with the default multi-tensor (foreach) code (docs/LOG.md).
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                 eps=cfg.eps, fused=fused)
    hidden = {id(p) for _, p in muon_params(model)}
    rest = nn.ParameterList(p for p in model.parameters() if id(p) not in hidden)
    muon = Muon([p for _, p in muon_params(model)], lr=cfg.muon_lr, weight_decay=cfg.weight_decay,
                momentum=cfg.muon_momentum, nesterov=True, ns_dtype=newton_schulz_dtype(device))
    muon.param_groups[0]["lr_scale"] = cfg.muon_lr / cfg.lr
    adamw = torch.optim.AdamW(param_groups(rest, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              eps=cfg.eps, fused=fused)
    return Optimizers(muon, adamw)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators (torch.optim.Muon's choice, Jordan et al. 2024: fast tensor-core matmuls); fp32 on
    CPUs, where bf16 matmuls are slower than fp32 and bf16's 8-bit mantissa made gradient-accumulation splits of
    one batch end ~1e-2 apart (docs/LOG.md, 2026-12-06)."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def orthogonalize(g: torch.Tensor, steps: int, coefficients: tuple[float, float, float], eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Newton–Schulz's quintic iteration towards the orthogonal factor of g (Jordan et al. 2024, "Muon"):
    X <- aX + (bA + cA²)X with A = XXᵀ, from X = g / ||g||_F, on the wide orientation so that A is the
    smaller Gram matrix; in `dtype`. torch.optim.Muon computes the same in bf16 only."""
    a, b, c = coefficients
    tall = g.size(0) > g.size(1)
    x = g.to(dtype)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its parameters, groups, state and checkpoints) with the Newton–Schulz step in
    `ns_dtype`; with bf16 its steps are torch's (tests/test_muon.py).

    Matrices FSDP2 shards by rows (DTensors) get the same update as in one process: the momentum stays sharded
    (it is elementwise), each matrix's momentum-corrected update is all-gathered for its Newton–Schulz step,
    computed whole on every rank, and each rank applies its own rows. This is Moonlight's distributed Muon (Liu
    et al. 2025, "Muon is Scalable for LLM Training", §2.3), which pays a gather and repeated orthogonalization
    per matrix for an update equal to one process's; torchtitan's assigns whole matrices to ranks instead."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kw):
        super().__init__(params, **kw)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        from torch.distributed.tensor import DTensor, distribute_tensor

        assert closure is None, "nextoken steps without a closure"
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)  # torch's: checks, and the momentum buffers
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            assert group["adjust_lr_fn"] in (None, "original"), "nextoken builds Muon with torch's default scale"
            for p, g, buf in zip(params, grads, bufs, strict=True):
                buf.lerp_(g, 1 - mu)
                update = g.lerp(buf, mu) if group["nesterov"] else buf
                sharded = isinstance(update, DTensor)
                update = orthogonalize(update.full_tensor() if sharded else update, group["ns_steps"],
                                       group["ns_coefficients"], group["eps"], self.ns_dtype)
                if sharded:  # every rank holds the same result: keep this rank's rows, no messages
                    update = distribute_tensor(update.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None)
                p.mul_(1 - lr * wd)  # decoupled weight decay at Muon's own LR, as torch.optim.Muon
                # torch.optim.Muon's default ("original") scale: sqrt(max(1, rows / cols)), Jordan et al. 2024
                p.add_(update.to(p.dtype), alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)


class _States(MutableMapping):
    """The per-parameter state of several optimizers as one mapping: a parameter's state lives in (and is
    written to) the optimizer that owns it."""

    def __init__(self, optimizers):
        self.owner = {p: o for o in optimizers for g in o.param_groups for p in g["params"]}
        self.optimizers = optimizers

    def __getitem__(self, p):
        return self.owner[p].state[p]

    def __setitem__(self, p, value):
        self.owner[p].state[p] = value

    def __delitem__(self, p):
        del self.owner[p].state[p]

    def __iter__(self) -> Iterator:
        return (p for o in self.optimizers for p in o.state)

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.optimizers)

    def get(self, p, default=None):
        o = self.owner.get(p)
        return default if o is None or p not in o.state else o.state[p]


class Optimizers:
    """Several PyTorch optimizers stepped as one (Muon and AdamW): the loop, the checkpoints and the rollback
    ring see `step`, `zero_grad`, `param_groups`, `state`, `state_dict` and `load_state_dict`. PyTorch has no
    composite optimizer; this is the smallest one that keeps the loop unchanged."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.state = _States(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)


def effective_warmup(cfg: OptimConfig, max_steps: int) -> int:
    """Warmup steps of a run of `max_steps`: `cfg.warmup_steps` where it fits (fewer than max_steps), else a
    tenth of the run, rounded down (0 below 10 steps), the sweep's rule (sweep.run_schedule). A run shorter than
    its warmup (the tiny preset's 50 with --train.max_steps 20) then still reaches the peak and decays."""
    return cfg.warmup_steps if cfg.warmup_steps < max_steps else max_steps // 10


def _progress(step: int, start: int, max_steps: int) -> float:
    """Fraction in [0, 1] of the way from step `start` (0: the peak) to the last step, max_steps - 1 (1: the
    floor). A decay with no room (start >= the last step) is 1: the last step ends at the floor."""
    span = max_steps - 1 - start
    return 1.0 if span <= 0 else min((step - start) / span, 1.0)


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `max_steps` (>= 1).

    Linear warmup over effective_warmup(cfg, max_steps) = w steps, reaching the peak cfg.lr at step w - 1;
    then the schedule from the peak at step w down to the floor min_lr_ratio * cfg.lr at the last step
    (max_steps - 1), whatever the lengths: with one step after warmup that step is at the floor, and a
    single-step run is at the floor. `constant` stays at the peak. Same units as cfg.lr."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = effective_warmup(cfg, max_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":
        # warmup-stable-decay (Hu et al. 2024, MiniCPM): flat, then linear to the floor over the last
        # decay_ratio of the steps.
        decay_start = max(warmup, int(max_steps * (1 - cfg.decay_ratio)))
        if step < decay_start:
            return peak
        return peak - (peak - floor) * _progress(step, decay_start, max_steps)
    progress = _progress(step, warmup, max_steps)
    if cfg.schedule == "linear":
        return peak - (peak - floor) * progress
    # cosine (Loshchilov & Hutter 2017, eq. 5, without restarts)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """The schedule's LR for this step, times each group's `lr_scale` (Muon's own peak over AdamW's)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)

