"""`--train.compile auto`: compile only where this machine measures compiling as faster for this run.

Whether torch.compile pays depends on the device, the shape and the run's length: on CUDA it usually
wins; on this project's 2-core CPUs it measured 0.87x, 1.16x and 0.96x of eager for the same tiny
preset on three occasions (docs/LOG.md), and its first compile costs 10-30 s a model. So `auto`:

1. keeps the choice a resumed run made (its numerics then continue as they were);
2. else uses this machine's earlier measurement of the same model, micro-batch, precision, threads and
   torch version (a small JSON file in the cache directory) if it is under MAX_AGE_DAYS old, compiling if
   that measurement saved more over the steps left than compiling cost;
3. else, when the run is long enough to repay a compile (eager time of the steps left at least
   PAYBACK_RUNS times the expected compile time), times forward and backward of the real model both
   ways on a random micro-batch (weights, gradients and RNG state untouched), the two ways interleaved and
   each its fastest pass (other work on a shared machine only ever slows a pass), and keeps the faster way
   (the compile cost is then already paid). The figures are remembered only if the machine's matmul rate,
   measured before and after, stayed within TRUSTED_LOAD of the best it has shown (hardware.load_factor):
   one taken while other jobs ran (eager 2,052 ms against compiled 722 ms, where quiet eager is ~130 ms)
   would otherwise decide every later run of that shape;
4. else (a short run) takes the device's usual choice, compiled on CUDA and eager on CPUs, unless the
   expected compile time alone exceeds the whole run's eager time (a sweep's one-minute runs): then eager.

A compile that fails (inductor on a CPU needs a C++ compiler) falls back to eager with one message.
Under torchrun the ranks use cached measurements only if every rank has one (and compile only if all of them
say so); otherwise every rank measures and the ranks' mean timings decide, so all ranks choose alike.
The timing makes the choice depend on the machine; `--train.compile on|off` fixes it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nextoken.hardware import device_name, load_factor

PAYBACK_RUNS = 10  # measure only when the run's eager time is at least this many expected compile times
COMPILE_S_PRIOR = {"cpu": 30.0, "cuda": 60.0}  # expected first-compile time before any was measured here
TIMED_PASSES = 5  # forward+backward passes timed each way (interleaved; the fastest counts), after one warm-up
STEP_UNIT = "step: model and loss"  # what choose_compile times and compiles (objective.loss_fn)
MARGIN = 0.03  # compiled must be this much faster than eager to count as faster (timing noise)
MAX_AGE_DAYS = 7  # a remembered measurement older than this is taken again (torch, drivers and load change)
TRUSTED_LOAD = 0.7  # remember a measurement only if the matmul rate was at least this share of its best here


@dataclass
class Choice:
    compiled: bool
    reason: str  # one line for the display and metrics.jsonl
    figures: dict  # the measurement behind it, if any


def cache_file() -> Path:
    from nextoken.data.builtin import cache_root

    return cache_root() / "compile-choices.json"


def machine_key(device: torch.device, precision: str, threads: int, world: int, parallel: str,
                model_hash: str, micro: tuple[int, int]) -> str:
    """What a measurement depends on: the same key on the same machine reuses it. `STEP_UNIT` names what
    is compiled, so that figures measured for another unit (the model alone, before 2026-11-25) are not."""
    name = device_name(device)
    return (f"{device.type}:{name}|torch {torch.__version__}|{precision}|threads {threads}|world {world} "
            f"{parallel}|model {model_hash}|micro {micro[0]}x{micro[1]}|{STEP_UNIT}")


def read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: measure again
        return {}


def write_cache(path: Path, key: str, figures: dict) -> None:
    """Add one measurement; atomic, and a failure to write (read-only or full disk) only costs a re-measure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_cache(path)
        data[key] = figures
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def decide_from_figures(fig: dict, steps_left: int, sunk: bool) -> bool:
    """Compile if the compiled step is faster beyond noise and, when compiling is still to be paid
    (not `sunk`), if it saves more over the steps left than compiling costs."""
    eager, comp = fig["eager_s"], fig["compiled_s"]
    if comp is None or comp > eager * (1 - MARGIN):
        return False
    return sunk or (eager - comp) * fig["micro_steps"] * steps_left > fig["compile_s"]


def choose_compile(model, step_fn, *, setting: str, device: torch.device, precision: str,
                   threads: int, dist, parallel: str, model_hash: str, vocab_size: int, micro: tuple[int, int],
                   micro_steps: int, steps_left: int, resumed: bool | None, cache: Path | None = None,
                   compiler=torch.compile) -> tuple[object, Choice]:
    """The function to train with (step_fn, compiled or not) and why. `step_fn(x, y)` runs the forward and
    the loss (objective.loss_fn); `model` is the module whose gradients it makes. `micro` is one
    micro-batch's (sequences, tokens); `micro_steps` the micro-batches per optimizer step."""
    if setting in ("on", "off"):
        return _apply(step_fn, setting == "on", f"compile {setting} (set)", {}, compiler)
    if resumed is not None:
        return _apply(step_fn, resumed, f"compile auto: {'compiled' if resumed else 'eager'}, as the run "
                      "was before it was resumed", {}, compiler)
    cache = cache or cache_file()
    key = machine_key(device, precision, threads, dist.world, parallel, model_hash, micro)
    known = read_cache(cache).get(key)
    if known and time.time() - known.get("measured_s", 0) > MAX_AGE_DAYS * 86400:
        known = None  # expired (or from before measurements were dated): measure again
    if not _every_rank(dist, known is not None, device):  # ranks with their own caches measure together
        known = None
    if known:
        use = _every_rank(dist, decide_from_figures(known, steps_left, sunk=False), device)
        return _apply(step_fn, use, f"compile auto: {'compiled' if use else 'eager'} from this machine's "
                      f"measurement of {known.get('measured', '?')} ({_describe(known)}; taken again after "
                      f"{MAX_AGE_DAYS} days)", known, compiler)

    batch = _random_batch(micro, vocab_size, device)
    eager_s = _time_passes(model, step_fn, batch, device)
    expected_compile = COMPILE_S_PRIOR.get(device.type, 60.0)
    eager_run_s = dist.mean(torch.tensor(eager_s, device=device)).item() * micro_steps * steps_left
    if eager_run_s < expected_compile:  # the compile alone would outlast the whole run
        return _apply(step_fn, False, f"compile auto: eager (this run's ~{eager_run_s:.0f} s eager is shorter "
                      f"than a ~{expected_compile:.0f} s compile)", {}, compiler)
    if eager_run_s < PAYBACK_RUNS * expected_compile:
        use = device.type == "cuda"
        return _apply(step_fn, use, f"compile auto: {'compiled' if use else 'eager'} (the {device.type} "
                      f"default; this run's ~{eager_run_s:.0f} s eager is too short to measure whether a "
                      f"~{expected_compile:.0f} s compile pays back)", {}, compiler)

    load = _load(device)
    figures = {"eager_s": eager_s, "compiled_s": None, "compile_s": 0.0, "micro_steps": micro_steps,
               "measured": time.strftime("%Y-%m-%d %H:%M"), "measured_s": time.time()}
    compiled_fn, error = None, None
    try:
        compiled_fn = compiler(step_fn)
        t0 = time.perf_counter()
        _passes(model, compiled_fn, batch, device, 1)  # compiles
        figures["compile_s"] = time.perf_counter() - t0
        eager_again, figures["compiled_s"] = _time_both(model, step_fn, compiled_fn, batch, device)
        figures["eager_s"] = min(eager_s, eager_again)
    except Exception as e:  # noqa: BLE001 - inductor fails in many ways (no C++ compiler, an unsupported op)
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        compiled_fn = None
    if not _every_rank(dist, error is None, device):
        error = error or "on another rank"
    elif dist.world > 1:  # every rank must choose alike: decide on the ranks' mean timings
        for k in ("eager_s", "compiled_s"):
            figures[k] = dist.mean(torch.tensor(figures[k], device=device)).item()
    if error is not None:
        model.zero_grad(set_to_none=True)
        figures.update(compiled_s=None, error=error)
    figures["load"] = round(min(load, _load(device)), 3)
    trusted = _every_rank(dist, figures["load"] >= TRUSTED_LOAD, device)
    use = decide_from_figures(figures, steps_left, sunk=True)
    if dist.is_main and trusted:
        write_cache(cache, key, figures)
    how = f"torch.compile failed here: {error}; --train.compile off skips the attempt" if error else _describe(figures)
    if not trusted:
        how += (f"; the machine ran at {figures['load']:.0%} of its best matmul rate, so the figures may mislead "
                "and are not remembered")
    choice = Choice(use, f"compile auto: {'compiled' if use else 'eager'}, measured here ({how})", figures)
    return (compiled_fn if use else step_fn), choice


def _every_rank(dist, flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on every rank (one all-reduce under torchrun), so that all ranks take the same
    branch: a rank that skipped a collective the others entered would hang the job."""
    return flag if dist.world == 1 else dist.mean(torch.tensor(float(flag), device=device)).item() == 1.0


def _apply(step_fn, use: bool, reason: str, figures: dict, compiler) -> tuple[object, Choice]:
    return (compiler(step_fn) if use else step_fn), Choice(use, reason, figures)


def _describe(fig: dict) -> str:
    if fig.get("compiled_s") is None:
        return f"torch.compile failed: {fig.get('error', '')}"
    comp = f"{fig['compiled_s'] * 1e3:.1f} ms"
    return (f"a micro-batch's forward and backward: eager {fig['eager_s'] * 1e3:.1f} ms, compiled {comp}, "
            f"compiling {fig.get('compile_s', 0):.0f} s")


def _random_batch(micro: tuple[int, int], vocab_size: int, device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(0)  # not the global RNG: the run's RNG state must not depend on timing
    x = torch.randint(vocab_size, (micro[0], micro[1] + 1), generator=g)
    return x[:, :-1].to(device), x[:, 1:].to(device)


def _passes(model, fn, batch, device, n: int) -> None:
    x, y = batch
    for _ in range(n):
        loss, _ = fn(x, y)
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_passes(model, fn, batch, device) -> float:
    """Seconds of `fn`'s fastest forward+backward, after a warm-up; leaves gradients unset and RNG as it was."""
    return _time_both(model, fn, None, batch, device)[0]


def _time_both(model, eager_fn, compiled_fn, batch, device) -> tuple[float, float | None]:
    """The fastest forward+backward of each way in seconds, the two interleaved pass by pass, so that load
    that comes and goes slows both alike (the minimum: load only ever adds time); after a warm-up of each.
    Leaves gradients unset and the RNG as it was."""
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    fns = [eager_fn] if compiled_fn is None else [eager_fn, compiled_fn]
    best = [float("inf")] * len(fns)
    for fn in fns:
        _passes(model, fn, batch, device, 1)
    for _ in range(TIMED_PASSES):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            _passes(model, fn, batch, device, 1)
            best[i] = min(best[i], time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    return best[0], (best[1] if compiled_fn is not None else None)


def _load(device: torch.device) -> float:
    """The matmul rate now over this machine's best (hardware.load_factor); 1.0 where it cannot be measured."""
    try:
        return load_factor(device)
    except RuntimeError:
        return 1.0
