"""A run directory as an object: its resolved config, tokenizer, metrics, checkpoints, and a model loaded at
any checkpoint on any device (the run directory contract; docs/ARCHITECTURE.md). `eval`, `sample`, `next`, `plot`,
`sweep` and `fit` read runs through it; `train` takes its one writer's lock (`lock_run_dir`) and creates it
with `create_run_dir`.

    RUN/.lock              the writer's lock (an flock, dropped by the kernel when the writer ends) and its pid
    RUN/config.toml        the fully resolved config
    RUN/tokenizer.json     the tokenizer the run was trained with
    RUN/metrics.jsonl      train, eval and event lines (the source of truth)
    RUN/checkpoints/       step_NNNNNNNN/ and `latest` (nextoken.checkpoint)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from tokenizers import Tokenizer

from nextoken import checkpoint as ckpt
from nextoken import nonfinite
from nextoken.config import Config, ModelConfig, config_from_dict, load_toml
from nextoken.errors import CheckpointError, NextokenError

RUN_FILES = ("config.toml", "metrics.jsonl", "checkpoints")


def holds_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds (part of) a nextoken run."""
    return any((Path(run_dir) / n).exists() for n in RUN_FILES)


def check_resumable(run_dir: str | Path) -> None:
    """Raises NextokenError, in the one wording every caller uses, when `--resume` has no run to continue."""
    if not holds_run(run_dir):
        raise NextokenError(f"{run_dir} has no checkpoint to resume from (it holds no run); check --out, "
                            "or run without --resume")


def check_target(run_dir: str | Path, resume: bool) -> None:
    """Raises NextokenError when `train` may not write RUN: `resume` without a run there, or a run there
    without `resume` (never overwritten)."""
    if resume:
        check_resumable(run_dir)
    elif holds_run(run_dir):
        raise NextokenError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")


def create_run_dir(run_dir: Path, cfg: Config, data_dir: Path, resume: bool) -> None:
    """Create RUN (or check it for --resume) and write its resolved config and tokenizer.
    A directory holding another run is refused, never overwritten (NextokenError)."""
    run_dir = Path(run_dir)
    check_target(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.toml", cfg.to_toml())
    tok = run_dir / "tokenizer.json"
    if not tok.exists():  # copied under a temporary name, so a kill never leaves half a tokenizer
        tmp = tok.with_name(f".{tok.name}.tmp-{os.getpid()}")
        shutil.copyfile(Path(data_dir) / "tokenizer.json", tmp)
        os.replace(tmp, tok)


# ---- one writer per run directory ----

LOCK_FILE = ".lock"


class RunLocked(NextokenError):
    """Another process is writing the run directory."""


class RunLock:
    """RUN's writer lock: an exclusive flock on RUN/.lock, held while its descriptor is open. `release()` frees
    it, and so does the end of the process, however it ends (SIGKILL too): the kernel drops a flock with the
    last descriptor of its open file, so a dead writer leaves nothing stale; the file itself means nothing.
    A writer that ends before it wrote the run (bad data, say) removes the lock file and directories it created,
    so that a refused `train` leaves nothing behind."""

    def __init__(self, path: Path, fd: int, created: list[Path]):
        self.path, self.fd, self.created = path, fd, created

    def release(self) -> None:
        if self.fd < 0:
            return
        if not holds_run(self.path.parent):
            for p in self.created:  # the lock file, then RUN and the parents it needed, deepest first
                with contextlib.suppress(OSError):
                    if p == self.path:
                        p.unlink()
                    else:
                        p.rmdir()
        os.close(self.fd)  # after the unlink: a writer that opened the old file sees it gone and starts again
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path, resume: bool = False) -> RunLock:
    """Become RUN's one writer, before anything in it is read for a resume or written: creates RUN and takes its
    lock. Raises RunLocked, in one line naming the holder's pid and host, while another process holds it, and
    NextokenError as `check_target` does; a refused call writes nothing. Readers never lock (`Run.writer()`
    asks who writes)."""
    run_dir = Path(run_dir)
    if not resume and holds_run(run_dir) and (holder := lock_holder(run_dir)):
        raise _locked(run_dir, holder)  # the better reason to give than "already holds a run"
    check_target(run_dir, resume)
    path = run_dir / LOCK_FILE
    while True:
        created = [p for p in (path, run_dir, *run_dir.parents) if not p.exists()]
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock_exclusive(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise _locked(run_dir, holder)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # we locked a file that a writer which gave up had removed (`release`): lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode(), 0)
    return RunLock(path, fd, created)


def _lock_exclusive(fd: int) -> bool:
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            try:  # granted: no writer, only readers probing (`lock_holder`) for an instant; try again
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def lock_holder(run_dir: str | Path) -> dict | None:
    """The process writing RUN now, {"pid": ..., "host": ...}, or None (no writer: finished, crashed or killed).
    It probes with a non-blocking shared flock, for an instant, and never blocks a writer (they retry)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no writer since locks came in
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    # The holder writes its pid just after taking the lock: a reader that comes in between finds the file
    # empty, or naming the previous (dead) writer, and reads again.
    holder: dict = {"pid": None, "host": None}
    for _ in range(25):
        try:
            read = json.loads(os.pread(fd, 4096, 0) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            read = None
        if isinstance(read, int):  # a bare pid, as other tools write lock files
            read = {"pid": read, "host": None}
        if isinstance(read, dict):
            holder = read
            if read.get("host") != socket.gethostname() or _alive(read.get("pid")):
                break
        time.sleep(0.02)
    return holder


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _locked(run_dir: Path, holder: dict) -> RunLocked:
    who = f"pid {holder['pid']} on {holder['host']}" if holder.get("pid") else "a process that did not say its pid"
    return RunLocked(f"{run_dir} is being written by another training ({who}); one writer per run: wait for it "
                     "to end, or stop it (Ctrl-C saves a checkpoint), then --resume")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")  # a non-UTF-8 path as the bytes it is
    os.replace(tmp, path)


def read_config(run_dir: str | Path) -> Config:
    """RUN/config.toml as a Config. Raises NextokenError when the directory has none."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise NextokenError(f"{run_dir} has no config.toml; is it a nextoken run directory?")
    return config_from_dict(load_toml(path))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of RUN/metrics.jsonl, in order; a line cut by a kill is skipped. A non-finite figure, written
    as "Infinity", "-Infinity" or "NaN" (docs/metrics.md), or as ±1e308 by nextoken before those, comes back as
    a float. A run resumed after a crash repeats steps: readers that want one value per step take the last
    (`Run.last_per_step`)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(nonfinite.decode(json.loads(line), legacy=True))
        except json.JSONDecodeError:
            continue
    return rows


def last_per_step(rows: list[dict], kind: str, source: str | None = None) -> list[dict]:
    """One line per step of `kind` with a loss, the last one written (a resume or rollback repeats steps). Eval
    lines of a mix's sources (those with `"source"`) only when `source` names one; else the overall lines."""
    by_step = {r["step"]: r for r in rows
               if r.get("kind") == kind and r.get("loss") is not None and isinstance(r.get("step"), int)
               and r.get("source") == source}
    return [by_step[s] for s in sorted(by_step)]


def sources_of(rows: list[dict]) -> list[str]:
    """The sources of a mixed run's per-source eval lines, in the order first written."""
    return list(dict.fromkeys(r["source"] for r in rows
                              if r.get("kind") == "eval" and isinstance(r.get("source"), str)))


def final_eval(rows: list[dict], max_steps: int) -> dict | None:
    """The val eval line written at step `max_steps` (a finished run's last figures), else None."""
    found = None
    for r in rows:
        if (r.get("kind") == "eval" and r.get("step") == max_steps and r.get("split", "val") == "val"
                and "source" not in r):
            found = r
    return found


@dataclass
class Loaded:
    """A model at one checkpoint, ready for inference: `model` in eval mode on its device."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    checkpoint: Path
    run: Run
    trainer: dict  # the checkpoint's trainer.json: step, tokens, ...

    @property
    def step(self) -> int:
        return self.trainer["step"]


class Run:
    """A run directory, opened for reading. `Run(path)` accepts RUN or one of its checkpoint directories
    (RUN/checkpoints/step_N), which then becomes the checkpoint `load()` takes by default.

    Raises NextokenError for a path that does not exist or holds no nextoken run."""

    def __init__(self, path: str | Path):
        p = Path(path)
        self.pinned: Path | None = None
        if ckpt.is_checkpoint(p) and p.parent.name == "checkpoints":
            self.pinned, p = p, p.parent.parent
        if not p.exists():
            raise NextokenError(f"{p} does not exist; pass a run directory (nextoken train --out {p}) or a "
                                "checkpoint directory")
        if not p.is_dir() or not holds_run(p):
            raise NextokenError(f"{p} is not a nextoken run directory (it has no config.toml, metrics.jsonl or "
                                "checkpoints/); pass the --out of a nextoken train")
        self.path = p

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def writer(self) -> dict | None:
        """The training writing this run now, {"pid": ..., "host": ...} (pid None if it did not write one), or
        None: a run without one has finished, crashed or been killed (its lock went with it). Reads only; a
        reader never takes the lock."""
        return lock_holder(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---- config and tokenizer ----
    @cached_property
    def config(self) -> Config:
        """The fully resolved config the run was trained with (RUN/config.toml)."""
        return read_config(self.path)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer: RUN/tokenizer.json, else the one of the data it names."""
        from nextoken.data.tokenizer import load_tokenizer

        path = self.path / "tokenizer.json"
        if not path.is_file():
            path = Path(self.config.data.path) / "tokenizer.json"
        return load_tokenizer(path)

    # ---- metrics ----
    def metrics(self, kind: str | None = None) -> list[dict]:
        """metrics.jsonl's lines, all or those of one kind ("train", "eval" or "event"), re-read on each call."""
        rows = read_metrics(self.path)
        return rows if kind is None else [r for r in rows if r.get("kind") == kind]

    def last_per_step(self, kind: str, source: str | None = None) -> list[dict]:
        """One line per step of `kind` with a loss, the last one written (a resume or rollback repeats steps);
        eval lines of one source of a mix with `source`."""
        return last_per_step(self.metrics(kind), kind, source)

    @property
    def events(self) -> list[dict]:
        return self.metrics("event")

    # ---- checkpoints ----
    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        return ckpt.list_checkpoints(self.path / "checkpoints")

    def checkpoint_steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first; one being renamed into place is simply not there
        yet."""
        steps = []
        for p in self.checkpoints():
            with contextlib.suppress(ValueError):
                steps.append(int(p.name.removeprefix("step_")))
        return steps

    def checkpoint(self, step: int | None = None) -> Path:
        """The checkpoint at `step`, or the pinned one, or the newest. Raises CheckpointError when absent."""
        if step is None:
            return self.pinned or ckpt.resolve(self.path)
        path = self.path / "checkpoints" / ckpt.step_name(step)
        if not ckpt.is_checkpoint(path):
            have = ", ".join(str(ckpt.read_trainer(p)["step"]) for p in self.checkpoints()) or "none"
            raise CheckpointError(f"{self.path} has no checkpoint at step {step} (steps: {have})")
        return path

    def load(self, step: int | None = None, device: str | torch.device = "cpu") -> Loaded:
        """The model at checkpoint `step` (default: the pinned or newest) on `device`, in eval mode, with the
        tokenizer. Loads either checkpoint format in one process. Raises CheckpointError for a missing,
        corrupt or mismatched checkpoint."""
        from nextoken.model import GPT

        path = self.checkpoint(step)
        trainer = ckpt.read_trainer(path)
        try:
            mcfg = ModelConfig(**trainer["model"])
        except (KeyError, TypeError):
            raise CheckpointError(f"{path}/trainer.json has no valid model config; use an earlier checkpoint") \
                from None
        model = GPT(mcfg)
        ckpt.restore(path, model)
        model.to(device).eval()
        return Loaded(model, self.tokenizer, path, self, trainer)


def open_run(path: str | Path) -> Run:
    """`Run(path)`: RUN or RUN/checkpoints/step_N."""
    return Run(path)
