"""The training loop: one function, read top to bottom."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nextoken import checkpoint as ckpt
from nextoken.config import Config
from nextoken.data import mixture
from nextoken.data.loader import TokenData, make_sampler
from nextoken.data.prefetch import DeviceBatches
from nextoken.data.prepare import check_tokenizer, read_manifest
from nextoken.data.tokenizer import load_tokenizer, token_byte_lengths
from nextoken.device import Runtime, exact_kernels, make_runtime, run_threads
from nextoken.errors import CheckpointError, ConfigError, NextokenError
from nextoken.eval.evaluate import evaluate, evaluate_mixture
from nextoken.eval.tasks import Task, contamination_warning, load_tasks, score_tasks
from nextoken.hardware import mfu, peak_flops
from nextoken.model import GPT, param_counts, training_flops_per_token
from nextoken.run import check_resumable, create_run_dir, lock_run_dir, read_metrics
from nextoken.training import distributed, init_from
from nextoken.training.autocompile import choose_compile
from nextoken.training.faults import Faults
from nextoken.training.guard import Guard
from nextoken.training.logger import Display, MetricsLog
from nextoken.training.objective import loss_fn
from nextoken.training.optim import build_optimizer, lr_at, set_lr
from nextoken.training.signals import GracefulStop, Interrupted


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # training tokens consumed
    data_step: int = 0  # loader position: batches drawn so far (a rollback may skip ahead)
    elapsed_s: float = 0.0
    compiled: bool | None = None  # what `--train.compile auto` chose (a resumed run keeps it)
    threads: int | None = None  # CPU threads it computes with: they set the order of fp32 sums (a resume keeps it)
    tokens_by_source: dict[str, int] | None = None  # a mix's training tokens per source (replaced, never mutated)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, quiet: bool = False) -> dict:
    """Train per `cfg` into `run_dir`; returns the final eval figures and where things are."""
    d = distributed.init_distributed(cfg.train)  # rank and world size from torchrun; one process without
    # one writer per run directory, before anything there is read; on a CPU, kernels that give the same bits each time
    with _writer_lock(Path(run_dir), resume, d), exact_kernels(distributed.rank_device(d, cfg.train.device)):
        return _train(cfg, Path(run_dir), resume, quiet, d)


def _train(cfg: Config, run_dir: Path, resume: bool, quiet: bool, d: distributed.Dist) -> dict:
    data_dir = Path(cfg.data.path)
    rt = make_runtime(cfg.train, distributed.rank_device(d, cfg.train.device))
    t, m = cfg.train, cfg.model

    # ---- data, model, optimizer ----
    manifest = read_manifest(data_dir)
    if t.init_from and not resume:  # the source's weights only mean something on its own token ids
        init_from.check_data(t.init_from, data_dir)
    m.vocab_size = m.vocab_size or manifest["vocab_size"]
    if m.vocab_size < manifest["vocab_size"]:
        raise ConfigError(f"model.vocab_size {m.vocab_size} is smaller than the data's vocabulary "
                          f"({manifest['vocab_size']}); leave it at 0 to take the data's")
    if t.objective == "mlm" and m.vocab_size <= manifest["vocab_size"]:
        raise ConfigError(f"train.objective mlm needs an id for [MASK] above the data's vocabulary: set "
                          f"--model.vocab_size {manifest['vocab_size'] + 1}")
    sources = mixture.resolve(cfg.data.mix, cfg.data.tokenizer, cfg.data.vocab_size) if cfg.data.mix else None
    if sources:  # each source's rows by (seed, source, step), their number by (seed, step): data/mixture.py
        sampler = mixture.MixtureSampler(sources, m.block_size, t.seed, cfg.data.packing)
        vals = {s.name: TokenData(s.path, "val") for s in sources}
    else:  # windows, packed documents, or whole examples
        sampler = make_sampler(TokenData(data_dir, "train"), m.block_size, t.seed, cfg.data.packing)
        vals = {"": TokenData(data_dir, "val")}
    batches = DeviceBatches(sampler, t.batch_size * t.grad_accum,  # this rank's slice of each global batch
                            distributed.rank_slices(t.batch_size, t.grad_accum, d), rt.device)
    for val in vals.values():
        val.check_context(m.block_size)
    tokenizer = load_tokenizer(data_dir / "tokenizer.json")
    token_bytes = token_byte_lengths(tokenizer)
    doc_sep = manifest["eot_id"] if cfg.data.doc_mask else None  # attention kept inside documents
    task_specs = [s.strip() for s in t.eval_tasks.split(",") if s.strip()]
    tasks = load_tasks(task_specs)  # a bad task file stops the run before it trains

    torch.manual_seed(t.seed)
    model = GPT(m).to(rt.device)
    special = {}
    if t.init_from and not resume:  # continued pretraining: its weights, a fresh optimizer and schedule
        special = init_from.load_weights(t.init_from, model)
    model, step_model = distributed.parallelize(model, d, rt.dtype)  # DDP wraps; FSDP2 shards in place
    optimizer = build_optimizer(model, cfg.optim, rt.device)

    def report(kind: str, step: int, detail: dict, message: str) -> None:  # stability incidents
        log.write("event", step=step, type=kind, detail=detail)
        display.message(message)

    guard = Guard(cfg.stability, report)
    state = _resume(run_dir, cfg, model, optimizer, guard) if resume else TrainState()
    if rt.device.type == "cpu":  # chosen once per run from the free cores, unless set
        state.threads = run_threads(t.threads, state.threads, d.enabled)
        torch.set_num_threads(state.threads)
    if sources and state.tokens_by_source is None:
        state.tokens_by_source = dict.fromkeys((s.name for s in sources), 0)
    repeated = _over_repeat(sources, t, m.block_size, cfg.data) if sources and not resume else None  # may refuse
    if d.is_main:  # only rank 0 writes the run directory, logs and metrics
        create_run_dir(run_dir, cfg, data_dir, resume)  # after the resume checks: a refused resume touches nothing
        init_from.carry_special_tokens(special, run_dir)
    d.barrier()
    log = MetricsLog(run_dir, cfg, enabled=d.is_main)
    if resume:
        log.write("event", step=state.step, type="resume", detail=f"from step {state.step}")
    elif t.init_from:
        log.write("event", step=0, type="init", detail={"source": t.init_from})
    faults = Faults.parse(cfg.stability.inject)
    display = Display(t.max_steps, state.step, cfg.log.progress, enabled=not quiet and d.is_main)
    if warning := contamination_warning(task_specs, data_dir):
        display.message(warning)
    if repeated:
        report("repeat", 0, repeated, f"note: this run sees {_times(repeated['epochs'])}, over data.max_repeat "
               f"{cfg.data.max_repeat:g} (--data.on_repeat refuse stops such a run)")
    n_seqs = batches.slices[0][1]
    step_fn, choice = choose_compile(
        model, loss_fn(step_model, rt.autocast, t.z_loss, t.label_smoothing, t.objective, t.mask_rate,
                       t.sampling_prob, doc_sep), setting=t.compile, device=rt.device, precision=rt.precision,
        threads=torch.get_num_threads(), dist=d, parallel=t.parallel, model_hash=cfg.model_hash(),
        vocab_size=m.vocab_size, micro=(n_seqs, m.block_size), micro_steps=len(batches),
        steps_left=t.max_steps - state.step, resumed=state.compiled)
    state.compiled = choice.compiled
    if t.compile == "auto":
        log.write("event", step=state.step, type="compile", detail={"reason": choice.reason, **choice.figures,
                                                                      "compiled": choice.compiled})
        display.message(choice.reason)
    tokens_per_step = t.batch_size * t.grad_accum * m.block_size
    flops_tok, peak = training_flops_per_token(m), peak_flops(rt.device, rt.dtype)  # MFU's numerator and its device

    def run_eval() -> dict:
        if sources:  # each source's line, then the mixture's (the one without "source")
            res = evaluate_mixture(model, vals, {s.name: s.weight for s in sources}, m.block_size, token_bytes,
                                   t.eval_tokens, t.batch_size, rt.device, rt.autocast, doc_sep)
            for name, r in res["sources"].items():
                log.write("eval", step=state.step, tokens=state.tokens, split="val", source=name, loss=r["loss"],
                          ppl=r["ppl"], bits_per_token=r["bits_per_token"], bits_per_byte=r["bits_per_byte"])
        else:
            res = evaluate(model, vals[""], m.block_size, token_bytes, t.eval_tokens, t.batch_size, rt.device,
                           rt.autocast, doc_sep)
        log.write("eval", step=state.step, tokens=state.tokens, split="val", loss=res["loss"], ppl=res["ppl"],
                  bits_per_token=res["bits_per_token"], bits_per_byte=res["bits_per_byte"])
        display.message(f"step {state.step}: val loss {res['loss']:.4f}  ppl {res['ppl']:.2f}  "
                        f"bits/byte {res['bits_per_byte']:.3f}")
        if tasks:
            _score_tasks(tasks, model, tokenizer, state, cfg, rt, log, display)
        return res

    def save() -> Path:
        trainer = {**vars(state), "model_hash": cfg.model_hash(), "model": vars(m), "stability": guard.state_dict()}
        path = ckpt.save(run_dir, state.step, model, optimizer, trainer, keep=t.keep, sharded=d.parallel == "fsdp",
                         is_main=d.is_main, barrier=d.barrier)
        log.write("event", step=state.step, type="checkpoint", detail=path.name)
        return path

    # ---- the loop ----
    display.message(f"training into {run_dir}{f' from step {state.step}' if state.step else ''}: "
                    f"{param_counts(m).total:,} parameters, {tokens_per_step:,} tokens per step, "
                    f"{rt.device.type} {rt.precision}{' compiled' if state.compiled else ''}"
                    f"{_threads_note(state.threads, t.threads)}, "
                    f"stability policy {cfg.stability.policy}")
    log.write("event", step=state.step, type="hardware",  # what each train line's MFU is measured against
              detail={"device": str(rt.device), "precision": rt.precision, "processes": d.world,
                      "peak_flops_per_device": peak, "flops_per_token": flops_tok, "threads": state.threads,
                      "compiled": state.compiled})
    t0, elapsed0 = time.perf_counter(), state.elapsed_s
    t_start, tokens_last = t0, state.tokens
    result, last_ckpt = None, None
    stop = GracefulStop(display.message).install()  # Ctrl-C: finish the step, save, exit
    try:
        while state.step < t.max_steps:
            if why := d.stop_reason(stop.requested):  # Ctrl-C, or torchrun died: all ranks save this step, leave
                raise Interrupted(f"{why} at step {state.step}; saved {save()}; continue with "
                                  f"nextoken train --out {run_dir} --resume")
            guard.maybe_snapshot(vars(state), model, optimizer)  # the ring of rollback snapshots

            # ---- step ----
            step = state.step
            lr = lr_at(step, cfg.optim, t.max_steps) * faults.lr_factor(state.data_step)
            set_lr(optimizer, lr)
            loss, grad_norm = _forward_backward(step_model, step_fn, batches, state.data_step, cfg, rt, faults, d)
            action = guard.check(step, loss, grad_norm)  # apply | skip | rollback; reports incidents
            if action == "apply":  # a non-finite step is never applied, whatever the policy
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if action == "rollback":
                state = _rollback(guard, state, step, run_dir, model, optimizer)
                last_ckpt, t_start, tokens_last = save(), time.perf_counter(), state.tokens
                continue
            if sources:
                rows = sampler.counts(state.data_step, t.batch_size * t.grad_accum)
                state.tokens_by_source = {s.name: state.tokens_by_source[s.name] + int(r) * m.block_size
                                          for s, r in zip(sources, rows, strict=True)}
            state.step, state.data_step = step + 1, state.data_step + 1
            state.tokens += tokens_per_step

            # ---- log ----
            now = time.perf_counter()
            state.elapsed_s = elapsed0 + now - t0
            if state.step % t.log_every == 0 or state.step == t.max_steps:
                tps = (state.tokens - tokens_last) / max(now - t_start, 1e-9)
                t_start, tokens_last = now, state.tokens
                util = mfu(tps, flops_tok, peak, d.world)  # tps is the whole job's: over every device's peak
                mix = {"tokens_by_source": state.tokens_by_source} if sources else {}
                log.write("train", step=state.step, tokens=state.tokens, loss=loss, lr=lr, grad_norm=grad_norm,
                          tokens_per_s=tps, mfu=util, elapsed_s=state.elapsed_s, **mix)
                display.update(state.step, loss, tps, util)

            # ---- checkpoint, then eval: nothing trained is lost whatever the eval does (their time is left out
            # of the next tokens/s) ----
            last, t_pause = state.step == t.max_steps, time.perf_counter()
            if last or (t.ckpt_every and state.step % t.ckpt_every == 0):
                last_ckpt = save()
            if last or (t.eval_every and state.step % t.eval_every == 0):
                result = run_eval()
            t_start += time.perf_counter() - t_pause
    except RuntimeError as e:  # a collective failed because another rank died: say so in one line
        if (lost := d.peer_failure(e)) is None:
            raise
        raise lost from None
    finally:
        batches.close()
        stop.restore()
        display.close()
        log.close()
    if result is None:  # resumed a finished run
        result = run_eval()
    last_ckpt = last_ckpt or ckpt.resolve(run_dir)
    return {**result, "step": state.step, "tokens": state.tokens, "run": str(run_dir),
            "checkpoint": str(last_ckpt), "elapsed_s": state.elapsed_s, "rank": d.rank,
            "model": distributed.full_model(model, d, lambda: GPT(m))}  # FSDP2: gathered on rank 0


def _writer_lock(run_dir: Path, resume: bool, d: distributed.Dist) -> contextlib.AbstractContextManager:
    """Rank 0, which writes the run directory, takes its lock (run.py); every rank learns the outcome, so that a
    refused job stops on all of them with rank 0's one line rather than waiting for it in a collective."""
    lock, error = None, None
    if d.is_main:
        try:
            lock = lock_run_dir(run_dir, resume)
        except NextokenError as e:
            error = e
    d.raise_together(error)
    return lock or contextlib.nullcontext()


def _score_tasks(tasks: list[Task], model, tokenizer, state: TrainState, cfg: Config, rt: Runtime,
                 log: MetricsLog, display: Display) -> None:
    """`--train.eval_tasks`: one metrics line of kind "task" per task (docs/metrics.md)."""
    scores = score_tasks(model, tokenizer, tasks, cfg.model.block_size, cfg.train.batch_size, rt.device, rt.autocast)
    for name, r in scores.items():
        log.write("task", step=state.step, tokens=state.tokens, task=name, **r)
    display.message(f"step {state.step}: " + "  ".join(f"{name} acc {r['acc']:.3f}" for name, r in scores.items()))


def _forward_backward(model, step_fn, batches: DeviceBatches, data_step: int, cfg: Config, rt: Runtime,
                      faults: Faults, d: distributed.Dist) -> tuple[float, float]:
    """Gradient of one optimizer step: this rank's equal micro-batches of the step's batch_size * grad_accum
    sequences, averaged over ranks by DDP or FSDP2, equal to the gradient of one batch of them all.
    Returns (mean cross-entropy over all ranks, global gradient norm before clipping)."""
    t, n_micro = cfg.train, len(batches)
    loss_sum = torch.zeros((), device=rt.device)  # summed on the device: one sync per step, not per micro-batch
    for micro in range(n_micro):
        x, y = batches.get(data_step, micro)
        x, y = faults.poison(data_step, x, y, cfg.model.vocab_size, t.seed)
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        with distributed.sync_grads(model, last_micro=micro == n_micro - 1):
            loss, ce = step_fn(x, y)  # `model`'s forward and the loss, compiled or not
            if data_step in faults.nan:
                loss = loss * float("nan")
            (loss / n_micro).backward()
        loss_sum += ce if data_step not in faults.nan else float("nan")
    grad_norm = distributed.clip_grad_norm(model, cfg.optim.grad_clip)
    return d.mean(loss_sum / n_micro).item(), grad_norm


def _rollback(guard: Guard, state: TrainState, step: int, run_dir: Path, model, optimizer) -> TrainState:
    """Restore the state to roll back to (stability.py) and delete the checkpoints of the abandoned
    branch, so that a later --resume continues from the rolled-back run."""
    trainer = guard.rollback(step, state.data_step, run_dir, model, optimizer)
    ckpt.drop_after(run_dir / "checkpoints", trainer["step"])
    return TrainState(trainer["step"], trainer["tokens"], trainer["data_step"], state.elapsed_s, state.compiled,
                      state.threads, trainer.get("tokens_by_source"))


def _resume(run_dir: Path, cfg: Config, model, optimizer, guard: Guard) -> TrainState:
    check_resumable(run_dir)
    if (run_dir / "tokenizer.json").is_file():  # the data must mean the ids the run was trained on
        check_tokenizer(cfg.data.path, load_tokenizer(run_dir / "tokenizer.json"), str(run_dir),
                        f"{run_dir}/tokenizer.json")
    path = ckpt.latest_checkpoint(run_dir)
    if path is None:  # killed before its first checkpoint: start it again from step 0, as it had started
        started = next((e["detail"] for e in reversed(read_metrics(run_dir))
                        if e.get("kind") == "event" and e.get("type") == "hardware"), {})
        return TrainState(compiled=started.get("compiled"), threads=started.get("threads"))
    trainer = ckpt.read_trainer(path)
    if trainer.get("model_hash") != cfg.model_hash():
        raise CheckpointError(f"{path} was trained with a different model config; resume with the run's "
                              "own config (drop the --model.* flags)")
    ckpt.restore(path, model, optimizer, rng=True)  # either format, any world size
    guard.load_state_dict(trainer.get("stability", {}))
    return TrainState(trainer["step"], trainer["tokens"], trainer["data_step"], trainer.get("elapsed_s", 0.0),
                      trainer.get("compiled"), trainer.get("threads"), trainer.get("tokens_by_source"))


def _threads_note(threads: int | None, setting: int) -> str:
    if threads is None:
        return ""
    how = "" if setting else " (from the free cores; --train.threads sets it)"
    return f", {threads} thread{'s' * (threads > 1)}{how}"


def _over_repeat(sources: list[mixture.MixSource], t, block_size: int, data_cfg) -> dict | None:
    """The sources of a mix this run would train on more than data.max_repeat times (epochs), or None; raises
    ConfigError instead with data.on_repeat refuse."""
    if not data_cfg.max_repeat:
        return None
    epochs = mixture.repeats(sources, t.max_steps * t.batch_size * t.grad_accum, block_size)
    over = {name: round(e, 3) for name, e in epochs.items() if e > data_cfg.max_repeat}
    if over and data_cfg.on_repeat == "refuse":
        raise ConfigError(f"this run would see {_times(over)}, over data.max_repeat {data_cfg.max_repeat:g}; lower "
                          "its weight or train.max_steps, or raise --data.max_repeat")
    return {"epochs": over, "max_repeat": data_cfg.max_repeat} if over else None


def _times(epochs: dict[str, float]) -> str:
    return ", ".join(f"{name} {e:.1f} times" for name, e in epochs.items())
