"""A diverged run (issue 15, fault 4): it finishes and saves, its perplexity is inf (never an OverflowError), and
every place that writes, prints, plots or fits a non-finite figure handles it: metrics.jsonl and `--json` stay
strict JSON, the display and the CLI say inf and that the model diverged, the plot marks the point without
squashing its axes, and the fit leaves the run out with a note (docs/metrics.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from nextoken.run import Run
from nextoken.training import loop
from nextoken.training.loop import train

DIVERGE = "lr@5x1e6"  # a million times the LR for one step: the loss passes 709 nats, where exp() overflows


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the run finishes and saves ----

def test_the_final_checkpoint_is_written_before_the_final_eval(bytes_data, tmp_path, monkeypatch):
    cfg = tiny_config(bytes_data, train__max_steps=6, train__ckpt_every=0, train__eval_every=0)

    def failing(*args, **kw):
        raise RuntimeError("the evaluation failed")

    monkeypatch.setattr(loop, "evaluate", failing)
    with pytest.raises(RuntimeError, match="the evaluation failed"):
        train(cfg, tmp_path / "run", quiet=True)
    assert Run(tmp_path / "run").checkpoint().name == "step_00000006"  # nothing trained is lost
