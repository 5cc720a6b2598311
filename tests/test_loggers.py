"""TensorBoard and Weights & Biases (offline) mirror metrics.jsonl when their extras are installed."""

import pytest
from conftest import tiny_config

from nextoken.training.loop import train


def test_tensorboard_event_files(bytes_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = tmp_path / "pick.jsonl"
    task.write_text('{"context": "def f(x):", "choices": ["\\n    return x", " 1 +"], "label": 0}\n')
    cfg = tiny_config(bytes_data, train__max_steps=4, log__tensorboard=True, train__eval_tasks=str(task))
    train(cfg, tmp_path / "r", quiet=True)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "val/loss" in tags and "val/bits_per_byte" in tags
    assert {"task/pick/acc", "task/pick/acc_norm", "task/pick/bits_per_byte"} <= set(tags)
    assert len(acc.Scalars("train/loss")) == 4


def test_wandb_offline(bytes_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(bytes_data, train__max_steps=3, log__wandb=True)
    train(cfg, tmp_path / "r", quiet=True)
    runs = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
