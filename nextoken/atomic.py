"""Directories written whole or not at all: build under a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def building(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `out`; when the block ends without an error it replaces `out`
    (an existing one is removed first), else it is deleted. A reader therefore sees the old directory or the
    whole new one, never half of it, and a failed or interrupted write leaves nothing behind."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
