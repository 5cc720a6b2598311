"""The training loop: one function, read top to bottom (STYLE rule 3)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nextoken.config import Config
from nextoken.data.loader import BatchSampler, TokenData
from nextoken.data.prepare import read_manifest
from nextoken.data.tokenizer import load_tokenizer, token_byte_lengths
from nextoken.errors import CheckpointError, ConfigError
from nextoken.eval.evaluate import evaluate
from nextoken.model import GPT, flops_per_token, param_counts
from nextoken.train import checkpoint as ckpt
from nextoken.train.logger import Display, MetricsLog
from nextoken.train.objective import next_token_loss
from nextoken.train.optim import build_optimizer, lr_at, set_lr
from nextoken.train.rundir import open_run_dir
from nextoken.train.runtime import Runtime, make_runtime, peak_flops
from nextoken.train.stability import Faults, is_finite


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # training tokens consumed
    data_step: int = 0  # loader position: batches drawn so far (a rollback may skip ahead)
    elapsed_s: float = 0.0


def train(cfg: Config, run_dir: str | Path, resume: bool = False, quiet: bool = False) -> dict:
    """Train per `cfg` into `run_dir`; returns the final eval figures and where things are."""
    run_dir, data_dir = Path(run_dir), Path(cfg.data.path)
    rt = make_runtime(cfg.train)
    t, m = cfg.train, cfg.model

    # ---- data, model, optimizer ----
    manifest = read_manifest(data_dir)
    m.vocab_size = m.vocab_size or manifest["vocab_size"]
    if m.vocab_size < manifest["vocab_size"]:
        raise ConfigError(f"model.vocab_size {m.vocab_size} is smaller than the data's vocabulary "
                          f"({manifest['vocab_size']}); leave it at 0 to take the data's")
    sampler = BatchSampler(TokenData(data_dir, "train"), m.block_size, t.seed)
    val = TokenData(data_dir, "val")
    val.check_context(m.block_size)
    token_bytes = token_byte_lengths(load_tokenizer(data_dir / "tokenizer.json"))
    open_run_dir(run_dir, cfg, data_dir, resume)

    torch.manual_seed(t.seed)
    model = GPT(m).to(rt.device)
    optimizer = build_optimizer(model, cfg.optim, rt.device)
    state = TrainState()
    log = MetricsLog(run_dir, cfg)
    if resume:
        state = _resume(run_dir, cfg, model, optimizer, rt)
        log.write("event", step=state.step, type="resume", detail=f"from step {state.step}")
    step_model = torch.compile(model) if rt.compile else model
    faults = Faults.parse(cfg.stability.inject)
    display = Display(t.max_steps, state.step, cfg.log.progress, enabled=not quiet)
    tokens_per_step = t.batch_size * t.grad_accum * m.block_size
    flops_tok = flops_per_token(m)

    def run_eval() -> dict:
        res = evaluate(model, val, m.block_size, token_bytes, t.eval_tokens, t.batch_size, rt.device, rt.autocast)
        log.write("eval", step=state.step, tokens=state.tokens, split="val", loss=res["loss"], ppl=res["ppl"],
                  bits_per_token=res["bits_per_token"], bits_per_byte=res["bits_per_byte"])
        display.message(f"step {state.step}: val loss {res['loss']:.4f}  ppl {res['ppl']:.2f}  "
                        f"bits/byte {res['bits_per_byte']:.3f}")
        return res

    def save() -> Path:
        trainer = {**vars(state), "model_hash": cfg.model_hash(), "model": vars(m)}
        path = ckpt.save_checkpoint(run_dir, state.step, model, optimizer, trainer, _rng_tensors(), keep=t.keep)
        log.write("event", step=state.step, type="checkpoint", detail=path.name)
        return path

    # ---- the loop ----
    display.message(f"{param_counts(m).total:,} parameters, {tokens_per_step:,} tokens per step, "
                    f"{rt.device.type} {rt.precision}{' compiled' if rt.compile else ''}")
    t0, elapsed0 = time.perf_counter(), state.elapsed_s
    t_start, tokens_last = t0, state.tokens
    result, last_ckpt = None, None
    try:
        while state.step < t.max_steps:
            step = state.step
            lr = lr_at(step, cfg.optim, t.max_steps) * faults.lr_factor(step)
            set_lr(optimizer, lr)
            loss, grad_norm = _forward_backward(step_model, optimizer, sampler, state.data_step, cfg, rt,
                                                faults, step)
            if is_finite(loss, grad_norm):
                optimizer.step()
            else:  # a non-finite step never reaches the weights, whatever the policy
                log.write("event", step=step, type="nan", detail={"loss": loss, "grad_norm": grad_norm})
                display.message(f"step {step}: non-finite loss or gradient; update skipped")
            optimizer.zero_grad(set_to_none=True)
            state.step, state.data_step, state.tokens = step + 1, state.data_step + 1, state.tokens + tokens_per_step

            # ---- log ----
            now = time.perf_counter()
            state.elapsed_s = elapsed0 + now - t0
            if state.step % t.log_every == 0 or state.step == t.max_steps:
                tps = (state.tokens - tokens_last) / max(now - t_start, 1e-9)
                t_start, tokens_last = now, state.tokens
                log.write("train", step=state.step, tokens=state.tokens, loss=loss, lr=lr, grad_norm=grad_norm,
                          tokens_per_s=tps, mfu=_mfu(flops_tok * tps, rt), elapsed_s=state.elapsed_s)
                display.update(state.step, loss, tps)

            # ---- eval, checkpoint ----
            last = state.step == t.max_steps
            if last or (t.eval_every and state.step % t.eval_every == 0):
                result = run_eval()
            if last or (t.ckpt_every and state.step % t.ckpt_every == 0):
                last_ckpt = save()
    except KeyboardInterrupt:
        display.close()
        path = save()
        raise CheckpointError(f"interrupted at step {state.step}; saved {path}; continue with "
                              f"nextoken train --out {run_dir} --resume") from None
    finally:
        display.close()
        log.close()
    if result is None:  # resumed a finished run
        result = run_eval()
    last_ckpt = last_ckpt or ckpt.resolve_checkpoint(run_dir)
    return {**result, "step": state.step, "tokens": state.tokens, "run": str(run_dir),
            "checkpoint": str(last_ckpt), "elapsed_s": state.elapsed_s, "model": model}


def _forward_backward(model, optimizer, sampler: BatchSampler, data_step: int, cfg: Config, rt: Runtime,
                      faults: Faults, step: int) -> tuple[float, float]:
    """Gradient of one optimizer step over grad_accum micro-batches, equal to that of one batch of
    batch_size * grad_accum sequences. Returns (mean cross-entropy, gradient norm before clipping)."""
    t = cfg.train
    n_seqs = t.batch_size * t.grad_accum
    loss_sum = 0.0
    for micro in range(t.grad_accum):
        x, y = sampler.batch(data_step, n_seqs, micro * t.batch_size, t.batch_size)
        x, y = faults.poison(step, x, y, cfg.model.vocab_size, t.seed)
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(x)
        loss, ce = next_token_loss(logits, y, t.z_loss, t.label_smoothing)
        if step in faults.nan:
            loss = loss * float("nan")
        (loss / t.grad_accum).backward()
        loss_sum += ce.item() if step not in faults.nan else float("nan")
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
    return loss_sum / t.grad_accum, grad_norm


def _mfu(flops_per_s: float, rt: Runtime) -> float | None:
    peak = peak_flops(rt)
    return flops_per_s / peak if peak else None


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def _resume(run_dir: Path, cfg: Config, model, optimizer, rt: Runtime) -> TrainState:
    path = ckpt.resolve_checkpoint(run_dir)
    trainer = ckpt.read_trainer(path)
    if trainer.get("model_hash") != cfg.model_hash():
        raise CheckpointError(f"{path} was trained with a different model config; resume with the run's "
                              "own config (drop the --model.* flags)")
    ckpt.load_weights(model, path)
    tensors = ckpt.load_state(path)
    ckpt.restore_optimizer(model, optimizer, tensors)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and rt.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return TrainState(trainer["step"], trainer["tokens"], trainer["data_step"], trainer.get("elapsed_s", 0.0))
