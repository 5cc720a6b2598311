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
    ce = F.cross_entropy(logits_NV, targets_N, ignore_index=IGNORE_INDEX)
    loss = ce
    if label_smoothing:
        loss = F.cross_entropy(logits_NV, targets_N, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    if z_loss:
        keep_N = targets_N != IGNORE_INDEX
        log_z_N = torch.logsumexp(logits_NV[keep_N], dim=-1)
        loss = loss + z_loss * log_z_N.pow(2).mean()
    return loss, ce.detach()
