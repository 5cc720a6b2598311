"""`nextoken lab`: the claims of pretraining as experiments anyone can rerun. Each experiment is a module of
this package declaring its runs, measurements, figure and verdict rule (lab/base.py); lab/runner.py trains,
resumes and writes the reports."""

from __future__ import annotations

import importlib
import importlib.util

from nextoken.errors import NextokenError

# name -> module (in the order of `nextoken lab list`)
EXPERIMENTS = {
    "label-smoothing": "label_smoothing",
    "teacher-forcing": "teacher_forcing",
    "warmup": "warmup",
    "z-loss": "z_loss",
    "weight-tying": "weight_tying",
    "perplexity-bounds": "perplexity_bounds",
    "grokking": "grokking",
    "mlm": "mlm",
    "spike": "spike",
    "chinchilla": "chinchilla",
    "mixture": "mixture",
}


def available() -> list[str]:
    """The experiments whose module exists, in list order."""
    return [n for n in EXPERIMENTS if importlib.util.find_spec(f"nextoken.lab.{EXPERIMENTS[n]}") is not None]


def get(name: str):
    """The experiment `name` (an Experiment instance). Raises NextokenError for an unknown name."""
    if name not in EXPERIMENTS or name not in available():
        raise NextokenError(f"unknown experiment {name!r}; `nextoken lab list` names them: {', '.join(available())}")
    return importlib.import_module(f"nextoken.lab.{EXPERIMENTS[name]}").EXPERIMENT
