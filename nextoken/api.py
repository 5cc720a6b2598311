"""The Python API: what the `nextoken` command does, as functions for notebooks and scripts. `import nextoken`
exposes these names (lazily: importing the package loads neither torch nor the model).

    import nextoken
    cfg = nextoken.build_config("tiny", overrides=[("train.max_steps", "200")])
    result = nextoken.train(cfg, out="runs/api")           # final val loss, perplexity, bits per byte
    run = nextoken.Run("runs/api")                          # config, tokenizer, metrics, checkpoints, models
    print(nextoken.sample(run, "def", max_new_tokens=50, seed=0))
    dist = nextoken.next_token(run, "import")               # the next-token distribution, top 10
    nextoken.plan(flops=5.76e23)                            # Chinchilla's compute-optimal allocation

Every function raises a `nextoken.errors.NextokenError` subclass, with a one-line message that says what to
do, for bad input; the CLI prints exactly that line.
"""

from __future__ import annotations

import time
from pathlib import Path

from nextoken.config import Config, apply_dict, build_config, load_toml, set_field, validate
from nextoken.errors import ConfigError, DataError, NextokenError
from nextoken.run import Loaded, Run, check_resumable

__all__ = ["Run", "build_config", "evaluate", "evaluate_harness", "evaluate_tasks", "fit", "next_token", "plan",
           "prepare", "resolve_train_config", "sample", "train"]


def resolve_train_config(preset: str | None = None, file: str | Path | None = None,
                         overrides: list[tuple[str, str]] | None = None, data: str | Path | None = None,
                         out: str | Path | None = None, resume: bool = False,
                         init_from: str | Path | None = None) -> Config:
    """The config a `train` command means. Precedence: defaults < preset (default `tiny`) < TOML file < flags.
    With `resume` and neither preset nor file, the run's own config.toml replaces preset and file, so
    `--resume` alone continues the run as it was configured (flags still apply on top). With `init_from` (or
    `train.init_from`), the model's fields come from that run or Hugging Face directory (training/init_from.py).
    Raises ConfigError for unknown or ill-typed fields, or `resume` without a run in `out`."""
    if resume and init_from:
        raise ConfigError("--init-from starts a new run from other weights and --resume continues a run; pass one")
    if resume and not out:
        raise ConfigError("--resume needs --out RUN, the run to continue")
    if resume:
        try:
            check_resumable(out)
        except NextokenError as e:
            raise ConfigError(str(e)) from None
    run_config = Path(out) / "config.toml" if out else None
    if resume and not file and not preset and run_config and run_config.is_file():
        cfg = Config()
        apply_dict(cfg, load_toml(run_config), str(run_config))
        for key, value in overrides or []:
            set_field(cfg, key, value)
        validate(cfg)
    else:
        cfg = build_config(preset or "tiny", file, overrides)
        if init_from:
            cfg.train.init_from = str(init_from)
        if cfg.train.init_from:
            from nextoken.training.init_from import apply_source

            apply_source(cfg, overrides or [])
    if data:
        from nextoken.data.mixture import is_mix, parse_mix

        if is_mix(str(data)):
            parse_mix(str(data))  # a bad weight string is one line now, not after the corpus is prepared
            cfg.data.mix = str(data)
        else:
            cfg.data.path, cfg.data.mix = str(data), ""
    return cfg


def default_run_dir(preset: str | None = None) -> Path:
    """runs/PRESET-TIMESTAMP, or with -2, -3, ... when runs started in the same second already took it."""
    name = f"runs/{preset or 'tiny'}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = name, 1
    while Path(out).exists():
        n += 1
        out = f"{name}-{n}"
    return Path(out)


def train(config: Config | None = None, out: str | Path | None = None, *, resume: bool = False,
          quiet: bool = False, log=None) -> dict:
    """Train a model per `config` (default: the `tiny` preset) into the run directory `out` (default
    runs/tiny-TIMESTAMP). An empty `config.data.path` means the built-in corpus, prepared once and cached.
    `resume` continues `out` from its newest checkpoint. Under torchrun every process calls it.

    Returns the final figures: `loss` (nats per token), `ppl`, `bits_per_token`, `bits_per_byte`, `step`,
    `tokens`, `elapsed_s` (s), `run` and `checkpoint` (paths), `rank`, and `model` (the trained GPT; on
    ranks other than 0 of an FSDP2 job, None). Raises NextokenError subclasses for bad config or data."""
    from nextoken.data import mixture
    from nextoken.data.builtin import builtin_data, is_builtin
    from nextoken.training.distributed import main_first
    from nextoken.training.loop import train as train_loop

    cfg = config if config is not None else build_config("tiny")
    with main_first(cfg.train) as dist:  # under torchrun rank 0 prepares the built-in corpora, the others wait
        if cfg.data.mix:  # its first source's directory is the run's data.path (tokenizer, val documents)
            cfg.data.path = str(mixture.resolve(cfg.data.mix, cfg.data.tokenizer, cfg.data.vocab_size, log)[0].path)
            cfg.data.mix = mixture.absolute(cfg.data.mix)
        elif not cfg.data.path or is_builtin(cfg.data.path):
            cfg.data.path = str(builtin_data(cfg.data.path or "stdlib", cfg.data.tokenizer, cfg.data.vocab_size,
                                             log=log))
    cfg.data.path = str(Path(cfg.data.path).resolve())
    if dist.enabled and not out:
        raise ConfigError("a multi-process run needs --out RUN, the one directory all its processes share")
    return train_loop(cfg, out or default_run_dir(), resume=resume, quiet=quiet)


def _loaded(run: Run | Loaded | str | Path, step: int | None, device: str) -> Loaded:
    if isinstance(run, Loaded):
        return run
    return (run if isinstance(run, Run) else Run(run)).load(step, device)


def evaluate(run: Run | Loaded | str | Path, data: str | Path | None = None, split: str = "val", tokens: int = 0,
             step: int | None = None, device: str = "cpu") -> dict:
    """Held-out figures of a checkpoint (default: the newest) on `split` of `data` (default: the run's own
    prepared data; a mixed run's, every source of its mix); `tokens` 0 evaluates the whole split. Returns
    `loss` (nats per token), `ppl`, `bits_per_token`, `bits_per_byte`, `eval_tokens`, `eval_bytes`, `step`,
    `tokens` (trained) and `checkpoint`; for a mix also `sources`, each source's figures (as the run's
    per-source eval lines). Raises DataError for data prepared with another tokenizer than the run's."""
    from nextoken.data import mixture
    from nextoken.data.builtin import builtin_data, is_builtin
    from nextoken.data.loader import TokenData
    from nextoken.data.prepare import check_tokenizer, read_manifest
    from nextoken.data.tokenizer import token_byte_lengths
    from nextoken.eval.evaluate import evaluate as evaluate_model
    from nextoken.eval.evaluate import evaluate_mixture

    loaded = _loaded(run, step, device)
    data_cfg = loaded.run.config.data
    if data is not None and is_builtin(str(data)):  # a built-in corpus, prepared with the run's own tokenizer
        data = builtin_data(str(data), str(loaded.run.path / "tokenizer.json"), data_cfg.vocab_size)
    data_dir = data or data_cfg.path
    if not data_dir:
        raise DataError(f"{loaded.run.path} names no prepared data (an imported model); pass --data DIR, prepared "
                        f"with its tokenizer: nextoken prepare SOURCE --out DIR --tokenizer {loaded.run.path}/"
                        "tokenizer.json")
    sources = mixture.resolve(data_cfg.mix, data_cfg.tokenizer, data_cfg.vocab_size) if data_cfg.mix and not data \
        else [mixture.MixSource("", str(data_dir), 1.0, Path(data_dir))]
    for s in sources:
        check_tokenizer(s.path, loaded.tokenizer, str(loaded.run.path), f"{loaded.run.path}/tokenizer.json")
    doc_sep = read_manifest(sources[0].path)["eot_id"] if data_cfg.doc_mask else None
    args = (loaded.model.cfg.block_size, token_byte_lengths(loaded.tokenizer), tokens)
    if len(sources) > 1 or sources[0].name:
        res = evaluate_mixture(loaded.model, {s.name: TokenData(s.path, split) for s in sources},
                               {s.name: s.weight for s in sources}, *args, device=device, doc_sep=doc_sep)
    else:
        res = evaluate_model(loaded.model, TokenData(data_dir, split), *args, device=device, doc_sep=doc_sep)
    return {**res, "step": loaded.step, "tokens": loaded.trainer["tokens"], "checkpoint": str(loaded.checkpoint)}


def evaluate_tasks(run: Run | Loaded | str | Path, tasks: list[str], step: int | None = None, device: str = "cpu",
                   batch_size: int = 32, log=None) -> dict:
    """Scores of a checkpoint (default: the newest) on downstream tasks: each a task .jsonl file or
    `builtin:nextline` (eval/tasks.py, docs/eval.md). Returns {"tasks": {NAME: {"n", "acc", "acc_norm",
    "bits_per_byte"}}, "step", "checkpoint"}; `log` hears a warning when the run trained on what a task tests.
    Raises DataError, naming the line, for a malformed task file."""
    from nextoken.eval.tasks import contamination_warning, load_tasks, score_tasks

    loaded_tasks = load_tasks(tasks)  # a bad file fails before a model is loaded
    loaded = _loaded(run, step, device)
    if log and (warning := contamination_warning(tasks, loaded.run.config.data.path)):
        log(warning)
    scores = score_tasks(loaded.model, loaded.tokenizer, loaded_tasks, loaded.model.cfg.block_size, batch_size,
                         device)
    return {"tasks": scores, "step": loaded.step, "checkpoint": str(loaded.checkpoint)}


def evaluate_harness(run: Run | Loaded | str | Path, tasks: list[str], include_path: str | Path | None = None,
                     limit: int | None = None, step: int | None = None, device: str = "cpu",
                     batch_size: int = 32) -> dict:
    """lm-evaluation-harness's `simple_evaluate` on a checkpoint through nextoken's own model class
    (eval/harness.py; needs `pip install 'nextoken[eval]'`): `tasks` are lm-eval task names, `include_path` a
    folder of your own task YAMLs, `limit` the documents per task. Returns lm-eval's results dictionary."""
    from nextoken.eval.harness import run_harness

    return run_harness(_loaded(run, step, device), tasks, include_path, limit, batch_size)


def stream(run: Run | Loaded | str | Path, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None, step: int | None = None,
           device: str = "cpu", stop_at_eot: bool = True):
    """Text pieces of a sample as they are generated (generate.stream_text); arguments as `sample`."""
    from nextoken.generate import check_sampling, stream_text

    check_sampling(temperature, top_k, top_p, max_new_tokens)  # before a model is loaded
    loaded = _loaded(run, step, device)
    return stream_text(loaded.tokenizer, loaded.model, prompt, max_new_tokens, stop_at_eot, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed)


def sample(run: Run | Loaded | str | Path, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None, step: int | None = None,
           device: str = "cpu", stop_at_eot: bool = True) -> str:
    """A continuation of `prompt` (without the prompt) from a run's checkpoint: temperature 0 is greedy;
    top-k then top-p (nucleus, Holtzman et al. 2020) filtering; `seed` makes it reproducible; it ends at the
    end-of-text token unless `stop_at_eot` is off.
    Raises NextokenError for a negative temperature, top_k < 1 or top_p outside (0, 1]."""
    return "".join(stream(run, prompt, max_new_tokens, temperature, top_k, top_p, seed, step, device, stop_at_eot))


def next_token(run: Run | Loaded | str | Path, prompt: str, temperature: float = 1.0, top: int = 10,
               step: int | None = None, device: str = "cpu") -> dict:
    """The model's distribution over the token after `prompt` (generate.next_token_distribution): the prompt's
    tokens, the `top` most likely next tokens with p and -log p (nats), entropy (nats) and e^H."""
    from nextoken.generate import check_distribution, next_token_distribution

    check_distribution(temperature, top)  # before a model is loaded
    loaded = _loaded(run, step, device)
    return next_token_distribution(loaded.model, loaded.tokenizer, prompt, temperature, top)


def inspect(run: Run | Loaded | str | Path, prompt: str, target: str | None = None, top: int = 5,
            step: int | None = None, device: str = "cpu") -> dict:
    """One forward pass of `prompt` stage by stage (nextoken.inspect): its tokens and ids, the embedding and
    residual norms, attention per layer and head, the logit lens, teacher forcing's per-position losses, the
    final distribution and, with `target`, the cross-entropy of all its tokens."""
    from nextoken.inspect import inspect as inspect_prompt

    if not 1 <= top <= 20:
        raise NextokenError(f"top must be between 1 and 20; got {top}")
    return inspect_prompt(_loaded(run, step, device), prompt, target, top)


def prepare(sources: list[str], out: str | Path, **options) -> dict:
    """Tokenize `sources` (files, directories, globs, .jsonl/.parquet, `stdlib`) into prepared data in `out`;
    `options` are PrepareOptions' fields (tokenizer, vocab_size, val_fraction, ...). Returns the manifest."""
    from nextoken.data.prepare import PrepareOptions
    from nextoken.data.prepare import prepare as prepare_data

    log = options.pop("log", None)
    return prepare_data(sources, out, PrepareOptions(**options), log=log)


def plan(flops: float | None = None, params: float | None = None, tokens: float | None = None,
         law: str = "chinchilla", fit: str | Path | None = None, **kw) -> dict:
    """Compute-optimal planning (scaling.plan.plan): from C (FLOPs), N (parameters) or D (tokens) to the
    others, the predicted loss (nats per token) and a model shape, under a published law or your own fit."""
    from nextoken.scaling.plan import plan as plan_run

    return plan_run(law, flops, params, tokens, str(fit) if fit else None, **kw)


def fit(sweep: str | Path | None = None, points: str | Path | None = None, bootstrap: int = 100) -> dict:
    """Fit a scaling law to a sweep directory or a CSV of points (scaling.fit.fit_run): approach 3's
    L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2) and approach 2's IsoFLOP minima.
    Writes fit.json and isoflop.png; returns the figures."""
    from nextoken.scaling.fit import fit_run

    return fit_run(sweep, points, bootstrap)[0]
