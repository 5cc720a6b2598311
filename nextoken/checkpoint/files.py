"""The on-disk layout of RUN/checkpoints/ and its atomic mechanics (the run directory contract).

A checkpoint is written into a temporary directory, fsynced, and renamed into place; `latest` is replaced by
an atomic rename after that. A kill at any instant therefore leaves the previous checkpoint whole and
`latest` pointing at a complete one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from nextoken.errors import CheckpointError

FORMAT_VERSION = 1
LATEST = "latest"
TRAINER = "trainer.json"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_trainer(ckpt: Path, trainer: dict) -> None:
    (Path(ckpt) / TRAINER).write_text(json.dumps({"format_version": FORMAT_VERSION, **trainer}, indent=2))


def read_trainer(ckpt: Path) -> dict:
    """trainer.json of a checkpoint: step, tokens, loader position, config hash, the model's config.

    Raises CheckpointError when it is missing, corrupt, or from an incompatible format."""
    try:
        trainer = json.loads((Path(ckpt) / TRAINER).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{ckpt}/{TRAINER} is missing or corrupt; use an earlier checkpoint") from None
    if trainer.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt} was written by an incompatible nextoken; retrain or use a matching version")
    return trainer


def publish(tmp: Path, final: Path) -> None:
    """fsync what `tmp` holds, rename it to `final` and point `latest` at it."""
    for f in tmp.rglob("*"):
        if f.is_file():
            fsync_file(f)
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_latest(final.parent, final.name)


def io_error(e: BaseException) -> OSError | None:
    """The OSError behind a failed write, or None when `e` is no I/O failure: `e` itself, the one safetensors
    reports as its SafetensorError ("... (os error 28)"), or one that torch.distributed.checkpoint gathered from
    a rank into its CheckpointException (a BaseException, `failures`: rank -> (exception, traceback))."""
    if isinstance(e, OSError):
        return e
    for exc, _ in (getattr(e, "failures", None) or {}).values():
        if (found := io_error(exc)) is not None:
            return found
    if type(e).__name__ == "SafetensorError" and (m := re.search(r"os error (\d+)", str(e))):
        return OSError(int(m[1]), os.strerror(int(m[1])))
    return None


def write_error(final: Path, e: OSError) -> CheckpointError:
    what = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
    return CheckpointError(f"could not write checkpoint {final} ({what}); free space and rerun with "
                           f"--resume: the previous checkpoint is intact")


def _write_latest(ckpt_root: Path, name: str) -> None:
    tmp = ckpt_root / f".{LATEST}.tmp-{os.getpid()}"
    tmp.write_text(name + "\n")
    fsync_file(tmp)
    os.replace(tmp, ckpt_root / LATEST)
    fsync_dir(ckpt_root)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """The complete checkpoints under RUN/checkpoints, oldest first."""
    return sorted(p for p in Path(ckpt_root).glob("step_*") if (p / TRAINER).is_file())


def prune(ckpt_root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (and whatever `latest` names); remove what a killed write left."""
    ckpts = list_checkpoints(ckpt_root)
    latest = (ckpt_root / LATEST).read_text().strip() if (ckpt_root / LATEST).exists() else None
    for old in ckpts[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    for stale in ckpt_root.glob(f".{LATEST}.tmp-*"):
        stale.unlink(missing_ok=True)


def drop_after(ckpt_root: Path, step: int) -> None:
    """Delete the checkpoints newer than `step`: after a rollback they belong to the abandoned branch."""
    for path in list_checkpoints(ckpt_root):
        if read_trainer(path)["step"] > step:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """RUN's newest complete checkpoint (what `latest` names, else the highest step), or None."""
    root = Path(run_dir) / "checkpoints"
    if (root / LATEST).is_file():
        ckpt = root / (root / LATEST).read_text().strip()
        if (ckpt / TRAINER).is_file():
            return ckpt
    ckpts = list_checkpoints(root) if root.is_dir() else []
    return ckpts[-1] if ckpts else None


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / TRAINER).is_file()
