"""IsoFLOP sweeps: per compute budget, a family of model sizes, each trained for exactly its budget.

Each run is an ordinary run directory, SWEEP/c<budget>-n<params>/, trained by nextoken.training.loop.train
with train.max_steps = D / tokens_per_step, so its LR schedule ends at the budget (Hoffmann et al. 2022
§3.1: a cosine cycle longer than the run overestimates its loss). A sweep interrupted anywhere continues
where it stopped: finished runs are read back, a run with a checkpoint resumes from it, and a run
that died before its first checkpoint starts again.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import multiprocessing
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from nextoken.config import Config, ModelConfig, config_from_dict
from nextoken.data.prepare import read_manifest
from nextoken.errors import NextokenError
from nextoken.model.counting import param_counts, training_flops_per_token
from nextoken.run import final_eval, read_metrics
from nextoken.scaling.fit import excluded_why
from nextoken.scaling.shapes import MIN_LAYERS, dial_shape, shape_for_params

# With the `scaling` preset on the built-in corpus (7 sizes over a factor 30, centred at 150 tokens per
# parameter): 26 runs, 16 minutes of one quiet core, and four convex IsoFLOP profiles with their minima inside
# the sampled sizes (docs/LOG.md, "scaling laws again").
DEFAULT_BUDGETS = (1e11, 3e11, 1e12, 3e12)
MIN_STEPS = 20
TOKENS_PER_PARAM = 20  # Chinchilla's ratio (Hoffmann et al. 2022, Table 3); the CLI centres CPU sweeps at 150


@dataclass
class RunSpec:
    name: str
    budget: float  # the nominal compute budget of the IsoFLOP family
    n_layer: int
    n_head: int
    d_model: int
    params: int  # non-embedding parameters: the N of the laws
    params_total: int
    max_steps: int
    tokens: int  # D: max_steps * tokens per step
    flops: float  # the exact training FLOPs: tokens * training_flops_per_token
    seed: int = 0  # added to the base seed: repeats of one size with other inits and data orders


def _centre(budget: float, base: Config, tokens_per_param: float) -> float:
    """N with D = tokens_per_param · N under the exact FLOP count: the middle of a budget's size family."""
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


def plan_sweep(base: Config, budgets: list[float], sizes: int = 5, spread: float = 16.0,
               tokens_per_param: float = TOKENS_PER_PARAM,
               log: Callable[[str], None] = lambda m: None, seeds: int = 1, dial: bool = False) -> list[RunSpec]:
    """`sizes` shapes per budget, spaced evenly in log N over a factor `spread`, centred on 20 tokens
    per parameter (default 20); each trained for budget / its FLOPs per token, rounded to whole steps,
    `seeds` times with different seeds (the fit then sees each size's scatter and averages it).

    With `dial`, the sizes are the depth dial's models (shapes.dial_shape at base.model.aspect_ratio, base's
    context): every depth whose N lies within the spread around the centre (at least the three nearest), so that
    all shapes of the sweep share one aspect ratio and head width and only the depth moves (`sizes` unused)."""
    if seeds < 1:
        raise NextokenError(f"--seeds must be >= 1, got {seeds}")
    if sizes < 3:
        raise NextokenError(f"--sizes must be >= 3 (a parabola needs three points), got {sizes}")
    if spread <= 1:
        raise NextokenError(f"--spread must be > 1, got {spread}")
    if not tokens_per_param > 0:
        raise NextokenError(f"--tokens-per-param must be > 0, got {tokens_per_param}")
    tokens_per_step = base.train.batch_size * base.train.grad_accum * base.model.block_size
    runs = []
    for budget in sorted(budgets):
        if not (math.isfinite(budget) and budget > 0):
            raise NextokenError(f"--budgets: every budget must be a positive number of FLOPs, got {budget:g}")
        centre = _centre(budget, base, tokens_per_param)
        seen = set()
        if dial:
            shapes = _dial_family(base.model, centre, spread)
        else:
            shapes = [shape_for_params(centre * spread ** (i / (sizes - 1) - 0.5), base.model) for i in range(sizes)]
        for cfg in shapes:
            counts = param_counts(cfg)
            fpt = training_flops_per_token(cfg)
            steps = round(budget / fpt / tokens_per_step)
            key = (cfg.n_layer, cfg.d_model)
            if key in seen:
                continue
            seen.add(key)
            if steps < MIN_STEPS:
                log(f"budget {budget:.2g}: skipping {cfg.n_layer}x{cfg.d_model} ({steps} steps < {MIN_STEPS})")
                continue
            tokens = steps * tokens_per_step
            name = f"c{budget:.2e}-n{counts.non_embedding:09d}".replace("+", "")
            runs += [RunSpec(name + (f"-s{seed}" if seed else ""), budget, cfg.n_layer, cfg.n_head, cfg.d_model,
                             counts.non_embedding, counts.total, steps, tokens, tokens * fpt, seed)
                     for seed in range(seeds)]
    return runs


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
    cfg.train.max_steps = spec.max_steps
    cfg.train.seed = base.train.seed + spec.seed
    cfg.optim.warmup_steps, cfg.train.ckpt_every = run_schedule(base.optim.warmup_steps, spec.max_steps)
    cfg.train.eval_every = 0  # one evaluation, at the end of the schedule
    cfg.train.keep = 1
    cfg.train.log_every = max(cfg.train.log_every, spec.max_steps // 50)
    cfg.log.progress, cfg.log.sample_tokens = "off", 0
    return cfg


def finished_result(run_dir: Path, max_steps: int) -> dict | None:
    """The final eval line of a run that reached max_steps, else None."""
    return final_eval(read_metrics(run_dir), max_steps)


def sweep(base: Config, out: str | Path, budgets: list[float], sizes: int = 5, spread: float = 16.0,
          tokens_per_param: float = TOKENS_PER_PARAM, log: Callable[[str], None] = print,
          dry_run: bool = False, jobs: int = 1, seeds: int = 1, dial: bool = False) -> list[dict]:
    """Train (or continue) the IsoFLOP sweep in `out`, `jobs` runs at a time; one point per run. An empty
    `base.data.path` means the built-in corpus (prepared once and cached). Raises NextokenError for bad
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
    specs = plan_sweep(base, budgets, sizes, spread, tokens_per_param, log, seeds, dial=dial)
    if not specs:
        raise NextokenError("every run of this sweep is shorter than "
                            f"{MIN_STEPS} steps; raise --budgets or lower --train.batch_size")
    total = sum(s.flops for s in specs)
    log(f"sweep: {len(specs)} runs over {len(budgets)} budgets, {total:.3g} FLOPs in all")
    for s in specs:
        log(f"  {s.name}: {s.n_layer} layers x {s.d_model} ({s.n_head} heads), N {s.params:,}, "
            f"{s.max_steps} steps, D {s.tokens:,} tokens ({s.tokens / s.params:.1f}/param)"
            + (f", seed +{s.seed}" if s.seed else ""))
    if dry_run:
        return []
    _write_plan(out, base, specs)
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
    if jobs <= 1:
        for i, spec in todo:
            record(spec, _train_run(base, spec, out / spec.name, log, f"[{i}/{len(specs)}] "))
    else:
        _train_parallel(base, todo, out, len(specs), jobs, log, record)
    return [points[s.name] for s in specs]


def _train_run(base: Config, spec: RunSpec, run_dir: Path, log: Callable[[str], None], tag: str) -> dict:
    """Train (or resume) one run of the sweep; its final val loss and bits per byte."""
    from nextoken.checkpoint import latest_checkpoint
    from nextoken.training import loop

    resume = latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # died before its first checkpoint: nothing to keep
    log(f"{tag}{'resuming' if resume else 'training'} {spec.name}")
    try:
        res = loop.train(run_config(base, spec), run_dir, resume=resume, quiet=True)
    except NextokenError as e:
        why = str(e).split(";")[0]  # the loop's own advice is about `nextoken train`
        raise NextokenError(f"sweep stopped in {run_dir} ({why}); the same `nextoken sweep` command "
                            "continues the sweep") from None
    log(f"    {spec.name}: val loss {res['loss']:.4f} in {res['elapsed_s']:.0f}s")
    return {"loss": res["loss"], "bits_per_byte": res["bits_per_byte"]}


def _worker(base: Config, spec: RunSpec, run_dir: Path, tag: str) -> dict:
    """One run in a pool process (train.threads, set by the loop's runtime, keeps it to its share of cores)."""
    return _train_run(base, spec, run_dir, lambda m: print(m, file=sys.stderr, flush=True), tag)


def _train_parallel(base: Config, todo: list, out: Path, total: int, jobs: int, log, record) -> None:
    """Runs of the sweep in `jobs` processes at once (each at train.threads, default 1). Tiny models keep
    one core busy each and gain little from a second thread, so a 2-core CPU finishes a sweep ~2x sooner."""
    base = copy.deepcopy(base)
    base.train.threads = base.train.threads or 1
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_worker, base, spec, out / spec.name, f"[{i}/{total}] "): spec for i, spec in todo}
        try:
            for future in as_completed(futures):
                record(futures[future], future.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _write_plan(out: Path, base: Config, specs: list[RunSpec]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    runs = {s.name: dataclasses.asdict(s) for s in specs}
    if path.is_file():
        old = read_plan(out)
        if old["base"]["model"] != base.to_dict()["model"] or old["base"]["optim"] != base.to_dict()["optim"]:
            raise NextokenError(f"{out} holds a sweep with another base config; continue it with the same "
                                "flags, or choose another --out")
        runs = {**old["runs"], **runs}
    path.write_text(json.dumps({"version": 1, "base": base.to_dict(), "runs": runs}, indent=1))


def read_plan(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / "sweep.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
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
    cols = ["params", "tokens", "loss", "flops", "budget", "name", "params_total", "bits_per_byte"]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(points)
    tmp.replace(path)
