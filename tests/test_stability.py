"""Spike detection, the warn/skip/rollback policies, full disks, Ctrl-C and determinism (issue 3)."""

import errno
import json
import math
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from nextoken import checkpoint as ckpt
from nextoken.checkpoint import single
from nextoken.errors import CheckpointError, ConfigError
from nextoken.run import Run
from nextoken.training import loop
from nextoken.training.faults import Faults
from nextoken.training.guard import StabilityError
from nextoken.training.loop import train
from nextoken.training.signals import GracefulStop, Interrupted
from nextoken.training.spikes import SpikeDetector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def rows(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def events(run, type_=None):
    return [e for e in rows(run, "event") if type_ is None or e["type"] == type_]


def tensors_at(run, step):
    path = run / "checkpoints" / f"step_{step:08d}"
    return load_file(str(path / "model.safetensors")), load_file(str(path / "state.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stable_cfg(data, policy, inject="", **kw):
    kw = {"train__max_steps": 24, "train__ckpt_every": 1, "train__keep": 100, "train__eval_every": 0, **kw}
    cfg = tiny_config(data, **kw)
    cfg.stability.policy, cfg.stability.inject, cfg.stability.window = policy, inject, 8
    return cfg


# ---- detection ----

def test_detector_flags_spikes_and_non_finite_but_not_noise():
    rng = random.Random(0)
    det = SpikeDetector(window=50, threshold=6.0)
    flagged = [det.check(s, 3.0 - s * 1e-3 + rng.gauss(0, 0.05), 0.5 * math.exp(rng.gauss(0, 0.2)))
               for s in range(400)]
    assert not any(flagged)  # noisy but steady: no false alarm
    spike = det.check(400, 4.5, 0.5)
    assert spike.type == "spike" and spike.detail["metric"] == "loss" and spike.detail["score"] > 6
    assert det.check(401, 2.6, 20.0).detail["metric"] == "grad_norm"
    assert det.check(402, float("nan"), 0.5).type == "nan"
    assert det.check(403, 2.6, float("inf")).type == "nan"
    assert det.check(404, 2.6, 0.5) is None  # one spike does not move the median


def test_detector_waits_for_a_full_window():
    det = SpikeDetector(window=10, threshold=3.0)
    assert all(det.check(s, 1.0 if s < 9 else 100.0, 1.0) is None for s in range(10))


def test_fault_spec_errors_are_config_errors():
    assert Faults.parse("lr@3x10, batch@4,nan@5") == Faults({3: 10.0}, {4}, {5})
    for bad in ("lr@x", "boom@3", "lr@3x0", "nan"):
        with pytest.raises(ConfigError):
            Faults.parse(bad)


# ---- policies ----

def test_skip_leaves_weights_and_optimizer_state_untouched(bytes_data, tmp_path):
    run = tmp_path / "run"
    train(stable_cfg(bytes_data, "skip", "lr@14x300"), run, quiet=True)
    skipped = {e["step"] for e in events(run, "skip")}
    assert events(run, "spike")[0]["step"] == 15 and 15 in skipped and len(skipped) < 9
    optim = lambda s: {k: v for k, v in s.items() if k.startswith("optim.")}  # noqa: E731
    for step in range(15, 24):  # checkpoint `step` holds the state before update `step`
        (w0, s0), (w1, s1) = tensors_at(run, step), tensors_at(run, step + 1)
        assert same(w0, w1) == (step in skipped)
        assert same(optim(s0), optim(s1)) == (step in skipped)  # AdamW moments and step count too


@pytest.mark.parametrize("policy", ["warn", "skip"])
def test_a_non_finite_step_never_reaches_the_weights(bytes_data, tmp_path, policy):
    run = tmp_path / "run"
    train(stable_cfg(bytes_data, policy, "nan@12"), run, quiet=True)
    assert [e["step"] for e in events(run, "nan")] == [12] and events(run, "skip")
    assert same(tensors_at(run, 12)[0], tensors_at(run, 13)[0])
    assert all(math.isfinite(float(v.abs().sum())) for v in tensors_at(run, 24)[0].values())


def test_warn_logs_the_spike_and_applies_the_update(bytes_data, tmp_path):
    run = tmp_path / "run"
    train(stable_cfg(bytes_data, "warn", "lr@14x300"), run, quiet=True)
    spike = events(run, "spike")[0]
    assert spike["step"] == 15 and spike["detail"]["metric"] == "loss" and spike["detail"]["score"] > 6
    assert not events(run, "skip") and not same(tensors_at(run, 15)[0], tensors_at(run, 16)[0])


def test_rollback_restores_an_earlier_snapshot_and_skips_batches(bytes_data, tmp_path):
    cfg = stable_cfg(bytes_data, "rollback", "lr@14x300", train__ckpt_every=0)
    st = cfg.stability
    st.rollback_steps, st.snapshot_every, st.skip_batches = 4, 2, 10
    run = tmp_path / "run"
    res = train(cfg, run, quiet=True)
    spike, rollback = events(run, "spike")[0], events(run, "rollback")[0]
    assert spike["step"] == rollback["step"] == 15  # the update at 14 did the damage; 15's loss shows it
    d = rollback["detail"]
    assert d["to_step"] == 10 and d["from_step"] == 15 and d["skipped_batches"] == 10 and d["data_step"] == 20
    assert res["step"] == 24 and len(events(run, "rollback")) == 1
    trainer = ckpt.read_trainer(ckpt.resolve(run))
    assert trainer["data_step"] == 24 - 10 + 20 and trainer["stability"]["rollbacks"] == [15]
    final = {r["step"]: r["loss"] for r in rows(run, "train")}  # the last line per step wins
    assert final[24] < spike["detail"]["loss"] / 2


def test_an_incident_right_after_a_rollback_rolls_back_to_the_oldest_state_held(bytes_data, tmp_path):
    cfg = stable_cfg(bytes_data, "rollback", "lr@14x300,nan@16", train__ckpt_every=0)
    cfg.stability.rollback_steps, cfg.stability.snapshot_every, cfg.stability.skip_batches = 4, 2, 1
    train(cfg, tmp_path / "run", quiet=True)
    first, second = (e["detail"] for e in events(tmp_path / "run", "rollback"))
    assert (first["from_step"], first["to_step"], first["data_step"]) == (15, 10, 16)
    assert (second["from_step"], second["to_step"], second["data_step"]) == (10, 10, 17)  # nan@16 fired at once


def test_rollback_gives_up_after_too_many(bytes_data, tmp_path):
    cfg = stable_cfg(bytes_data, "rollback", "lr@14x300,lr@22x300", train__max_steps=40, train__ckpt_every=0)
    st = cfg.stability
    st.rollback_steps, st.snapshot_every, st.skip_batches, st.max_rollbacks = 4, 2, 4, 1
    with pytest.raises(StabilityError, match="after 1 rollbacks within 1000 steps"):
        train(cfg, tmp_path / "run", quiet=True)
    assert len(events(tmp_path / "run", "rollback")) == 1 and len(events(tmp_path / "run", "spike")) == 2


# ---- crashes ----

def test_full_disk_while_checkpointing_is_a_clear_error_and_the_previous_checkpoint_loads(
        bytes_data, tmp_path, monkeypatch):
    real, calls = single.save_file, []

    def save_file(tensors, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: half a file, then ENOSPC
            with open(path, "wb") as fh:
                fh.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(single, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is intact"):
        train(tiny_config(bytes_data), run, quiet=True)
    assert not list((run / "checkpoints").glob(".tmp-*"))
    loaded = Run(run).load()
    assert loaded.checkpoint.name == "step_00000010" and loaded.trainer["step"] == 10


def test_safetensors_own_full_disk_error_is_the_same_clear_error_and_leaves_no_partial_directory(
        bytes_data, tmp_path, monkeypatch):
    """Issue 23: safetensors reports ENOSPC as its SafetensorError, not an OSError (a traceback came out, and
    the partial .tmp-step_* stayed on the full disk)."""
    from safetensors import SafetensorError

    real, calls = single.save_file, []

    def save_file(tensors, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as fh:
                fh.write(b"\0" * 100)
            raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error 28) at "
                                  f"path \"{path}\"")
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(single, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is intact"):
        train(tiny_config(bytes_data), run, quiet=True)
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert Run(run).load().trainer["step"] == 10


def test_dcp_full_disk_error_is_the_clear_error_and_leaves_no_partial_directory(tmp_path, monkeypatch):
    """torch.distributed.checkpoint gathers each rank's failure into a CheckpointException (a BaseException)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    def full(state, checkpoint_id):
        os.makedirs(checkpoint_id)
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"\0" * 100)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), checkpoint_id)
        except OSError as e:
            raise CheckpointException("save failed", {0: _wrap_exception(e)}) from None

    monkeypatch.setattr(dcp, "save", full)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is intact"):
        ckpt.save(tmp_path, 3, model, opt, {"step": 3}, keep=2, sharded=True)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def _send_sigint_at(monkeypatch, at_step: int, times: int):
    real = loop.lr_at

    def lr_at(step, *a):
        if step == at_step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real(step, *a)

    monkeypatch.setattr(loop, "lr_at", lr_at)


def test_ctrl_c_saves_at_the_current_step_and_resume_continues(bytes_data, tmp_path, monkeypatch):
    _send_sigint_at(monkeypatch, 7, times=1)
    run = tmp_path / "run"
    cfg = tiny_config(bytes_data, train__ckpt_every=0, train__eval_every=0)
    with pytest.raises(Interrupted, match="interrupted at step 8") as info:
        train(cfg, run, quiet=True)
    assert info.value.exit_code == 130 and ckpt.resolve(run).name == "step_00000008"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    assert train(cfg, run, resume=True, quiet=True)["step"] == 20


def test_a_second_ctrl_c_exits_at_once(bytes_data, tmp_path, monkeypatch):
    _send_sigint_at(monkeypatch, 7, times=2)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(bytes_data, train__ckpt_every=0, train__eval_every=0), run, quiet=True)
    assert not (run / "checkpoints").exists()


def test_graceful_stop_outside_the_main_thread_does_nothing():
    import threading

    out = []
    th = threading.Thread(target=lambda: out.append(GracefulStop().install()._previous))
    th.start()
    th.join()
    assert out == [{}]


# ---- determinism ----

def test_same_config_and_seed_give_the_same_losses(bytes_data, tmp_path):
    cfg = tiny_config(bytes_data, train__max_steps=12, train__ckpt_every=0)
    losses = []
    for name in ("a", "b"):
        train(cfg, tmp_path / name, quiet=True)
        losses.append([(r["step"], r["loss"], r["grad_norm"]) for r in rows(tmp_path / name, "train")]
                      + [(r["step"], r["loss"]) for r in rows(tmp_path / name, "eval")])
    assert losses[0] == losses[1] and len(losses[0]) == 14
