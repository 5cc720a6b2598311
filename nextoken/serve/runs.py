"""What `nextoken serve` reads from run directories: which runs lie under its roots (and nothing outside
them), each run's state, summary and curves. Read-only: nothing here writes into a run directory.

Runs are named by ids, `ROOT/REL/PATH`, where ROOT is a root's folder name; a request can name only what
`Roots.resolve` accepts: no `..`, no absolute path, no symlink anywhere below the root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextoken.errors import NextokenError
from nextoken.run import Run, final_eval, holds_run, last_per_step, sources_of

# Without a writer lock, a run whose metrics.jsonl changed this recently counts as running (a train line is
# written every log_every steps; an eval of a large split can take a minute on a CPU).
STALE_S = 120.0


class NotFound(NextokenError):
    """A run, sweep or checkpoint that is not under the served roots."""


class Forbidden(NextokenError):
    """A path that leaves the served roots (.., absolute, through a symlink)."""


# ---- roots and ids ---------------------------------------------------------------------------------

def root_names(paths: list[Path]) -> list[str]:
    """A name per root: its folder's name, or where several share one (lab/a/runs, lab/b/runs), as many of
    its parents' names as tell them apart (a-runs, b-runs); a numbered suffix only for the same path twice."""
    def name(p: Path, k: int) -> str:
        parts = [x for x in p.parts if x not in ("/", "")] or ["root"]
        return "-".join(parts[-k:])

    k = [1] * len(paths)
    for _ in range(64):
        names = [name(p, n) for p, n in zip(paths, k, strict=True)]
        dup = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in dup and k[i] < len(paths[i].parts)]
        if not grow:
            break
        for i in grow:
            k[i] += 1
    out: list[str] = []
    for n in names:
        base, j = n, 1
        while n in out:
            j += 1
            n = f"{base}-{j}"
        out.append(n)
    return out


class Roots:
    """The directories `nextoken serve` was given: each a run, a sweep, or a folder of runs and sweeps."""

    def __init__(self, paths: list[str | Path]):
        for p in paths:
            if not Path(p).is_dir():
                raise NextokenError(f"{p} is not a directory; pass run directories or folders of runs "
                                    "(default ./runs)")
        absolute = [Path(p).absolute() for p in paths]
        self.roots: dict[str, Path] = dict(zip(root_names(absolute), absolute, strict=True))

    def resolve(self, run_id: str) -> Path:
        """The directory an id names. Raises Forbidden for an id that leaves the roots, NotFound for one that
        names nothing."""
        if not run_id or run_id.startswith(("/", "\\")) or "\\" in run_id or "\x00" in run_id:
            raise Forbidden(f"{run_id!r} is not a run id (ids look like runs/tiny-1; see /api/runs)")
        root_name, _, rel = run_id.partition("/")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise Forbidden(f"{run_id!r} leaves the served directories")
        if root_name not in self.roots:
            raise NotFound(f"no served directory named {root_name!r}; served: {', '.join(self.roots)}")
        path = root = self.roots[root_name]
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise Forbidden(f"{run_id!r} goes through a symlink; nextoken serve follows none")
        if not path.resolve().is_relative_to(root.resolve()):
            raise Forbidden(f"{run_id!r} leaves the served directories")
        if not path.is_dir():
            raise NotFound(f"{run_id!r} does not exist (see /api/runs)")
        return path

    def id_of(self, path: Path) -> str:
        for name, root in self.roots.items():
            if path == root:
                return name
            if path.is_relative_to(root):
                return f"{name}/{path.relative_to(root).as_posix()}"
        raise AssertionError(path)

    def discover(self, labs: list[Path] | None = None) -> tuple[list[Path], list[Path]]:
        """(run directories, sweep directories) under the roots, three levels deep (a folder of sweeps of
        runs; lab/EXPERIMENT/runs/RUN), hidden folders and symlinks skipped. Lab experiment directories (with a
        lab.json) go to `labs` where given."""
        runs, sweeps = [], []

        def visit(d: Path, depth: int) -> None:
            if holds_run(d):
                runs.append(d)
                return
            if (d / "sweep.json").is_file():
                sweeps.append(d)
            if labs is not None and (d / "lab.json").is_file():
                labs.append(d)
            if depth == 0:
                return
            with contextlib.suppress(OSError):
                for child in sorted(d.iterdir()):
                    if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                        continue
                    visit(child, depth - 1)

        for root in self.roots.values():
            visit(root, 3)
        return runs, sweeps

    def run(self, run_id: str) -> Run:
        path = self.resolve(run_id)
        if not holds_run(path):
            raise NotFound(f"{run_id!r} is not a run directory (no config.toml, metrics.jsonl or checkpoints/)")
        return Run(path)


# ---- metrics, read incrementally -------------------------------------------------------------------

@dataclass
class _Tail:
    ino: int = -1
    offset: int = 0
    rows: list = field(default_factory=list)
    size: int = 0
    mtime: float = 0.0


class MetricsTail:
    """metrics.jsonl of many runs, each read once and then from where it was left: a poll reads only the new
    lines. A last line without its newline (being written, or cut by a kill) waits for the next poll; a line
    that is not JSON is skipped (as run.read_metrics does). A file replaced or shrunk is read afresh."""

    def __init__(self):
        self._tails: dict[Path, _Tail] = {}
        self._lock = threading.Lock()

    def read(self, run_dir: Path) -> tuple[list[dict], _Tail]:
        path = run_dir / "metrics.jsonl"
        with self._lock:
            tail = self._tails.setdefault(path, _Tail())
            try:
                st = path.stat()
            except OSError:
                self._tails[path] = _Tail()
                return [], self._tails[path]
            if st.st_ino != tail.ino or st.st_size < tail.offset:
                tail = self._tails[path] = _Tail(ino=st.st_ino)
            if st.st_size > tail.offset:
                with path.open("rb") as fh:
                    fh.seek(tail.offset)
                    chunk = fh.read(st.st_size - tail.offset)
                end = chunk.rfind(b"\n") + 1
                for line in chunk[:end].splitlines():
                    with contextlib.suppress(ValueError):
                        row = json.loads(line)
                        if isinstance(row, dict):
                            tail.rows.append(row)
                tail.offset += end
            tail.size, tail.mtime = st.st_size, st.st_mtime
            return tail.rows, tail


# ---- state -----------------------------------------------------------------------------------------

def writer_alive(run: Run) -> bool | None:
    """Whether a process holds the run's writer lock: True, False, or None where the run has no lock (runs
    written before the lock existed). Uses `Run.writer()` where run.py has it, else RUN/.lock directly: a
    shared flock that cannot be taken means a writer holds it (opened read-only: nothing is written)."""
    lock = run.path / ".lock"
    if not lock.is_file():
        return None
    if hasattr(run, "writer"):
        with contextlib.suppress(Exception):
            return run.writer() is not None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def run_state(run: Run, rows: list[dict], max_steps: int, checkpoint_steps: list[int],
              metrics_mtime: float, now: float | None = None) -> tuple[str, str]:
    """(state, why): `running`, `finished`, `interrupted`, `crashed`, `imported` or `new`, from the files alone.

    - a live writer lock: running. Without a lock (older runs), metrics written in the last STALE_S seconds.
    - a val eval at train.max_steps: finished (the loop's last act before its final checkpoint).
    - stopped before max_steps with a checkpoint at its last step (Ctrl-C saves one at the step boundary):
      interrupted; `--resume` loses nothing.
    - stopped with train steps after the newest checkpoint: crashed (killed, or an error); `--resume`
      repeats those steps.
    The one place that decides; adapt here when run.py's lock changes."""
    now = time.time() if now is None else now
    train = [r["step"] for r in rows if r.get("kind") == "train" and isinstance(r.get("step"), int)]
    last = train[-1] if train else 0
    final = final_eval(rows, max_steps) is not None
    ckpt = max(checkpoint_steps, default=None)
    writer = writer_alive(run)
    if writer:
        return "running", f"a writer holds the run's lock; step {last} of {max_steps}"
    if final and last >= max_steps:
        return "finished", f"evaluated at step {max_steps}, its last"
    imported = next((r for r in rows if r.get("kind") == "event" and r.get("type") == "import"), None)
    if not train and imported is not None:  # `nextoken import`: a step-0 checkpoint, never trained here
        source = (imported.get("detail") or {}).get("source", "a transformers directory")
        return "imported", f"imported from {source}; train it further with --init-from"
    if writer is None and rows and now - metrics_mtime < STALE_S:
        return "running", f"metrics.jsonl written {now - metrics_mtime:.0f}s ago; step {last} of {max_steps}"
    if not train:
        return ("crashed", "stopped before its first train step") if rows else ("new", "no metrics yet")
    if ckpt is not None and ckpt >= last:
        return "interrupted", f"stopped at step {last} of {max_steps} with a checkpoint there; --resume loses nothing"
    lost = last - (ckpt or 0)
    return "crashed", (f"stopped at step {last} of {max_steps}; the newest checkpoint is at step {ckpt or 0}, "
                       f"so --resume repeats {lost} steps")


# ---- summaries and curves --------------------------------------------------------------------------

INCIDENTS = ("spike", "skip", "rollback", "nan", "resume")


def _finite(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


SMOOTHING = 0.9  # of the runs table's train loss: an EMA over the logged train lines


def smoothed_loss(train: list[dict], beta: float = SMOOTHING) -> float | None:
    """The train loss as an exponential moving average over the logged lines, debiased (Adam's correction,
    Kingma & Ba 2015 §3): one batch's loss is noisy, and beside a val loss looks like a gap that is not there."""
    avg, w = 0.0, 0.0
    for r in train:
        v = _finite(r.get("loss"))
        if v is not None:
            avg, w = beta * avg + (1 - beta) * v, beta * w + (1 - beta)
    return avg / w if w else None


def summarize(run: Run, rows: list[dict], mtime: float) -> dict:
    """What the runs page shows for one run."""
    cfg = run.config
    m = cfg.model
    train, evals = last_per_step(rows, "train"), last_per_step(rows, "eval")
    steps = run.checkpoint_steps()
    state, why = run_state(run, rows, cfg.train.max_steps, steps, mtime)
    events = [r for r in rows if r.get("kind") == "event" and r.get("type") in INCIDENTS]
    best = min(evals, key=lambda r: r["loss"]) if evals else None
    last = train[-1] if train else {}
    return {
        "state": state, "state_why": why,
        "shape": f"{m.n_layer}x{m.d_model}, {m.n_head} heads, ctx {m.block_size}, vocab {m.vocab_size}",
        "step": last.get("step", 0), "max_steps": cfg.train.max_steps, "tokens": last.get("tokens", 0),
        "train_loss": smoothed_loss(train), "train_loss_last": _finite(last.get("loss")),
        "best_val_loss": _finite(best["loss"]) if best else None,
        "best_val_bpb": _finite(best.get("bits_per_byte")) if best else None,
        "tokens_per_s": _finite(last.get("tokens_per_s")), "mfu": _finite(last.get("mfu")),
        "elapsed_s": _finite(last.get("elapsed_s")),
        "last_incident": events[-1] if events else None,
        "checkpoints": steps, "updated": mtime, "trained_on": trained_on(run, rows),
    }


SERIES = {  # name: (kind, field)
    "train_loss": ("train", "loss"), "val_loss": ("eval", "loss"), "val_ppl": ("eval", "ppl"),
    "val_bpb": ("eval", "bits_per_byte"), "lr": ("train", "lr"), "grad_norm": ("train", "grad_norm"),
    "tokens_per_s": ("train", "tokens_per_s"), "mfu": ("train", "mfu"),
}
X_AXES = ("step", "tokens", "time")


def downsample(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ~2 * buckets points: per bucket of consecutive points its minimum and maximum, in x order, so
    a one-step spike survives any zoom level (an average would hide it)."""
    n = len(x)
    if n <= 2 * buckets:
        return x, y
    edges = np.linspace(0, n, buckets + 1).astype(int)
    # sorted by (bucket, y), each bucket's first entry is its minimum and its last its maximum
    order = np.lexsort((y, np.repeat(np.arange(buckets), np.diff(edges))))
    keep = np.unique(np.concatenate([order[edges[:-1]], order[edges[1:] - 1], [0, n - 1]]))
    return x[keep], y[keep]


def curves(rows: list[dict], x_axis: str = "step", buckets: int = 1000) -> dict:
    """Every series of a run against `x_axis` (step, tokens or time: the train lines' elapsed_s), downsampled
    on the server, and the events placed on the same axis (by their step, through the train lines)."""
    if x_axis not in X_AXES:
        raise NextokenError(f"x must be one of {', '.join(X_AXES)}; got {x_axis!r}")
    if not 10 <= buckets <= 20000:
        raise NextokenError(f"buckets must be between 10 and 20000; got {buckets}")
    train = last_per_step(rows, "train")
    evals = [r for r in last_per_step(rows, "eval") if r.get("split", "val") == "val"]

    def column(src: list[dict], key: str) -> np.ndarray:  # None (and anything not a number) becomes NaN
        try:
            return np.array([r.get(key) for r in src], dtype=float)
        except (TypeError, ValueError):
            return np.array([_finite(r.get(key)) for r in src], dtype=float)

    t_step = column(train, "step")
    t_tok, t_time = np.nan_to_num(column(train, "tokens")), np.nan_to_num(column(train, "elapsed_s"))

    def to_x(steps: np.ndarray) -> np.ndarray:
        if x_axis == "step" or not len(t_step):
            return steps
        ref = t_tok if x_axis == "tokens" else t_time
        return np.interp(steps, np.concatenate([[0.0], t_step]), np.concatenate([[0.0], ref]))

    train_x = to_x(t_step)
    eval_x = to_x(column(evals, "step"))
    out = {}

    def add(name: str, x: np.ndarray, y: np.ndarray) -> None:
        ok = np.isfinite(y)
        if ok.any():
            x, y = downsample(x[ok], y[ok], buckets)
            out[name] = {"x": np.round(x, 6).tolist(), "y": y.tolist(), "n": int(ok.sum())}

    for name, (kind, key) in SERIES.items():
        add(name, train_x if kind == "train" else eval_x, column(train if kind == "train" else evals, key))
    for task, lines in task_lines(rows).items():  # task/NAME/acc, task/NAME/acc_norm, task/NAME/bpb
        x = to_x(column(lines, "step"))
        for key, short in (("acc", "acc"), ("acc_norm", "acc_norm"), ("bits_per_byte", "bpb")):
            add(f"task/{task}/{short}", x, column(lines, key))
    for source in sources_of(rows):  # a mixed run: val_loss:NAME and val_bpb:NAME per source of its mix
        per = [r for r in last_per_step(rows, "eval", source) if r.get("split", "val") == "val"]
        for name, key in (("val_loss", "loss"), ("val_bpb", "bits_per_byte")):
            add(f"{name}:{source}", to_x(column(per, "step")), column(per, key))
    lines = [r for r in rows if r.get("kind") == "event" and isinstance(r.get("step"), int)
             and r.get("type") != "hardware"]
    xs = to_x(np.array([r["step"] for r in lines], dtype=float)).tolist()
    events = [{"type": r.get("type"), "step": r["step"], "detail": r.get("detail"), "x": x}
              for r, x in zip(lines, xs, strict=True)]
    return {"x": x_axis, "series": out, "events": events}


def task_lines(rows: list[dict]) -> dict[str, list[dict]]:
    """The `task` lines (`--train.eval_tasks`) by task name, one per step (the last written), in step order."""
    by_task: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r.get("kind") == "task" and isinstance(r.get("step"), int) and isinstance(r.get("task"), str):
            by_task.setdefault(r["task"], {})[r["step"]] = r
    return {name: [steps[s] for s in sorted(steps)] for name, steps in sorted(by_task.items())}


def flat_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(configs: dict[str, dict]) -> list[dict]:
    """The fields whose values differ between the runs' configs (data.path excepted when all are equal)."""
    flat = {rid: flat_config(c) for rid, c in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values()))) if flat else []
    rows = []
    for k in keys:
        values = {rid: f.get(k) for rid, f in flat.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            rows.append({"field": k, "values": values})
    return rows


# ---- what a run was trained on, and lab reports ----------------------------------------------------

def trained_on(run: Run, rows: list[dict]) -> str:
    """One line: the data a run learned from (its prepared data's manifest), so a prompt can be judged
    against it ("The cat sat on the" means little to a model of Python code)."""
    events = [r for r in rows if r.get("kind") == "event" and r.get("type") == "import"]
    if events:
        src = (events[-1].get("detail") or {}).get("source", "a transformers directory")
        return f"imported from {src}: its own pretraining data"
    try:
        cfg = run.config
        manifest = json.loads((Path(cfg.data.path) / "manifest.json").read_text())
    except Exception:
        return "unknown data (its prepared data is not on this machine)"
    sources = [str(s) for s in manifest.get("sources", [])]
    names = ["Python's standard library source (code only)" if s == "stdlib" else Path(s).name or s
             for s in sources]
    tokens = manifest.get("splits", {}).get("train", {}).get("tokens")
    tok = manifest.get("tokenizer", "?")
    tok = {"bpe": "byte-level BPE", "bytes": "bytes"}.get(tok, tok)
    size = "" if not isinstance(tokens, int) else f", {tokens / 1e6:.1f}M train tokens" if tokens >= 1e6 else \
        f", {tokens:,} train tokens"
    return f"{', '.join(names) or 'unknown sources'}{size}; {tok} tokenizer, vocabulary {manifest.get('vocab_size')}"


def lab_summary(path: Path) -> dict:
    """An experiment directory of `nextoken lab` (lab.json; figures.json and report.md once measured)."""
    meta = json.loads((path / "lab.json").read_text())
    figures = {}
    with contextlib.suppress(OSError, ValueError):
        figures = json.loads((path / "figures.json").read_text())
    return {"experiment": meta.get("experiment"), "budget": meta.get("budget"), "runs": meta.get("runs", []),
            "claim": figures.get("claim"), "source": figures.get("source"), "verdict": figures.get("verdict"),
            "why": figures.get("why"), "has_report": (path / "report.md").is_file(),
            "has_figure": (path / "figure.png").is_file()}
