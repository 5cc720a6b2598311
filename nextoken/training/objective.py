"""The pretraining objective: next-token cross-entropy, with optional z-loss and label smoothing; and the two
other objectives `train.objective` names: masked tokens (BERT) and scheduled sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextoken.data.loader import IGNORE_INDEX


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


def loss_fn(model, autocast, z_loss: float = 0.0, label_smoothing: float = 0.0, objective: str = "next",
            mask_rate: float = 0.15, sampling_prob: float = 0.25, doc_sep: int | None = None):
    """The unit the training step runs and `torch.compile` compiles: (inputs, targets) -> (objective, plain
    cross-entropy). The loss goes inside with the model: compiled apart from it, the (tokens x vocab)
    logits are written out in bf16, cast to fp32 and read back by an eager loss several times; compiled
    together, inductor fuses the loss into a few passes (gpt2-124m on an H100: 55.8 -> 38.8 ms a step,
    docs/LOG.md). `model` may be a DDP- or FSDP2-wrapped module. `objective` other than "next" changes what
    goes in and what is predicted (masked_tokens, scheduled_sampling_inputs); the second figure is then the
    plain cross-entropy of what that objective predicts. `doc_sep` (the end-of-text id) keeps attention inside
    documents (`data.doc_mask`)."""
    if objective == "mlm":
        def mlm_step(x_BT: torch.Tensor, y_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            inputs_BT, targets_BT = masked_tokens(x_BT, _vocab_size(model), mask_rate)
            with autocast():
                logits_BTV = model(inputs_BT)
            return next_token_loss(logits_BTV, targets_BT, z_loss, label_smoothing)

        return mlm_step
    if objective == "scheduled-sampling":
        def sampled_step(x_BT: torch.Tensor, y_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with autocast():
                inputs_BT = scheduled_sampling_inputs(model, x_BT, sampling_prob)
                logits_BTV = model(inputs_BT)
            return next_token_loss(logits_BTV, y_BT, z_loss, label_smoothing)

        return sampled_step
    assert objective == "next", objective

    def step(x_BT: torch.Tensor, y_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            logits_BTV = model(x_BT) if doc_sep is None else model(x_BT, doc_BT=documents(x_BT, doc_sep))
        return next_token_loss(logits_BTV, y_BT, z_loss, label_smoothing)

    return step


def documents(x_BT: torch.Tensor, sep: int) -> torch.Tensor:
    """Each position's document number within its row: a separator starts the next document (it is its BOS)."""
    return (x_BT == sep).cumsum(dim=1)


def _vocab_size(model) -> int:
    return getattr(model, "module", model).cfg.vocab_size  # DDP wraps the GPT in .module


def masked_tokens(x_BT: torch.Tensor, vocab_size: int, rate: float = 0.15, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption (Devlin et al. 2019, §3.1): `rate` of the positions are predicted; of those 80% become
    [MASK], 10% a random token, 10% stay. [MASK] is id vocab_size - 1, the one id above the data's vocabulary
    (the lab sets model.vocab_size to the data's + 1). Returns (inputs, targets): the original token where
    predicted, IGNORE_INDEX elsewhere."""
    mask_id = vocab_size - 1
    u = torch.rand(x_BT.shape, device=x_BT.device, generator=generator)
    chosen = u < rate
    v = torch.rand(x_BT.shape, device=x_BT.device, generator=generator)
    random_ids = torch.randint(0, mask_id, x_BT.shape, device=x_BT.device, generator=generator)
    inputs = torch.where(chosen & (v < 0.8), mask_id, x_BT)
    inputs = torch.where(chosen & (v >= 0.8) & (v < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, x_BT, IGNORE_INDEX)


@torch.no_grad()
def scheduled_sampling_inputs(model, x_BT: torch.Tensor, prob: float, generator: torch.Generator | None = None
                              ) -> torch.Tensor:
    """Scheduled sampling in its parallel form for transformers (Bengio et al. 2015; Mihaylova & Martins 2019,
    §3): a first, teacher-forced pass without gradient samples each position's next token from the model; then
    each input token after the first is replaced, with probability `prob`, by the model's sample for it. `prob` 1
    feeds the model only its own predictions (the free-running extreme, one step deep). The targets stay the
    data's."""
    logits_BTV = model(x_BT).float()
    probs_NV = logits_BTV[:, :-1].softmax(-1).flatten(0, 1)
    sampled_BT = torch.multinomial(probs_NV, 1, generator=generator).view(x_BT.size(0), -1)  # predicts x[:, 1:]
    swap_BT = torch.rand(sampled_BT.shape, device=x_BT.device, generator=generator) < prob
    return torch.cat([x_BT[:, :1], torch.where(swap_BT, sampled_BT, x_BT[:, 1:])], dim=1)


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
