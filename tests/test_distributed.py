"""Data parallelism on CPU processes (gloo): torchrun runs give the loss curve of one process, FSDP2
checkpoints reshard to another world size, and a killed rank stops the job with a clear message."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import children_of, rank_of, tiny_config

from nextoken.config import TrainConfig
from nextoken.errors import ConfigError, NextokenError
from nextoken.run import Run
from nextoken.training import distributed
from nextoken.training.loop import train

REL_TOL = 1e-4  # per-step loss, relative (issue 5)


def _config(data: Path, **overrides):
    # A constant LR after warmup, so a run resumed with a larger max_steps follows the same curve.
    fields = dict(train__max_steps=8, train__eval_every=0, train__ckpt_every=4, train__keep=5,
                  optim__schedule="constant", optim__warmup_steps=2, log__sample_tokens=0)
    return tiny_config(data, **{**fields, **overrides})


def _torchrun(nproc: int, toml: Path, out: Path, *flags: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # --standalone: torchrun picks a free port itself (never a fixed one)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "nextoken", "train", "--config", str(toml), "--out", str(out), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _assert_same_curve(got: dict[int, float], ref: dict[int, float]) -> None:
    assert got and set(got) <= set(ref)
    for step, loss in got.items():
        assert abs(loss - ref[step]) <= REL_TOL * abs(ref[step]), (step, loss, ref[step])


def _write(cfg, path: Path) -> Path:
    path.write_text(cfg.to_toml())
    return path


def test_rank_slices_cover_the_global_batch_once():
    for world, (b, a) in [(1, (4, 2)), (2, (4, 2)), (2, (2, 4)), (4, (6, 2)), (3, (4, 3))]:
        seen = []
        for rank in range(world):
            slices = distributed.rank_slices(b, a, distributed.Dist(rank, world))
            assert len({count for _, count in slices}) == 1 and slices[0][1] <= b
            seen += [i for off, count in slices for i in range(off, off + count)]
        assert sorted(seen) == list(range(b * a))
    with pytest.raises(ConfigError, match="split evenly over 2"):
        distributed.rank_slices(3, 1, distributed.Dist(0, 2))


def test_port_in_use_is_one_clear_line(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(distributed, "_STATE", None)
        with pytest.raises(NextokenError, match=f"port {port} is in use") as info:
            distributed.init_distributed(TrainConfig(device="cpu"))
    assert "\n" not in str(info.value)


def test_fsdp_matches_one_process_and_resumes_on_another_world_size(bytes_data, tmp_path):
    # 2 sequences per micro-batch, 4 micro-batches: with 2 ranks each accumulates 2 (no gradient sync on the first)
    cfg = _config(bytes_data, train__batch_size=2, train__grad_accum=4)
    train(cfg, tmp_path / "one", quiet=True)
    ref = _losses(tmp_path / "one")
    _assert_mfu_is_per_device(tmp_path / "one", world=1)

    fsdp = _config(bytes_data, train__batch_size=2, train__grad_accum=4, train__parallel="fsdp", train__max_steps=4)
    toml = _write(fsdp, tmp_path / "fsdp.toml")
    _torchrun(2, toml, tmp_path / "two")
    ckpt = tmp_path / "two" / "checkpoints" / "step_00000004"
    assert (ckpt / "dcp" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    shutil.copytree(tmp_path / "two", tmp_path / "two_then_one")

    # eval / sample / next load the sharded checkpoint in one process
    loaded = Run(tmp_path / "two").load()
    assert loaded.trainer["step"] == 4 and loaded.model.lm_head.weight.shape[0] == loaded.model.cfg.vocab_size

    # resume with 2 processes ...
    subprocess_out = _torchrun(2, toml, tmp_path / "two", "--resume", "--train.max_steps", "8")
    assert "Traceback" not in subprocess_out.stderr
    # ... and with 1
    one = _config(bytes_data, train__batch_size=2, train__grad_accum=4, train__parallel="fsdp")
    train(one, tmp_path / "two_then_one", resume=True, quiet=True)
    for run in ("two", "two_then_one"):
        got = _losses(tmp_path / run)
        assert sorted(got) == list(range(1, 9))
        _assert_same_curve(got, ref)


def _assert_mfu_is_per_device(run: Path, world: int) -> None:
    # MFU is the job's model FLOP/s over the peak of all its devices (PaLM, appendix B): tokens_per_s is the
    # whole job's, so dividing by one device's peak overstated it `world` times (issue 15).
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    hw = [r["detail"] for r in rows if r.get("type") == "hardware"][0]
    assert hw["processes"] == world and hw["peak_flops_per_device"] > 0
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows
    for r in train_rows:
        expect = r["tokens_per_s"] * hw["flops_per_token"] / (world * hw["peak_flops_per_device"])
        assert r["mfu"] == pytest.approx(expect, rel=1e-9)


def test_ddp_two_processes_match_one_and_a_killed_rank_stops_the_job(bytes_data, tmp_path):
    # 4 sequences per micro-batch, 2 micro-batches: one process accumulates 2, each of 2 ranks does 1.
    cfg = _config(bytes_data, train__batch_size=4, train__grad_accum=2, train__max_steps=100_000, train__ckpt_every=5)
    ref_cfg = _config(bytes_data, train__batch_size=4, train__grad_accum=2, train__max_steps=6)
    train(ref_cfg, tmp_path / "one", quiet=True)
    run = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nextoken", "train", "--config", str(_write(cfg, tmp_path / "run.toml")), "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (run / "checkpoints" / "latest").is_file():
            time.sleep(0.2)
        assert (run / "checkpoints" / "latest").is_file(), "the job never wrote a checkpoint"
        victims = [p for p in children_of(proc.pid) if rank_of(p) == 1]
        assert victims, "rank 1 not found"
        os.kill(victims[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "another process of the job failed" in stderr and "--resume" in stderr, stderr[-2000:]

    # the steps it took follow the one-process curve, and it wrote the normal single-file checkpoint
    _assert_same_curve({s: v for s, v in _losses(run).items() if s <= 6}, _losses(tmp_path / "one"))
    _assert_mfu_is_per_device(run, world=2)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert (latest / "model.safetensors").is_file()

    # --resume continues from the last complete checkpoint (here in one process)
    saved = json.loads((latest / "trainer.json").read_text())["step"]
    cfg.train.max_steps = saved + 2
    res = train(cfg, run, resume=True, quiet=True)
    assert res["step"] == saved + 2


def test_fsdp_rollback_after_resume_restores_the_optimizer(bytes_data, tmp_path):
    # A resumed run's ring of snapshots is empty, so a spike soon after --resume rolls back to a checkpoint on
    # disk: for FSDP2 a sharded one, whose weights, optimizer moments and RNG must all come back (issue 10).
    # The reference rolls back to the same step from its in-memory snapshot, in one uninterrupted process.
    spike = dict(stability__policy="rollback", stability__rollback_steps=4, stability__snapshot_every=4,
                 stability__skip_batches=2, stability__inject="nan@9", train__max_steps=12)
    train(_config(bytes_data, train__batch_size=2, train__grad_accum=4, **spike), tmp_path / "one", quiet=True)
    ref = _losses(tmp_path / "one")

    fsdp = _config(bytes_data, train__batch_size=2, train__grad_accum=4, train__parallel="fsdp", **spike)
    toml = _write(fsdp, tmp_path / "fsdp.toml")
    _torchrun(2, toml, tmp_path / "two", "--train.max_steps", "8")
    _torchrun(2, toml, tmp_path / "two", "--resume")
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    rollbacks = [r for r in rows if r.get("type") == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["detail"]["to_step"] == 4, rollbacks
    got = _losses(tmp_path / "two")  # the last line of each step: after the rollback, steps 5-12 retrained
    assert sorted(got) == list(range(1, 13))
    _assert_same_curve(got, ref)


def test_muon_under_ddp_with_accumulation_matches_one_process(bytes_data, tmp_path):
    # DDP averages the gradients before the step, so each rank orthogonalizes the same whole matrices: two
    # processes x 2 accumulated micro-batches follow the curve of one process x 4 (issue 14)
    cfg = _config(bytes_data, train__batch_size=2, train__grad_accum=4, optim__name="muon", train__max_steps=6)
    train(cfg, tmp_path / "one", quiet=True)
    _torchrun(2, _write(cfg, tmp_path / "muon.toml"), tmp_path / "two")
    got, ref = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert sorted(got) == list(range(1, 7))
    _assert_same_curve(got, ref)


def test_muon_under_fsdp_matches_one_process_and_resumes_exactly(bytes_data, tmp_path):
    # FSDP2 shards each matrix by rows; Muon gathers each one for its Newton-Schulz step (optim.Muon), so two
    # sharded processes follow one plain process, and a resume continues the sharded run to the same bits.
    cfg = _config(bytes_data, train__batch_size=2, train__grad_accum=2, optim__name="muon", train__max_steps=6,
                  train__ckpt_every=3)
    train(cfg, tmp_path / "one", quiet=True)
    toml = _write(cfg, tmp_path / "muon.toml")
    fsdp = ["--train.parallel", "fsdp"]
    _torchrun(2, toml, tmp_path / "two", *fsdp)
    got, ref = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert sorted(got) == list(range(1, 7))
    _assert_same_curve(got, ref)

    _torchrun(2, toml, tmp_path / "resumed", *fsdp, "--train.max_steps", "3")
    _torchrun(2, toml, tmp_path / "resumed", *fsdp, "--resume", "--train.max_steps", "6")
    assert _losses(tmp_path / "resumed") == got  # bit-identical figures from step 4 on, too


def test_a_bad_flag_under_torchrun_is_said_once(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nextoken", "train", "--optim.lr", "-1", "--out", str(tmp_path / "run")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    # one line from the job's processes; torchrun's own failure report follows, which no worker can silence
    assert res.stderr.count("error: optim.lr must be positive") == 1, res.stderr[-2000:]
