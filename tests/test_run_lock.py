"""One writer per run directory (issue 15, fault 8): a second training into a run that is being written is
refused before it touches anything, a writer that died leaves no stale lock, and torchrun workers whose
agent died (or one of which got Ctrl-C) stop together at a step boundary with a checkpoint saved."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import children_of, rank_of, tiny_config

from nextoken import checkpoint as ckpt
from nextoken.errors import NextokenError
from nextoken.run import Run, lock_run_dir
from nextoken.training.loop import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(data: Path, **overrides):
    fields = dict(train__max_steps=100_000, train__eval_every=0, train__ckpt_every=5, train__keep=3,
                  log__sample_tokens=0)  # trains until the test stops it
    return tiny_config(data, **{**fields, **overrides})


def _toml(cfg, path: Path) -> Path:
    path.write_text(cfg.to_toml())
    return path


def _train_cmd(toml: Path, run: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "nextoken", "train", "--config", str(toml), "--out", str(run), *flags]


def _torchrun_cmd(toml: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "nextoken", "train", "--config", str(toml), "--out", str(run)]


def _steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            continue
    return [r["step"] for r in rows if r["kind"] == "train"]


def _wait(cond, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the process ended ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:  # an orphan's zombie lingers when the reaper it was given does not reap
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pids) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _files(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))}


def _saved_step(run: Path) -> int:
    return ckpt.read_trainer(ckpt.resolve(run))["step"]


# ---- the lock itself, in one process ----

def test_the_lock_refuses_a_second_writer_and_tells_readers_who_writes(tmp_path):
    run = tmp_path / "run"
    with lock_run_dir(run):
        assert (run / ".lock").is_file() and not any(p.name != ".lock" for p in run.iterdir())
        with pytest.raises(NextokenError, match=f"pid {os.getpid()}") as info:
            lock_run_dir(run)
        assert "\n" not in str(info.value)
        (run / "config.toml").write_text("")  # now it holds (part of) a run, as Run requires
        assert Run(run).writer() == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(NextokenError, match=f"pid {os.getpid()}"):
            lock_run_dir(run, resume=True)
    assert Run(run).writer() is None
    lock_run_dir(run, resume=True).release()  # released: the next writer takes it


def test_a_refused_or_failed_start_leaves_nothing(bytes_data, tmp_path):
    with pytest.raises(NextokenError, match="no checkpoint to resume"):
        lock_run_dir(tmp_path / "typo", resume=True)
    assert not (tmp_path / "typo").exists()
    lock_run_dir(tmp_path / "a" / "run").release()  # a writer that ended before it wrote the run
    assert not (tmp_path / "a").exists()
    with pytest.raises(NextokenError, match="smaller than the data"):  # bad input found after the lock
        train(_config(bytes_data, model__vocab_size=8), tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


# ---- two trainings, one directory ----

def test_a_second_training_into_a_run_being_written_is_refused(bytes_data, tmp_path):
    cfg = _config(bytes_data)
    run, toml = tmp_path / "run", _toml(cfg, tmp_path / "run.toml")
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(_train_cmd(toml, run), stdout=log, stderr=log, env=ENV)
    try:
        _wait(lambda: (run / "checkpoints" / "latest").is_file(), first, "the first checkpoint")
        os.kill(first.pid, signal.SIGSTOP)  # frozen: whatever changes in RUN now is the second's doing
        try:
            before = _files(run)
            # --train.max_steps only bounds what a second writer that is not refused would train
            second = subprocess.run(_train_cmd(toml, run, "--resume", "--train.max_steps", "200"),
                                    capture_output=True, text=True, timeout=120, env=ENV)
            with pytest.raises(NextokenError, match=f"pid {first.pid}"):  # a fresh run into it, too
                train(cfg, run, quiet=True)
            after = _files(run)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0], second.stderr[-2000:]
        assert after == before
        last = max(_steps(run))
        _wait(lambda: max(_steps(run)) >= last + 5, first, "the first to go on training")
    finally:
        first.kill()
        first.wait()
    steps = _steps(run)
    assert len(steps) == len(set(steps)), "two writers logged the same steps"


def test_a_killed_writer_leaves_no_stale_lock(bytes_data, tmp_path):
    cfg = _config(bytes_data)
    run, toml = tmp_path / "run", _toml(cfg, tmp_path / "run.toml")
    first = subprocess.Popen(_train_cmd(toml, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        _wait(lambda: (run / "checkpoints" / "latest").is_file(), first, "the first checkpoint")
        assert Run(run).writer()["pid"] == first.pid
    finally:
        first.kill()
        first.wait()
    assert (run / ".lock").is_file() and Run(run).writer() is None  # the file stays; the lock died with it
    saved = _saved_step(run)
    cfg.train.max_steps = saved + 3
    assert train(cfg, run, resume=True, quiet=True)["step"] == saved + 3


# ---- torchrun ----

def test_workers_whose_torchrun_agent_was_killed_stop_and_save(bytes_data, tmp_path):
    cfg = _config(bytes_data, train__ckpt_every=0)  # the only checkpoint is the one the stop saves
    run, toml = tmp_path / "run", _toml(cfg, tmp_path / "run.toml")
    agent = subprocess.Popen(_torchrun_cmd(toml, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV)
    workers = []
    try:
        _wait(lambda: len(_steps(run)) >= 3, agent, "training")
        workers = children_of(agent.pid)
        assert sorted(rank_of(p) for p in workers) == [0, 1]
        os.kill(agent.pid, signal.SIGKILL)  # its workers live in sessions of their own: they train on
        killed = time.monotonic()
        agent.wait()
        at_kill = max(_steps(run))
        deadline = killed + 60
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers)), "the workers trained on after their agent died"
        stopped_in = time.monotonic() - killed
        _, stderr = agent.communicate(timeout=30)  # the workers held its pipes; they are closed now
    finally:
        _kill(workers)
    saved = _saved_step(run)
    assert saved == max(_steps(run)) >= at_kill, (saved, at_kill)  # a step boundary, with its checkpoint
    assert stderr.count("torchrun's agent died") == 2, stderr[-3000:]
    print(f"workers stopped {stopped_in:.2f}s after the agent's death, at step {saved} (step {at_kill} at the kill)")
    cfg.train.max_steps = saved + 2
    assert train(cfg, run, resume=True, quiet=True)["step"] == saved + 2


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(bytes_data, tmp_path):
    # Each rank decides at its own step boundary; deciding alone, rank 1 would save while rank 0 waits in the
    # step's gradient all-reduce. They agree (a collective) and save the same step together.
    cfg = _config(bytes_data, train__ckpt_every=0)
    run, toml = tmp_path / "run", _toml(cfg, tmp_path / "run.toml")
    agent = subprocess.Popen(_torchrun_cmd(toml, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV)
    workers = []
    try:
        _wait(lambda: len(_steps(run)) >= 3, agent, "training")
        workers = children_of(agent.pid)
        os.kill(next(p for p in workers if rank_of(p) == 1), signal.SIGINT)
        _, stderr = agent.communicate(timeout=90)
    finally:
        agent.kill()
        _kill(workers)
    assert agent.returncode != 0
    stops = re.findall(r"interrupted at step (\d+)", stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stderr[-3000:]
    assert _saved_step(run) == int(stops[0]) == max(_steps(run))
