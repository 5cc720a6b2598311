"""`nextoken plot RUN`: train and val loss against tokens (with a perplexity axis), the LR schedule,
and the run's incidents (spikes, skips, rollbacks, non-finite steps) marked on the curve."""

from __future__ import annotations

import math
from pathlib import Path

from nextoken.errors import NextokenError
from nextoken.run import Run

_EVENT_STYLE = {"spike": ("v", "tab:orange"), "nan": ("x", "tab:red"), "skip": ("s", "tab:purple"),
                "rollback": ("D", "tab:red")}
PPL_AXIS_MAX = 50.0  # nats: the top of a loss axis beside which a perplexity axis is drawn (e^50 ≈ 5e21)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Run(run_dir)
    run_dir = run.path
    if not (run_dir / "metrics.jsonl").is_file():
        raise NextokenError(f"{run_dir} has no metrics.jsonl; pass a run directory written by nextoken train")
    train, val = run.last_per_step("train"), run.last_per_step("eval")
    if not train:
        if any(e.get("type") == "import" for e in run.events):
            raise NextokenError(f"{run_dir} was imported, not trained here, so it has no loss curve; plot a run "
                                f"trained from it (nextoken train --init-from {run_dir} ...)")
        raise NextokenError(f"{run_dir}/metrics.jsonl has no training steps yet; train first")
    out = Path(out) if out else run_dir / "loss.png"

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), height_ratios=[3, 1], constrained_layout=True)
    tok = [r["tokens"] for r in train]
    ax.plot(tok, [r["loss"] for r in train], lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot([r["tokens"] for r in val], [r["loss"] for r in val], "o-", lw=2, label="val loss")
    _scale(ax, [r["loss"] for r in train + val])
    _mark_non_finite(ax, train + val)
    if val:
        best = val[-1]
        ax.annotate(f"val {best['loss']:.3f} nats, {_num(best.get('bits_per_byte'), '.3f')} bits/byte",
                    (best["tokens"], _on_axes(ax, best["loss"])), textcoords="offset points", xytext=(-10, 20),
                    ha="right")
    step_tokens = {r["step"]: r["tokens"] for r in train}
    step_loss = {r["step"]: r["loss"] for r in train}
    for ev in (r for r in run.events if r.get("type") in _EVENT_STYLE):
        marker, color = _EVENT_STYLE[ev["type"]]
        s = ev["step"]
        near = min(step_tokens, key=lambda k: abs(k - s))
        detail = ev.get("detail") if isinstance(ev.get("detail"), dict) else {}
        y = detail.get("loss") if isinstance(detail.get("loss"), (int, float)) else step_loss.get(near)
        y = y if y is not None and math.isfinite(y) else ax.get_ylim()[1]
        ax.plot(step_tokens[near], y, marker, color=color, ms=9, label=ev["type"])
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys())
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"{run_dir.name}: next-token loss")
    ax.grid(alpha=0.3)
    if ax.get_ylim()[1] <= PPL_AXIS_MAX:  # above it the perplexity axis could only show made-up figures
        ppl = ax.secondary_yaxis("right", functions=(lambda x: _exp(x), lambda p: _log(p)))
        ppl.set_ylabel("perplexity")
        _ppl_ticks(ppl, ax.get_ylim())

    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except ValueError as e:  # matplotlib: an unknown file extension
        raise NextokenError(f"cannot write {out}: {str(e).split(' (')[0]}; use a .png, .pdf or .svg name") from None
    except OSError as e:
        raise NextokenError(f"cannot write {out} ({e.strerror}); choose an --out in a writable directory") from None
    finally:
        plt.close(fig)
    return out


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _scale(ax, values) -> None:
    """A log scale when the finite losses span more than a factor 1000 (a diverged run's climbs from a few nats
    to millions; a run that learned spans about 10), so that the run before it stays readable."""
    finite = _finite(values)
    if finite and min(finite) > 0 and max(finite) > 1000 * min(finite):
        ax.set_yscale("log")


def _on_axes(ax, y):
    """`y`, or the top of the axes for a non-finite value (which has no place on them)."""
    return y if isinstance(y, int | float) and math.isfinite(y) else ax.get_ylim()[1]


def _mark_non_finite(ax, rows: list[dict]) -> None:
    """A marker at the top edge, at its x, for each loss that is inf or nan: matplotlib leaves such points out of
    the line without a trace, and they must neither vanish nor set the limits."""
    bad = [r for r in rows if isinstance(r.get("loss"), float) and not math.isfinite(r["loss"])]
    if bad:
        ax.plot([r["tokens"] for r in bad], [0.98] * len(bad), "^", color="tab:red", ms=9, clip_on=False,
                transform=ax.get_xaxis_transform(), label="loss inf or nan (off the scale)")


def _ppl_ticks(ppl, loss_lim: tuple[float, float]) -> None:
    """Perplexity ticks at 1, 2, 5 x 10^k: the axis is e^loss, so evenly spaced perplexities (matplotlib's
    default) crowd the top and leave a loss of 1-6 nats (perplexity 3-400) without a tick."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    lo, hi = (math.exp(max(min(v, PPL_AXIS_MAX), -PPL_AXIS_MAX)) for v in loss_lim)
    ticks = [m * 10**e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10**e <= hi]
    if len(ticks) > 12:  # many decades (a diverged run): powers of ten, at most about ten of them
        decades = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")]
        ticks = decades[::max(1, len(decades) // 10)]
    ppl.yaxis.set_major_locator(FixedLocator(ticks))
    ppl.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _num(v, spec: str) -> str:
    return "unknown" if v is None else format(v, spec)


def _exp(x):
    import numpy as np

    return np.exp(np.clip(x, -PPL_AXIS_MAX, PPL_AXIS_MAX))


def _log(p):
    import numpy as np

    return np.log(np.clip(p, 1e-12, None))
