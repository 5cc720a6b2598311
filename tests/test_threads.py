"""A CPU run's thread count: chosen once from the free cores unless set, and kept by a resume, because it sets the
order of fp32 sums (issue 23)."""

import pytest
import torch
from conftest import tiny_config

from nextoken import checkpoint as ckpt
from nextoken import device
from nextoken.training.loop import train


def test_threads_come_from_the_setting_then_the_run_then_the_free_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "free_cores", lambda: 1)  # one of the cores is busy
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert device.run_threads(setting=3, recorded=2, distributed=False) == 3  # the user's word
    assert device.run_threads(setting=0, recorded=2, distributed=False) == 2  # a resume keeps its numerics
    assert device.run_threads(setting=0, recorded=None, distributed=False) == 1  # a fresh run: the free core
    assert device.run_threads(setting=0, recorded=None, distributed=True) == 2  # torchrun sets threads itself
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert device.run_threads(setting=0, recorded=None, distributed=False) == 2


def test_free_cores_reads_the_idle_share_of_proc_stat(monkeypatch):
    samples = iter([[100, 0, 0, 100, 0, 0, 0], [150, 0, 0, 150, 0, 0, 0]])  # half of the time busy
    monkeypatch.setattr(device, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    assert device.free_cores(sample_s=0) == 1


@pytest.mark.usefixtures("one_thread")
def test_a_resume_computes_with_the_threads_the_run_started_with(bytes_data, tmp_path, monkeypatch):
    monkeypatch.setattr(device, "free_cores", lambda: 1)
    cfg = tiny_config(bytes_data, train__max_steps=2, train__ckpt_every=1, train__eval_every=0, train__threads=0)
    train(cfg, tmp_path / "run", quiet=True)
    assert ckpt.read_trainer(ckpt.resolve(tmp_path / "run"))["threads"] == 1
    monkeypatch.setattr(device, "free_cores", lambda: 2)  # the machine is quiet now: the resume must not care
    cfg.train.max_steps = 3
    train(cfg, tmp_path / "run", resume=True, quiet=True)
    assert torch.get_num_threads() == 1 and ckpt.read_trainer(ckpt.resolve(tmp_path / "run"))["threads"] == 1


@pytest.mark.usefixtures("one_thread")
def test_a_run_killed_before_its_first_checkpoint_restarts_as_it_started(bytes_data, tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.setattr(device, "free_cores", lambda: 1)
    cfg = tiny_config(bytes_data, train__max_steps=2, train__eval_every=0, train__threads=0)
    run = tmp_path / "run"
    train(cfg, run, quiet=True)
    shutil.rmtree(run / "checkpoints")  # as if killed before it saved anything
    monkeypatch.setattr(device, "free_cores", lambda: 2)
    train(cfg, run, resume=True, quiet=True)
    hardware = [json.loads(line)["detail"] for line in (run / "metrics.jsonl").read_text().splitlines()
                if '"hardware"' in line]
    assert [h["threads"] for h in hardware] == [1, 1] and hardware[1]["compiled"] is False
