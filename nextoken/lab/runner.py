"""Run an experiment of `nextoken lab`: train (or reuse, or resume) its runs, measure, write the figures, the
figure and the report. A rerun continues: a run that reached its last step is read back, one with a
checkpoint resumes from it, one that died before its first checkpoint starts again.

    OUT/lab.json        the experiment, the budget, the run names
    OUT/runs/NAME/      ordinary run directories (nextoken plot, eval, compare and the web app read them)
    OUT/figures.json    the measured figures, the verdict and why (strict JSON)
    OUT/figure.png      the experiment's figure
    OUT/report.md       claim and source, setup, table, figure, verdict
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from nextoken import nonfinite
from nextoken.errors import NextokenError
from nextoken.lab import get
from nextoken.lab.base import BUDGETS, Context, Experiment, Verdict, fmt
from nextoken.run import Run, final_eval, read_metrics
from nextoken.training.signals import Interrupted


def finished(run_dir: Path, max_steps: int) -> bool:
    return final_eval(read_metrics(run_dir), max_steps) is not None


def train_variant(cfg, run_dir: Path, log: Callable[[str], None], tag: str) -> Run:
    """The run in `run_dir`, trained per `cfg`: reused when finished, resumed from its newest checkpoint, else
    trained from the start."""
    from nextoken.api import train
    from nextoken.checkpoint import latest_checkpoint

    if finished(run_dir, cfg.train.max_steps):
        log(f"{tag} done")
        return Run(run_dir)
    resume = latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # died before its first checkpoint: nothing to keep
    log(f"{tag} {'resuming' if resume else 'training'} ({cfg.train.max_steps} steps)")
    res = train(cfg, run_dir, resume=resume, quiet=True)
    log(f"{tag} val loss {res['loss']:.4f} in {res['elapsed_s']:.0f}s")
    return Run(run_dir)


def run(name: str, budget: str = "small", out: str | Path | None = None, log: Callable[[str], None] = print,
        device: str = "cpu") -> dict:
    """Run (or continue) experiment `name` at `budget` into `out` (default lab/NAME-BUDGET). Returns the
    figures, with `verdict` and `why`. Raises NextokenError for an unknown experiment or budget, or an `out`
    that holds another experiment."""
    exp = get(name)
    if budget not in BUDGETS:
        raise NextokenError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    out = Path(out or f"lab/{name}-{budget}")
    meta_path = out / "lab.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (meta.get("experiment"), meta.get("budget")) != (name, budget):
            raise NextokenError(f"{out} holds {meta.get('experiment')} at budget {meta.get('budget')}; continue "
                                "it with those, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(budget, out, log, device)
    variants = exp.variants(ctx)
    meta_path.write_text(json.dumps({"experiment": name, "budget": budget, "runs": list(variants)}, indent=1))
    runs = {}
    try:
        for i, (vname, cfg) in enumerate(variants.items(), 1):
            runs[vname] = train_variant(cfg, out / "runs" / vname, log, f"[{i}/{len(variants)}] {name}/{vname}:")
        figures = exp.measure(ctx, runs)  # chinchilla trains its sweep here
    except (Interrupted, KeyboardInterrupt) as e:  # the loop's hint names `nextoken train --resume`: the lab resumes
        why = str(e).split("; continue with")[0] or "interrupted"  # its runs itself
        raise Interrupted(f"{why}; continue with the same command: {rerun_command(name, budget, out)}") from None
    figures = {"experiment": name, "budget": budget, "claim": exp.claim, "source": exp.source,
               "runs": {k: os.path.relpath(r.path, out) for k, r in runs.items()}, **figures}
    (out / "figures.json").write_text(nonfinite.dumps(figures, indent=1))
    return write_report(out, exp, figures)


def rerun_command(name: str, budget: str, out: Path) -> str:
    return f"nextoken lab run {name} --budget {budget} --out {out}"


def read_figures(out: str | Path) -> dict:
    path = Path(out) / "figures.json"
    if not path.is_file():
        raise NextokenError(f"{out} has no figures.json; run `nextoken lab run NAME --out {out}` first")
    return nonfinite.decode(json.loads(path.read_text()))


def report(out: str | Path) -> dict:
    """Rewrite OUT/report.md and OUT/figure.png from OUT/figures.json (the verdict recomputed by its rule)."""
    figures = read_figures(out)
    return write_report(Path(out), get(figures["experiment"]), figures)


def write_report(out: Path, exp: Experiment, figures: dict) -> dict:
    v: Verdict = exp.verdict(figures)
    figures = {**figures, "verdict": v.status, "why": v.why}
    (out / "figures.json").write_text(nonfinite.dumps(figures, indent=1))
    draw(exp, figures, out / "figure.png")
    header, rows = exp.table(figures)
    lines = [f"# {exp.name} (budget {figures['budget']})", "",
             f"**Claim.** {exp.claim} ({exp.source})", ""]
    if setup := exp.setup(figures):
        lines += [f"**Setup.** {setup}", ""]
    if len(seeds := figures.get("seeds") or []) > 1:
        lines += [f"**Seeds.** train.seed {', '.join(map(str, seeds))} for each arm: a seed fixes the "
                  "initialization and the data order, so the arms of one seed differ only in what the experiment "
                  "changes; effects are paired differences, given as mean ± standard error over the seeds.", ""]
    elif seeds:
        lines += [f"**Seeds.** train.seed {seeds[0]} for every run.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    lines += ["", "![figure](figure.png)", "", f"**Verdict: {v.status}.** {v.why}", "",
              "Runs (ordinary run directories): " + ", ".join(f"`{p}`" for p in figures["runs"].values())
              + "; figures in `figures.json`.", ""]
    (out / "report.md").write_text("\n".join(lines))
    return figures


def _cell(c) -> str:
    return c if isinstance(c, str) else str(c) if isinstance(c, int) else fmt(c)


def draw(exp: Experiment, figures: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 4.2), constrained_layout=True)
    try:
        exp.draw(figures, fig)
        fig.suptitle(f"{exp.name} ({figures['budget']})")
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path
