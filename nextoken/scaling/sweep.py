"""IsoFLOP sweeps: per compute budget, a family of model sizes, each trained for exactly its budget.

Each run is an ordinary run directory, SWEEP/c<budget>-n<params>/, trained by nextoken.training.loop.train
with train.max_steps = D / tokens_per_step, so its LR schedule ends at the budget (Hoffmann et al. 2022
§3.1: a cosine cycle longer than the run overestimates its loss). The sizes are the smooth family of
scaling/shapes.py, each trained by its per-size rules (LR, batch, warmup, beta2: shapes.size_rules), spaced
evenly in N_eff around each budget's expected optimum (docs/scaling.md).

With schedule "wsd" the runs of one shape share a trunk: one warmup-stable run at constant LR, SWEEP/trunk-*/,
from whose checkpoints each budget's run branches off and cools down linearly over its last decay_ratio of
steps (Hägele et al. 2024; Hu et al. 2024, MiniCPM §4). Only the cooled-down points are points of the fit.

A sweep interrupted anywhere continues where it stopped: finished runs are read back, a run with a checkpoint
resumes from it, and a run that died before its first checkpoint starts again.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from nextoken.config import Config, ModelConfig, config_from_dict
from nextoken.data.prepare import read_manifest
from nextoken.errors import NextokenError
from nextoken.model.counting import effective_params, param_counts, training_flops_per_token
from nextoken.nonfinite import divergence
from nextoken.run import final_eval, read_metrics
from nextoken.scaling.shapes import (
    FAMILY_ASPECT,
    MIN_LAYERS,
    Family,
    SizeRules,
    count_params,
    dial_shape,
    family_head_size,
    family_of_shapes,
    family_shape,
    shape_for_params,
    size_rules,
)

# Five budgets half a decade apart (at least five, so that a fit has three or more interior minima to spare and a
# backtest one budget to leave out; docs/scaling.md). About 35 runs, some 20 minutes of one quiet CPU core.
DEFAULT_BUDGETS = (3e10, 1e11, 3e11, 1e12, 3e12)
MIN_STEPS = 20
# Where each budget's sizes are centred without a previous fit (`--around`): D = this x N_eff. The fits of the
# miniature checks put the optimum near 60 tokens per N_eff at 1e10-1e12 FLOPs (docs/scaling.md).
TOKENS_PER_PARAM = 60
SCHEDULES = ("cosine", "wsd")


def excluded_why(point: dict, vocab_size: int | None = None) -> str | None:
    """Why a point stays out of a fit, or None: a run that diverged (nonfinite.divergence: a non-finite loss,
    or one far above a uniform guess over `vocab_size` tokens) would drag the law anywhere, and a non-positive
    N or D has no logarithm."""
    if why := divergence(point.get("loss"), vocab_size):
        return f"diverged: {why}"
    if not all(isinstance(point.get(k), int | float) and math.isfinite(point[k]) and point[k] > 0
               for k in ("params", "tokens", "loss")):
        return "params, tokens and loss must be positive numbers"
    return None


@dataclass
class RunSpec:
    name: str
    budget: float  # the nominal compute budget of the IsoFLOP family
    n_layer: int
    n_head: int
    d_model: int
    params: int  # non-embedding parameters: Kaplan's N (`nextoken fit --count non-embedding`)
    params_total: int
    max_steps: int
    tokens: int  # D: max_steps * tokens per step
    flops: float  # the exact training FLOPs: tokens * training_flops_per_token = 6 * params_eff * tokens
    seed: int = 0  # added to the base seed: repeats of one size with other inits and data orders
    params_eff: float = 0.0  # N_eff = training FLOPs per token / 6: the N of the fit by default
    rules: dict | None = None  # the per-size rules it trains by (shapes.SizeRules), None: the base config's
    schedule: str = "cosine"
    trunk: str = ""  # wsd: the trunk run it branches from
    branch_at: int = 0  # wsd: the trunk's step where its cooldown starts
    warmup_steps: int = 0  # wsd: the trunk's warmup, shared by its branches (0: run_schedule's)


def _centre(budget: float, base: Config, tokens_per_param: float, count: str = "eff") -> float:
    """The middle of a budget's size family: N with D = tokens_per_param · N. Counted as N_eff it is exact,
    C = 6·N·D; counted as non-embedding N, a bisection over shapes under the exact FLOP count."""
    if count == "eff":
        return math.sqrt(budget / (6 * tokens_per_param))
    lo, hi = math.log(1e2), math.log(1e13)
    continuous = dataclasses.replace(base.model, depth=0)  # the dial's steps would make the bisection jump
    for _ in range(60):
        mid = (lo + hi) / 2
        cfg = shape_for_params(math.exp(mid), continuous)
        n = param_counts(cfg).non_embedding
        if budget / training_flops_per_token(cfg) > tokens_per_param * n:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def plan_sweep(base: Config, budgets: list[float], sizes: int = 7, spread: float = 12.0,
               tokens_per_param: float = TOKENS_PER_PARAM,
               log: Callable[[str], None] = lambda m: None, seeds: int = 1, dial: bool = False,
               rules: str = "per-size", schedule: str = "cosine", around=None, count: str = "eff",
               family: Family | None = None) -> list[RunSpec]:
    """`sizes` shapes per budget, spaced evenly in log N over a factor `spread` around the budget's centre: where
    D = tokens_per_param · N (N counted by `count`), or, given `around` (a fitted law, fit.FittedLaw), its optimum
    at that budget; each trained for budget / its FLOPs per token, rounded to whole steps, `seeds` times with
    different seeds (the fit then sees each size's scatter and averages it).

    The shapes are the smooth family of shapes.family_ladder (one head width for the sweep: `family`'s, else
    shapes.family_head_size at its smallest size), trained by shapes.size_rules with `rules` "per-size", by the base
    config's LR, batch and warmup with "fixed". With `dial`, the sizes are the depth dial's models
    (shapes.dial_shape at base.model.aspect_ratio, base's context): every depth whose N lies within the spread
    around the centre (at least the three nearest; `sizes` unused). With `schedule` "wsd", the runs of one shape and
    seed branch from one trunk (RunSpec.trunk, branch_at)."""
    if seeds < 1:
        raise NextokenError(f"--seeds must be >= 1, got {seeds}")
    if sizes < 3:
        raise NextokenError(f"--sizes must be >= 3 (a parabola needs three points), got {sizes}")
    if spread <= 1:
        raise NextokenError(f"--spread must be > 1, got {spread}")
    if not tokens_per_param > 0:
        raise NextokenError(f"--tokens-per-param must be > 0, got {tokens_per_param}")
    if schedule not in SCHEDULES:
        raise NextokenError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if rules not in ("per-size", "fixed"):
        raise NextokenError(f"--rules must be per-size or fixed, got {rules!r}")
    for budget in budgets:
        if not (math.isfinite(budget) and budget > 0):
            raise NextokenError(f"--budgets: every budget must be a positive number of FLOPs, got {budget:g}")
    budgets = sorted(budgets)

    def centre(budget: float) -> float:
        if around is not None:
            return count_params(around.optimal_shape(budget), count)
        return _centre(budget, base, tokens_per_param, count)

    if family is None and budgets:
        family = Family(family_head_size(centre(budgets[0]) / math.sqrt(spread)))
    runs = []
    for budget in budgets:
        c = centre(budget)
        if dial:
            shapes = _dial_family(base.model, c, spread)
        elif count == "eff":
            shapes = [family_shape(c * spread ** (i / (sizes - 1) - 0.5), base.model, family) for i in range(sizes)]
        else:
            shapes = [shape_for_params(c * spread ** (i / (sizes - 1) - 0.5), base.model) for i in range(sizes)]
        seen = set()
        distinct = len({(c.n_layer, c.d_model) for c in shapes})
        if distinct < len(shapes):
            log(f"budget {budget:.2g}: {distinct} distinct sizes of the {len(shapes)} asked (the family's smallest "
                "models are its floor, docs/scaling.md §2: this budget may have no interior minimum)")
        for cfg in shapes:
            key = (cfg.n_layer, cfg.d_model)
            if key in seen:
                continue
            seen.add(key)
            counts = param_counts(cfg)
            fpt = training_flops_per_token(cfg)
            r = size_rules(cfg, tokens=budget / fpt) if rules == "per-size" else None
            tokens_per_step = (r.batch_size * r.grad_accum if r else base.train.batch_size * base.train.grad_accum
                               ) * cfg.block_size
            steps = round(budget / fpt / tokens_per_step)
            if steps < MIN_STEPS:
                log(f"budget {budget:.2g}: skipping {cfg.n_layer}x{cfg.d_model} ({steps} steps < {MIN_STEPS})")
                continue
            tokens = steps * tokens_per_step
            name = f"c{budget:.2e}-n{counts.non_embedding:09d}".replace("+", "")
            for seed in range(seeds):
                spec = RunSpec(name + (f"-s{seed}" if seed else ""), budget, cfg.n_layer, cfg.n_head, cfg.d_model,
                               counts.non_embedding, counts.total, steps, tokens, tokens * fpt, seed,
                               params_eff=effective_params(cfg), rules=r.to_dict() if r else None, schedule=schedule)
                if schedule == "wsd":
                    spec.trunk = f"trunk-{cfg.n_layer}x{cfg.d_model}" + (f"-s{seed}" if seed else "")
                    spec.branch_at = _decay_start(base, spec)
                runs.append(spec)
    if schedule == "wsd":
        _check_trunks(runs, base)
    return runs


def _decay_start(base: Config, spec: RunSpec) -> int:
    """The step where a wsd run of `spec` leaves its stable phase: training.optim.lr_at's rule."""
    warmup = _warmup(base, spec)
    return max(warmup, int(spec.max_steps * (1 - base.optim.decay_ratio)))


def _warmup(base: Config, spec: RunSpec) -> int:
    want = spec.rules["warmup_steps"] if spec.rules else base.optim.warmup_steps
    return run_schedule(want, spec.max_steps)[0]


def _check_trunks(runs: list[RunSpec], base: Config) -> None:
    """Every branch of one trunk shares its warmup, the trunk being one run: the shortest branch's (run_schedule
    cuts a warmup to a tenth of a short run)."""
    by_trunk: dict[str, list[RunSpec]] = {}
    for r in runs:
        by_trunk.setdefault(r.trunk, []).append(r)
    for specs in by_trunk.values():
        w = min(_warmup(base, s) for s in specs)
        for s in specs:
            s.warmup_steps = w
            s.branch_at = max(w, int(s.max_steps * (1 - base.optim.decay_ratio)))


def _dial_family(base: ModelConfig, centre: float, spread: float) -> list[ModelConfig]:
    """The depth dial's models with N within a factor sqrt(spread) of `centre`, or the three nearest it; never
    fewer than MIN_LAYERS blocks (a one-layer model lies on another curve: shapes.MIN_LAYERS)."""
    family = [dial_shape(d, base, context=False) for d in range(MIN_LAYERS, 513)]
    distance = [abs(math.log(param_counts(m).non_embedding / centre)) for m in family]
    inside = [m for m, x in zip(family, distance, strict=True) if x <= math.log(spread) / 2]
    if len(inside) >= 3:
        return inside
    nearest = sorted(range(len(family)), key=lambda i: distance[i])[:3]
    return [family[i] for i in sorted(nearest)]


def run_schedule(base_warmup: int, max_steps: int) -> tuple[int, int]:
    """(warmup steps, steps between checkpoints) of a run of `max_steps`: warmup at most a tenth of the run,
    four checkpoints. Also how `plan --fit` writes the command that trains its model like the sweep's."""
    return min(base_warmup, max(1, max_steps // 10)), max(1, max_steps // 4)


def run_config(base: Config, spec: RunSpec) -> Config:
    cfg = copy.deepcopy(base)
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model = spec.n_layer, spec.n_head, spec.d_model
    if base.model.depth > 0:  # a dial sweep: the run's own depth
        cfg.model.depth = spec.n_layer
    if spec.rules:
        SizeRules(**spec.rules).apply(cfg)
    cfg.optim.schedule = spec.schedule
    cfg.train.max_steps = spec.max_steps
    cfg.train.seed = base.train.seed + spec.seed
    cfg.optim.warmup_steps, cfg.train.ckpt_every = run_schedule(cfg.optim.warmup_steps, spec.max_steps)
    if spec.warmup_steps:
        cfg.optim.warmup_steps = spec.warmup_steps
    cfg.train.eval_every = 0  # one evaluation, at the end of the schedule
    cfg.train.keep = 1
    cfg.train.log_every = max(cfg.train.log_every, spec.max_steps // 50)
    cfg.log.progress, cfg.log.sample_tokens = "off", 0
    return cfg


def finished_result(run_dir: Path, max_steps: int) -> dict | None:
    """The final eval line of a run that reached max_steps, else None."""
    return final_eval(read_metrics(run_dir), max_steps)


def sweep(base: Config, out: str | Path, budgets: list[float], sizes: int = 7, spread: float = 12.0,
          tokens_per_param: float = TOKENS_PER_PARAM, log: Callable[[str], None] = print,
          dry_run: bool = False, jobs: int = 1, seeds: int = 1, dial: bool = False, rules: str = "per-size",
          schedule: str = "cosine", around=None) -> list[dict]:
    """Train (or continue) the IsoFLOP sweep in `out`, `jobs` runs (wsd: trunks) at a time; one point per run,
    `plan_sweep`'s runs. `around`: a fitted law (fit.load_fit) whose optimum centres each budget.
    An empty `base.data.path` means the built-in corpus (prepared once and cached). Raises NextokenError for bad
    arguments or a failed run (rerunning the same sweep continues it)."""
    from nextoken.data.builtin import stdlib_data

    if jobs < 1:
        raise NextokenError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out)
    base = copy.deepcopy(base)
    if not base.data.path:
        base.data.path = str(stdlib_data(base.data.tokenizer, base.data.vocab_size, log=log))
    base.data.path = str(Path(base.data.path).resolve())
    manifest = read_manifest(base.data.path)
    base.model.vocab_size = base.model.vocab_size or manifest["vocab_size"]
    if dial:
        base.model.depth = base.model.depth or 1  # marks the family: fit and plan shape by the dial too
    law = None
    if around is not None:  # a fit.FittedLaw (the CLI loads it): its shapes at this sweep's vocabulary and context
        if around.base is None:
            raise NextokenError("--around: a fit of a points file has no shapes to centre on; give a sweep's fit")
        law = dataclasses.replace(around, base=dataclasses.replace(around.base, vocab_size=base.model.vocab_size,
                                                                   block_size=base.model.block_size))
    family = None if dial else _family_of_plan(out) or (law.family if law is not None else None)
    specs = plan_sweep(base, budgets, sizes, spread, tokens_per_param, log, seeds, dial=dial, rules=rules,
                       schedule=schedule, around=law, family=family)
    if not specs:
        raise NextokenError("every run of this sweep is shorter than "
                            f"{MIN_STEPS} steps; raise --budgets or lower --train.batch_size")
    total = sum(s.flops for s in specs)
    log(f"sweep: {len(specs)} runs over {len(budgets)} budget{'s' if len(budgets) != 1 else ''}, {total:.3g} FLOPs "
        "in all")
    if schedule == "wsd":
        trunk_steps = sum(max(s.branch_at for s in specs if s.trunk == t) for t in {s.trunk for s in specs})
        cooldowns = sum(s.max_steps - s.branch_at for s in specs)
        log(f"  wsd: {len({s.trunk for s in specs})} trunks; trunk and cooldown steps {trunk_steps + cooldowns:,} "
            f"against {sum(s.max_steps for s in specs):,} for separate runs")
    for s in specs:
        r = s.rules
        heads = f"{s.n_head} head" + ("s" if s.n_head > 1 else "")
        log(f"  {s.name}: {s.n_layer} layers x {s.d_model} ({heads}), N_eff {s.params_eff:,.0f} "
            f"(non-embedding {s.params:,}), {s.max_steps} steps, D {s.tokens:,} tokens "
            f"({s.tokens / s.params_eff:.1f}/N_eff, {s.tokens / s.params:.1f}/non-embedding)"
            + (f", lr {r['lr']:.3g}, {r['batch_size'] * r['grad_accum']} seqs/step, warmup {r['warmup_steps']} steps, "
               f"beta2 {r['beta2']}" if r else "")
            + (f", seed +{s.seed}" if s.seed else "") + (f", cools down from step {s.branch_at}" if s.trunk else ""))
    if dry_run:
        return []
    _write_plan(out, base, specs, family_of_shapes((s.d_model, s.n_head) for s in specs) if not dial else None)
    points: dict[str, dict] = {}

    def record(spec: RunSpec, result: dict) -> None:
        points[spec.name] = {**dataclasses.asdict(spec), "loss": result["loss"],
                             "bits_per_byte": result.get("bits_per_byte")}
        if why := excluded_why(points[spec.name], base.model.vocab_size):
            log(f"    {spec.name}: {why}; `nextoken fit` leaves it out")
        write_points(out / "points.csv", [points[s.name] for s in specs if s.name in points])

    todo = []
    for i, spec in enumerate(specs, 1):
        result = finished_result(out / spec.name, spec.max_steps)
        if result is None:
            todo.append((i, spec))
        else:
            log(f"[{i}/{len(specs)}] {spec.name} done: val loss {result['loss']:.4f}")
            record(spec, result)
    if schedule == "wsd":
        _train_trunks(base, todo, out, len(specs), jobs, log, record)
    elif jobs <= 1:
        for i, spec in todo:
            record(spec, _train_run(base, spec, out / spec.name, log, f"[{i}/{len(specs)}] "))
    else:
        _train_parallel(base, todo, out, len(specs), jobs, log, record)
    return [points[s.name] for s in specs]


def _train_run(base: Config, spec: RunSpec, run_dir: Path, log: Callable[[str], None], tag: str) -> dict:
    """Train (or resume) one run of the sweep; its final val loss and bits per byte."""
    from nextoken.checkpoint import latest_checkpoint

    resume = latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # died before its first checkpoint: nothing to keep
    log(f"{tag}{'resuming' if resume else 'training'} {spec.name}")
    res = _train(run_config(base, spec), run_dir, resume)
    log(f"    {spec.name}: val loss {res['loss']:.4f} in {res['elapsed_s']:.0f}s")
    return {"loss": res["loss"], "bits_per_byte": res["bits_per_byte"]}


def _train_trunk(base: Config, branches: list[tuple[int, RunSpec]], out: Path, total: int,
                 log: Callable[[str], None]) -> list[tuple[RunSpec, dict]]:
    """One shape's wsd runs: its trunk trained at constant LR up to each branch point in turn (SWEEP/trunk-*/,
    one checkpoint kept per branch point), and from there each branch's cooldown in its own run directory, which
    starts as a copy of the trunk's checkpoint at its branch point (Hägele et al. 2024, §3)."""
    from nextoken.checkpoint import latest_checkpoint
    from nextoken.checkpoint.files import LATEST, list_checkpoints, read_trainer, step_name

    branches = sorted(branches, key=lambda b: b[1].branch_at)
    trunk_dir = out / branches[0][1].trunk
    done = []
    for i, spec in branches:
        run_dir = out / spec.name
        if latest_checkpoint(run_dir) is None:  # not started: copy the trunk's checkpoint at the branch point
            have = {read_trainer(c)["step"]: c for c in list_checkpoints(trunk_dir / "checkpoints")}
            if spec.branch_at not in have:
                cfg = run_config(base, dataclasses.replace(spec, schedule="constant", max_steps=spec.branch_at))
                cfg.train.ckpt_every, cfg.train.keep = 0, len(branches) + 1
                cfg.train.eval_tokens = min(cfg.train.eval_tokens or 4096, 4096)  # the trunk's own evals count nothing
                resume = latest_checkpoint(trunk_dir) is not None
                if resume and read_trainer(latest_checkpoint(trunk_dir))["step"] > spec.branch_at:
                    raise NextokenError(f"{trunk_dir} is past step {spec.branch_at}, where {spec.name} branches off, "
                                        "and no longer holds that checkpoint; remove both and continue the sweep")
                log(f"[{i}/{total}] trunk {trunk_dir.name} to step {spec.branch_at}")
                _train(cfg, trunk_dir, resume)
                have = {read_trainer(c)["step"]: c for c in list_checkpoints(trunk_dir / "checkpoints")}
            if run_dir.exists():
                shutil.rmtree(run_dir)
            (run_dir / "checkpoints").mkdir(parents=True)
            for f in ("config.toml", "tokenizer.json"):
                shutil.copyfile(trunk_dir / f, run_dir / f)
            shutil.copytree(have[spec.branch_at], run_dir / "checkpoints" / step_name(spec.branch_at))
            (run_dir / "checkpoints" / LATEST).write_text(step_name(spec.branch_at) + "\n")
        log(f"[{i}/{total}] cooldown {spec.name} from step {spec.branch_at} to {spec.max_steps}")
        cfg = run_config(base, spec)
        res = _train(cfg, run_dir, True)
        log(f"    {spec.name}: val loss {res['loss']:.4f}")
        done.append((spec, {"loss": res["loss"], "bits_per_byte": res["bits_per_byte"]}))
    return done


def _train(cfg: Config, run_dir: Path, resume: bool) -> dict:
    """The training loop on one run, its failure reworded: the loop's own advice is about `nextoken train`."""
    from nextoken.training import loop

    try:
        return loop.train(cfg, run_dir, resume=resume, quiet=True)
    except NextokenError as e:
        why = str(e).split(";")[0]
        raise NextokenError(f"sweep stopped in {run_dir} ({why}); the same `nextoken sweep` command "
                            "continues the sweep") from None


def _trunk_worker(base: Config, branches: list, out: Path, total: int) -> list:
    return _train_trunk(base, branches, out, total, lambda m: print(m, file=sys.stderr, flush=True))


def _train_trunks(base: Config, todo: list, out: Path, total: int, jobs: int, log, record) -> None:
    """The wsd runs, trunk by trunk (`jobs` trunks at once, each in its own process, as _train_parallel)."""
    by_trunk: dict[str, list] = {}
    for i, spec in todo:
        by_trunk.setdefault(spec.trunk, []).append((i, spec))
    if jobs <= 1:
        for branches in by_trunk.values():
            for spec, result in _train_trunk(base, branches, out, total, log):
                record(spec, result)
        return
    base = copy.deepcopy(base)
    base.train.threads = base.train.threads or 1
    with _pool(jobs) as pool:
        futures = [pool.submit(_trunk_worker, base, b, out, total) for b in by_trunk.values()]
        for future in as_completed(futures):
            for spec, result in future.result():
                record(spec, result)


def _exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """A pool process's initializer: a daemon thread ends this process once `parent_pid` is no longer its parent.
    A sweep stopped by a signal its pool never sees (SIGTERM or SIGKILL to the sweep's own process, not Ctrl-C to
    the terminal's process group) would otherwise leave its runs training on as orphans, writing into run
    directories that a restarted sweep is training too. Checkpoints are written atomically, so the exit loses at
    most the steps since the last one, as any interruption does."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _pool(jobs: int) -> ProcessPoolExecutor:
    """`jobs` spawned processes (no fork of a process that holds torch's thread pools) that end with this one."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))


def _worker(base: Config, spec: RunSpec, run_dir: Path, tag: str) -> dict:
    """One run in a pool process (train.threads, set by the loop's runtime, keeps it to its share of cores)."""
    return _train_run(base, spec, run_dir, lambda m: print(m, file=sys.stderr, flush=True), tag)


def _train_parallel(base: Config, todo: list, out: Path, total: int, jobs: int, log, record) -> None:
    """Runs of the sweep in `jobs` processes at once (each at train.threads, default 1). Tiny models keep
    one core busy each and gain little from a second thread, so a 2-core CPU finishes a sweep ~2x sooner."""
    base = copy.deepcopy(base)
    base.train.threads = base.train.threads or 1
    with _pool(jobs) as pool:
        futures = {pool.submit(_worker, base, spec, out / spec.name, f"[{i}/{total}] "): spec for i, spec in todo}
        try:
            for future in as_completed(futures):
                record(futures[future], future.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _family_of_plan(out: Path) -> Family | None:
    """The model family an existing sweep in `out` trained: recorded in its sweep.json, else (sweeps from before it
    was recorded) the one head width all its runs share; None for a new sweep or runs of mixed head widths. A
    sweep continued with more budgets (or --around) keeps its family, so that one fit never mixes two families; a
    new sweep `--around` a fit takes that fit's family."""
    if not (out / "sweep.json").is_file():
        return None
    plan = read_plan(out)
    if fam := plan.get("family"):
        return Family(int(fam["head_size"]), int(fam.get("aspect", FAMILY_ASPECT)))
    return family_of_shapes((r.get("d_model"), r.get("n_head")) for r in plan["runs"].values())


def _write_plan(out: Path, base: Config, specs: list[RunSpec], family: Family | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    runs = {s.name: dataclasses.asdict(s) for s in specs}
    if path.is_file():
        old = read_plan(out)
        if old["base"]["model"] != base.to_dict()["model"] or old["base"]["optim"] != base.to_dict()["optim"]:
            raise NextokenError(f"{out} holds a sweep with another base config; continue it with the same "
                                "flags, or choose another --out")
        shape = ("n_layer", "n_head", "d_model", "max_steps", "seed")
        for name, spec in runs.items():
            if name in old["runs"] and any(old["runs"][name].get(k) != spec[k] for k in shape):
                raise NextokenError(f"{out} already has a run {name} of another shape or length; continue the "
                                    "sweep with the flags it was started with, or choose another --out")
        runs = {**old["runs"], **runs}
    plan = {"version": 1, "base": base.to_dict(), "runs": runs}
    if family is not None:
        plan["family"] = family.to_dict()
    path.write_text(json.dumps(plan, indent=1))


def read_plan(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / "sweep.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if not Path(sweep_dir).exists():
            raise NextokenError(f"{sweep_dir} does not exist; give the --out of a `nextoken sweep`") from None
        raise NextokenError(f"{sweep_dir} is not a sweep directory (no sweep.json); run `nextoken sweep` "
                            "first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NextokenError(f"{path} is corrupt ({e})") from None


def collect_points(sweep_dir: str | Path) -> tuple[list[dict], Config]:
    """The finished runs of a sweep, as points (params, tokens, flops, budget, loss), and its base config."""
    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    points = []
    for name, spec in plan["runs"].items():
        result = finished_result(sweep_dir / name, spec["max_steps"])
        if result is not None:
            points.append({**spec, "loss": result["loss"], "bits_per_byte": result.get("bits_per_byte")})
    return points, config_from_dict(plan["base"])


def write_points(path: Path, points: list[dict]) -> None:
    cols = ["params", "tokens", "loss", "flops", "budget", "name", "params_total", "params_eff", "bits_per_byte"]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(points)
    tmp.replace(path)
