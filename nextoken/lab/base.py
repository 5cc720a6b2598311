"""What an experiment of `nextoken lab` declares, and the base configs of the three budgets.

An experiment names its claim and its source, the runs it needs (`variants`: name -> Config), what it measures
on them (`measure`: figures, plain JSON), how it draws them, the table of its report, and the rule that turns
its figures into a verdict. The runner (lab/runner.py) trains, resumes, measures and writes; the experiments
hold no training code.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nextoken.config import Config, validate
from nextoken.run import Run

BUDGETS = ("smoke", "small", "full")
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
K_SE = 2.0  # an effect decides when it is more than K_SE standard errors from zero (the rule the reports state)


@dataclass
class Context:
    budget: str
    out: Path  # the experiment's directory
    log: Callable[[str], None] = print
    device: str = "cpu"
    cache: dict = field(default_factory=dict)

    @property
    def smoke(self) -> bool:
        return self.budget == "smoke"

    def pick(self, smoke, small, full):
        """The value for this budget."""
        return {"smoke": smoke, "small": small, "full": full}[self.budget]


@dataclass
class Verdict:
    status: str  # HELD, NOT_HELD or INCONCLUSIVE
    why: str


class Experiment(ABC):
    """One claim, as runs, measurements, a figure and a verdict rule. Subclasses set the class attributes and
    override `variants`, `measure`, `table`, `draw` and `verdict`."""

    name: str = ""
    claim: str = ""
    source: str = ""
    cost: dict[str, str] = {}  # budget -> what it takes ("about 4 min on a 2-core CPU")

    def variants(self, ctx: Context) -> dict[str, Config]:
        return {}

    @abstractmethod
    def measure(self, ctx: Context, runs: dict[str, Run]) -> dict:
        ...

    def setup(self, figures: dict) -> str:
        return ""

    @abstractmethod
    def table(self, figures: dict) -> tuple[list[str], list[list]]:
        ...

    @abstractmethod
    def draw(self, figures: dict, fig) -> None:
        ...

    @abstractmethod
    def verdict(self, figures: dict) -> Verdict:
        ...


def text_data(ctx: Context) -> Path:
    """The corpus of the text experiments: at smoke a generated Python-like corpus (prepared once into
    OUT/data), else the built-in standard-library corpus with byte-level tokens (the `scaling` preset's choice:
    with 4096 BPE tokens a tiny model's compute is mostly its logits)."""
    from nextoken.data.builtin import stdlib_data
    from nextoken.data.synthetic import python_like

    if ctx.smoke:
        return prepared(ctx.out / "data", python_like)

    return stdlib_data("bytes", log=ctx.log)


def bpe_data(ctx: Context) -> Path:
    """The built-in corpus with its 4096-token BPE vocabulary (subword tokens, as the published claims count
    them); at smoke the byte-level corpus of text_data."""
    from nextoken.data.builtin import stdlib_data

    return text_data(ctx) if ctx.smoke else stdlib_data("bpe", 4096, log=ctx.log)


def bytes_per_token(data: Path, split: str = "train") -> float:
    """Bytes of text per token of the prepared corpus `data` (its manifest's counts)."""
    from nextoken.data.prepare import read_manifest

    s = read_manifest(data)["splits"][split]
    return s["bytes"] / s["tokens"]


def prepared(out: Path, write_text: Callable[[Path], Path], val_fraction: float = 0.1) -> Path:
    """`out` prepared with byte-level tokens from the text `write_text(folder)` writes; reused once there."""
    from nextoken.data.prepare import PrepareOptions, prepare

    if not (out / "manifest.json").is_file():
        src = write_text(out.with_name(out.name + "-text"))
        prepare([str(src)], out, PrepareOptions(tokenizer="bytes", val_fraction=val_fraction, progress=False,
                                                force=True), log=lambda m: None)
    return out


def base_config(ctx: Context, data: Path, **changes) -> Config:
    """The model and training of a budget: smoke 2 x 32 for 30 steps (seconds), small 3 x 64 for 200 steps of
    16 x 64 tokens (about a minute a run on a 2-core CPU shared with other jobs), full 6 x 384 for 3000 steps of
    32 x 256 (a GPU).
    `changes` are "section.field": value pairs on top; each run evaluates at its end and keeps its checkpoints
    every quarter so a rerun resumes it."""
    cfg = Config()
    cfg.data.path = str(data)
    m, t, o = cfg.model, cfg.train, cfg.optim
    m.n_layer, m.n_head, m.d_model, m.block_size = ctx.pick((2, 2, 32, 32), (3, 4, 64, 64), (6, 6, 384, 256))
    t.max_steps, t.batch_size = ctx.pick((30, 4), (200, 16), (3000, 32))
    t.eval_tokens = ctx.pick(2048, 32768, 1 << 18)
    o.warmup_steps = t.max_steps // 10
    t.device, t.precision = ("cpu", "fp32") if ctx.budget != "full" else ("auto", "auto")
    t.compile = "off" if ctx.budget != "full" else "auto"
    t.threads = 1 if ctx.smoke else 0
    t.log_every = max(1, t.max_steps // 100)
    cfg.stability.policy = "warn"  # measure what happens; the `spike` experiment sets the policies it compares
    cfg.log.progress, cfg.log.sample_tokens = "off", 0
    for key, value in changes.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    t.eval_every = t.eval_every if "train.eval_every" in changes else max(1, t.max_steps // 5)
    t.ckpt_every = t.ckpt_every if "train.ckpt_every" in changes else max(1, t.max_steps // 4)
    validate(cfg)
    return cfg


def with_changes(cfg: Config, **changes) -> Config:
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, name = key.split(".")
        setattr(getattr(out, section), name, value)
    validate(out)
    return out


def final_eval(run: Run) -> dict:
    """The run's last val evaluation (loss, ppl, bits_per_byte, step, tokens)."""
    return run.last_per_step("eval")[-1]


def curve(run: Run, kind: str = "eval") -> dict[str, list]:
    rows = run.last_per_step(kind)
    return {"step": [r["step"] for r in rows], "tokens": [r["tokens"] for r in rows],
            "loss": [r["loss"] for r in rows]}


def fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


# ---- seeds and the effect against its noise ----


def seeds(ctx: Context, n: int | None = None) -> list[int]:
    """The seeds of each arm: 2 at smoke (the least a standard error needs), 3 at small and full, or `n`.
    Each seed sets the initialization and the data order (train.seed), so the arms of one seed see the same
    batches in the same order and differ only in what the experiment changes: a paired design."""
    return [Config().train.seed + i for i in range(n or ctx.pick(2, 3, 3))]


def seeded(name: str, seed: int) -> str:
    """The run name of arm `name` at `seed`."""
    return f"{name}-s{seed}"


def paired(a: list[float], b: list[float]) -> dict:
    """The effect b - a over paired seeds: per-seed differences, their mean and its standard error
    (sample standard deviation / sqrt(n); None for one seed)."""
    assert len(a) == len(b) and a, (a, b)
    return mean_se([y - x for x, y in zip(a, b, strict=True)])


def mean_se(xs: list[float]) -> dict:
    """Mean and standard error of `xs` (non-finite values propagate; se None for fewer than two)."""
    n = len(xs)
    mean = sum(xs) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n) if n > 1 else None
    return {"mean": mean, "se": se, "n": n, "values": list(xs)}


def sign(e: dict, k: float = K_SE) -> int:
    """+1 if the effect's mean is more than k standard errors above zero, -1 if below, 0 if within (or if its
    standard error is unknown or not finite)."""
    m, se = e["mean"], e["se"]
    if se is None or not math.isfinite(m) or not math.isfinite(se):
        return 0
    return 1 if m > k * se else -1 if m < -k * se else 0


def held_if_all(*signs: int) -> str:
    """The verdict of a claim made of parts, each part's `sign`: HELD if every part held (+1), NOT_HELD if any went
    the other way (-1), else INCONCLUSIVE (some part within its noise)."""
    if all(s > 0 for s in signs):
        return HELD
    return NOT_HELD if any(s < 0 for s in signs) else INCONCLUSIVE


def pm(e: dict, unit: str = "nats", spec: str = "+.4f") -> str:
    """'+0.1234 ± 0.0100 nats (mean ± SE over 3 seeds)'."""
    se = "?" if e["se"] is None else format(e["se"], spec.lstrip("+"))
    return f"{format(e['mean'], spec)} ± {se}{' ' + unit if unit else ''} (mean ± SE over {e['n']} seeds)"


def rule_text(k: float = K_SE) -> str:
    return f"decided when the mean effect is more than {k:g} standard errors from zero"


def lr_sensitivity(losses: list[float], initial: float) -> float:
    """Wortsman et al. 2023's LR sensitivity of one loss-against-LR curve: the mean over the swept learning
    rates of min(loss, loss at initialization) minus the best loss of the curve (a diverged run counts as the
    loss at initialization)."""
    capped = [min(x, initial) if math.isfinite(x) else initial for x in losses]
    return sum(capped) / len(capped) - min(capped)


def lr_sweep(base: Config, arms: dict[str, dict], lrs: list[float], seed_list: list[int]) -> dict[str, Config]:
    """The runs of a learning-rate sensitivity sweep (Wortsman et al. 2023): every arm (name -> its changes) at
    every peak LR and seed, named ARM-lrLR-sSEED; each evaluates once, at its end."""
    return {f"{arm}-lr{lr:g}-s{s}": with_changes(base, **{**changes, "optim.lr": lr, "train.seed": s,
                                                            "train.eval_every": 0})
            for arm, changes in arms.items() for lr in lrs for s in seed_list}


def sweep_table(f: dict, arms: list[str]) -> tuple[list[str], list[list]]:
    """Final val loss (mean over seeds) per arm and LR, with each arm's LR sensitivity."""
    lrs = f["lrs"]
    rows = []
    for arm in arms:
        c = f["curves"][arm]  # seed -> losses per lr
        per_lr = [[c[s][i] for s in c] for i in range(len(lrs))]
        sens = f["sensitivity"][arm]
        rows.append([arm, *(fmt(sum(x) / len(x), ".3f") for x in per_lr),
                     f"{sens['mean']:.3f} ± {sens['se']:.3f}" if sens["se"] is not None else f"{sens['mean']:.3f}",
                     f"{f['trained'][arm]:.1f} of {len(lrs)}"])
    return ["arm", *(f"lr {lr:g}" for lr in lrs), "LR sensitivity (nats, mean ± SE)", "LRs that train (mean)"], rows


def sweep_figures(runs: dict[str, Run], arms: list[str], lrs: list[float], seed_list: list[int],
                  initial: float, within: float = 0.1) -> dict:
    """Per arm: the loss-against-LR curve of each seed, its LR sensitivity (mean ± SE over seeds) and how many
    LRs trained (within `within` nats of the best loss any arm reached at that seed)."""
    curves = {arm: {str(s): [_loss(runs[f"{arm}-lr{lr:g}-s{s}"]) for lr in lrs] for s in seed_list} for arm in arms}
    best = {str(s): min(min(x for x in curves[a][str(s)] if math.isfinite(x)) for a in arms) for s in seed_list}
    sens = {arm: mean_se([lr_sensitivity(curves[arm][str(s)], initial) for s in seed_list]) for arm in arms}
    trained = {arm: sum(trains(curves[arm][str(s)], best[str(s)], within) for s in seed_list) / len(seed_list)
               for arm in arms}
    return {"lrs": list(lrs), "seeds": list(seed_list), "initial_loss": initial, "within": within,
            "curves": curves, "sensitivity": sens, "trained": trained}


def draw_sweep(f: dict, ax, arms: list[str], labels: dict[str, str] | None = None) -> None:
    """Final val loss against peak LR, one line per arm and seed (Wortsman et al. 2023's figure)."""
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for i, arm in enumerate(arms):
        for j, (_s, losses) in enumerate(f["curves"][arm].items()):
            ys = [min(x, f["initial_loss"]) if math.isfinite(x) else f["initial_loss"] for x in losses]
            ax.plot(f["lrs"], ys, "o-", color=colors[i % 4], alpha=0.7,
                    label=(labels or {}).get(arm, arm) if j == 0 else None)
    ax.axhline(f["initial_loss"], color="k", ls=":", label="loss at init (log V)")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final val loss (nats; one line per seed)")
    ax.legend(fontsize=8)


def _loss(run: Run) -> float:
    rows = run.last_per_step("eval")
    return rows[-1]["loss"] if rows else math.inf


def trains(losses: list[float], best: float, within: float) -> int:
    """How many of the swept learning rates trained: their loss finite and within `within` of `best`."""
    return sum(1 for x in losses if math.isfinite(x) and x <= best + within)
