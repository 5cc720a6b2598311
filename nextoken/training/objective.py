"""The pretraining objective: next-token cross-entropy, with optional z-loss and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this id (padding) contribute nothing


def next_token_loss(logits_BTV: torch.Tensor, targets_BT: torch.Tensor, z_loss: float = 0.0,
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective to minimize, plain cross-entropy in nats per predicted token).

    The plain cross-entropy is what perplexity and bits per byte are made of; the objective adds
    label smoothing and z-loss = coef * mean(log^2 Z), Z the softmax normalizer (PaLM §5)."""
    logits_NV = logits_BTV.float().flatten(0, 1)
    targets_N = targets_BT.flatten()
    if (logits_NV.requires_grad and not (z_loss or label_smoothing) and logits_NV.device.type == "cpu"
            and not torch.compiler.is_compiling()):  # compiled, inductor fuses the plain form itself
        loss = _InPlaceCrossEntropy.apply(logits_NV, targets_N)
        return loss, loss.detach()
    ce = F.cross_entropy(logits_NV, targets_N, ignore_index=IGNORE_INDEX)
    loss = ce
    if label_smoothing:
        loss = F.cross_entropy(logits_NV, targets_N, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    if z_loss:
        keep_N = targets_N != IGNORE_INDEX
        log_z_N = torch.logsumexp(logits_NV[keep_N], dim=-1)
        loss = loss + z_loss * log_z_N.pow(2).mean()
    return loss, ce.detach()


def loss_fn(model, autocast, z_loss: float = 0.0, label_smoothing: float = 0.0):
    """The unit the training step runs and `torch.compile` compiles: (inputs, targets) -> (objective, plain
    cross-entropy). The loss goes inside with the model: compiled apart from it, the (tokens x vocab)
    logits are written out in bf16, cast to fp32 and read back by an eager loss several times; compiled
    together, inductor fuses the loss into a few passes (gpt2-124m on an H100: 55.8 -> 38.8 ms a step,
    docs/LOG.md). `model` may be a DDP- or FSDP2-wrapped module."""

    def step(x_BT: torch.Tensor, y_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            logits_BTV = model(x_BT)
        return next_token_loss(logits_BTV, y_BT, z_loss, label_smoothing)

    return step


class _InPlaceCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy that turns the logits into exp(logits - max) in place in the forward and into
    its gradient, softmax - onehot, in place in the backward. On the CPU the (tokens x vocab) tensors
    dominate everything but the matmuls: F.cross_entropy writes log-probabilities, a zero-filled gradient
    and the log-softmax gradient, three fresh tensors of the logits' size each step (each a new mmap and
    its page faults: 32 MiB at 2048 x 4096), and even torch.logsumexp makes one; this makes none, and
    exponentiates once. The loss matches F.cross_entropy to fp32 rounding (tests, docs/LOG.md). The logits
    are consumed: the caller must not read them after the loss (a graph that saved them elsewhere would
    fail autograd's version check rather than compute a wrong gradient)."""

    @staticmethod
    def forward(ctx, logits_NV: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
        keep_N = targets_N != IGNORE_INDEX
        safe_N = targets_N.clamp_min(0)
        target_logit_N = logits_NV.gather(1, safe_N[:, None]).squeeze(1)
        max_N = logits_NV.amax(dim=1)
        exp_NV = logits_NV.sub_(max_N[:, None]).exp_()  # in place: the logits are ours to consume
        sum_N = exp_NV.sum(dim=1)
        nll_N = max_N + sum_N.log() - target_logit_N
        n = keep_N.sum()
        ctx.save_for_backward(exp_NV, sum_N, safe_N, keep_N, n)
        return torch.where(keep_N, nll_N, 0.0).sum() / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        exp_NV, sum_N, safe_N, keep_N, n = ctx.saved_tensors
        scale_N = keep_N * (grad_out / n)
        grad_NV = exp_NV.mul_((scale_N / sum_N)[:, None])  # softmax * scale, in place
        grad_NV.scatter_add_(1, safe_N[:, None], -scale_N[:, None])
        return grad_NV, None
