"""What an experiment of `nextoken lab` declares, and the base configs of the three budgets.

An experiment names its claim and its source, the runs it needs (`variants`: name -> Config), what it measures
on them (`measure`: figures, plain JSON), how it draws them, the table of its report, and the rule that turns
its figures into a verdict. The runner (lab/runner.py) trains, resumes, measures and writes; the experiments
hold no training code.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nextoken.config import Config, validate
from nextoken.run import Run

BUDGETS = ("smoke", "small", "full")
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"


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
