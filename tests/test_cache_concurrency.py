"""The built-in corpus cache and atomic directories under concurrent and killed writers (issue 23)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from nextoken.atomic import building

# A process preparing the built-in corpus, shrunk to a few standard-library files, once `go` exists.
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import nextoken.data.builtin as B, nextoken.data.sources as S
    small = S.stdlib_files()[:6]
    S.stdlib_files = B.stdlib_files = lambda include_tests=False: small
    while not Path(sys.argv[1]).exists():
        time.sleep(0.01)
    print(B.stdlib_data("bytes", log=lambda m: print("LOG", m, flush=True)))
""")


def test_first_runs_at_once_prepare_the_builtin_corpus_once(tmp_path):
    """Several first runs on an empty cache: one prepares, the others wait for it and use its directory (none
    crashes removing another's output, none replaces a directory another published)."""
    go = tmp_path / "go"
    env = {**os.environ, "NEXTOKEN_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(5)]
    time.sleep(3)  # let them import and sit at the gate
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [e for _, e in outs]
    paths = {o.splitlines()[-1] for o, _ in outs}
    assert len(paths) == 1
    assert sum(o.count("LOG preparing") for o, _ in outs) == 1
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_a_killed_writers_temporary_directory_is_removed_by_the_next(tmp_path):
    """SIGKILL leaves `.OUT.tmp-PID` behind (nothing runs on the way out); the next write beside it removes the
    ones whose process is gone and leaves a live process's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}"
    (stale / "train").mkdir(parents=True)
    live = tmp_path / f".out.tmp-{os.getppid()}"
    live.mkdir()
    with building(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "out" / "x").read_text() == "x"
