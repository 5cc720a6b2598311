"""Directories written whole or not at all: build under a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def building(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `out`; when the block ends without an error it replaces `out`
    (an existing one is moved aside, then removed), else it is deleted. A reader therefore sees the old
    directory or the whole new one, never half of it, and a failed or interrupted write leaves nothing behind.
    A SIGKILL runs no cleanup, so temporary directories of `out` whose process is gone are removed first."""
    out = Path(out)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(out, old)  # a directory another process published is only ever renamed, never half-deleted
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale(out: Path) -> None:
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2:].rpartition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if need be) for the block; the kernel drops it when the
    process ends, however it ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
