"""Measurements beyond the loss, for `nextoken lab` and notebooks: calibration (expected calibration error and
the reliability diagram), the softmax normalizer log Z, gradient norms per layer, and exposure bias.

Shape suffixes as in model/gpt.py: B batch, T positions, V vocabulary, N flattened positions.
"""

from __future__ import annotations

import math

import torch

from nextoken.data.loader import TokenData, eval_windows


def calibration(confidence_N, correct_N, n_bins: int = 10) -> dict:
    """Expected calibration error of top-1 predictions (Naeini et al. 2015; Guo et al. 2017, eq. 3):
    ECE = sum over bins b of (n_b / N) |accuracy_b - confidence_b|, with `n_bins` equal-width bins of the
    confidence over (0, 1] (bin i holds (i/n, (i+1)/n]; a confidence of 0 falls in the first). Returns `ece` and
    `bins`, the reliability diagram: per bin its edges, count, mean confidence and accuracy (None when empty)."""
    conf = torch.as_tensor(confidence_N, dtype=torch.float64).flatten()
    hit = torch.as_tensor(correct_N, dtype=torch.float64).flatten()
    assert conf.shape == hit.shape and conf.numel() > 0
    edges = [i / n_bins for i in range(n_bins + 1)]
    idx = torch.bucketize(conf, torch.tensor(edges[1:-1], dtype=torch.float64), right=False)
    ece, bins = 0.0, []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        c = float(conf[sel].mean()) if n else None
        a = float(hit[sel].mean()) if n else None
        if n:
            ece += n / conf.numel() * abs(a - c)
        bins.append({"lo": edges[b], "hi": edges[b + 1], "count": n, "confidence": c, "accuracy": a})
    return {"ece": ece, "bins": bins, "n": conf.numel()}


def log_z(logits_NV: torch.Tensor) -> torch.Tensor:
    """log Z = logsumexp of the logits, the softmax normalizer z-loss penalizes (PaLM §5: 1e-4 log^2 Z)."""
    return torch.logsumexp(logits_NV.float(), dim=-1)


@torch.no_grad()
def token_predictions(model: torch.nn.Module, data: TokenData, block_size: int, max_tokens: int = 0,
                      batch_size: int = 16, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Per evaluated position of `data` (the windows `evaluate` scores): `nll` (nats), `confidence` (the top
    probability), `correct` (top-1 is the target), `entropy` (nats) and `log_z`. One flat tensor each."""
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("nll", "confidence", "correct", "entropy", "log_z")}
    windows = list(eval_windows(data, block_size, max_tokens))
    for i in range(0, len(windows), batch_size):
        x = torch.stack([w[0] for w in windows[i:i + batch_size]]).to(device)
        y = torch.stack([w[1] for w in windows[i:i + batch_size]]).to(device).flatten()
        logits_NV = model(x).float().flatten(0, 1)
        logp_NV = logits_NV.log_softmax(-1)
        conf_N, top_N = logp_NV.max(-1)
        out["nll"].append(-logp_NV.gather(1, y[:, None]).squeeze(1))
        out["confidence"].append(conf_N.exp())
        out["correct"].append((top_N == y).float())
        out["entropy"].append(-(logp_NV.exp() * logp_NV).sum(-1))
        out["log_z"].append(log_z(logits_NV))
    model.train(was_training)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def layer_grad_norms(model: torch.nn.Module, x_BT: torch.Tensor, y_BT: torch.Tensor) -> dict[str, float]:
    """The L2 norm of the next-token loss's gradient over each layer's parameters, for one batch: `embedding`
    (token and learned position embeddings), `block0` ... `blockL-1`, `head` (final norm, and the output
    projection when it is not tied to the embedding). Leaves the model's .grad as it found it (None)."""
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    logits = model(x_BT)
    F.cross_entropy(logits.float().flatten(0, 1), y_BT.flatten()).backward()
    groups: dict[str, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():  # a tied weight appears once, under its first name (wte)
        if id(p) in seen or p.grad is None:
            continue
        seen.add(id(p))
        top = name.split(".")[0]
        key = f"block{name.split('.')[1]}" if top == "blocks" else "embedding" if top in ("wte", "wpe") else "head"
        groups.setdefault(key, []).append(p.grad.detach().float().pow(2).sum())
    model.zero_grad(set_to_none=True)
    return {k: math.sqrt(float(sum(v))) for k, v in groups.items()}


@torch.no_grad()
def continuation_nll(reference: torch.nn.Module, ids_BT: torch.Tensor, start: int) -> torch.Tensor:
    """-log p_reference(token t | tokens < t) for t = start .. T-1 of each row: (B, T - start)."""
    logp = reference(ids_BT[:, :-1]).float().log_softmax(-1)
    nll = -logp.gather(2, ids_BT[:, 1:, None]).squeeze(2)
    return nll[:, start - 1:]


@torch.no_grad()
def exposure_bias(model: torch.nn.Module, reference: torch.nn.Module, prompts_BP: torch.Tensor,
                  true_BN: torch.Tensor, temperature: float = 1.0, seed: int = 0) -> dict[str, list[float]]:
    """How what `model` generates free-running drifts from the data, scored by a stronger `reference` model
    (Bengio et al. 2015; He et al. 2021 measure it the same way): `model` continues each prompt for as many
    tokens as `true_BN` holds, sampling at `temperature`, and the reference scores each generated token.
    Returns, per position of the continuation, the mean reference NLL of the generated tokens (`generated`)
    and of the data's own continuation (`data`). Exposure bias shows as `generated` growing with the position
    where `data` stays flat."""
    from nextoken.generate import generate

    P, N = prompts_BP.size(1), true_BN.size(1)
    rows = []
    for b, prompt in enumerate(prompts_BP.tolist()):
        new = list(generate(model, prompt, N, temperature=temperature, seed=seed + b))
        rows.append(prompt + new)
    ids = torch.tensor(rows, device=prompts_BP.device)
    gen = continuation_nll(reference, ids, P).mean(0)
    data = continuation_nll(reference, torch.cat([prompts_BP, true_BN], 1), P).mean(0)
    return {"generated": gen.tolist(), "data": data.tolist()}
