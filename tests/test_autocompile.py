"""`--train.compile auto`: the choice comes from a measurement, is cached per machine, and leaves the run as it was."""

import contextlib
import json
import time

import pytest
import torch
from conftest import tiny_config

from nextoken import checkpoint as ckpt
from nextoken.config import ModelConfig
from nextoken.model import GPT
from nextoken.training import autocompile
from nextoken.training.autocompile import choose_compile, decide_from_figures
from nextoken.training.distributed import Dist
from nextoken.training.loop import train
from nextoken.training.objective import loss_fn


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    """The machine counts as quiet (its matmul rate at its best) unless a test says otherwise: on a shared box
    the real measurement would decide whether figures are remembered."""
    monkeypatch.setattr(autocompile, "_load", lambda device: 1.0)


def test_decision_weighs_the_saving_against_the_compile_cost():
    fig = {"eager_s": 0.100, "compiled_s": 0.080, "compile_s": 30.0, "micro_steps": 1}
    assert decide_from_figures(fig, steps_left=2000, sunk=False)  # saves 40 s, costs 30 s
    assert not decide_from_figures(fig, steps_left=1000, sunk=False)  # saves 20 s: not worth compiling
    assert decide_from_figures(fig, steps_left=1000, sunk=True)  # already compiled: any real gain counts
    assert not decide_from_figures({**fig, "compiled_s": 0.099}, 10**6, sunk=True)  # within the noise margin
    assert not decide_from_figures({**fig, "compiled_s": None}, 10**6, sunk=True)  # compiling failed


class Compiler:
    """Stands in for torch.compile (which would cost the test a minute): wraps and counts."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = 0, fail

    def __call__(self, fn):
        self.calls += 1

        def compiled(*args):
            if self.fail:
                raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
            return fn(*args)
        return compiled


def _choose(model, tmp_path, compiler, steps_left=10**6, resumed=None, setting="auto"):
    return choose_compile(model, loss_fn(model, contextlib.nullcontext), setting=setting, device=torch.device("cpu"),
                          precision="fp32", threads=1, dist=Dist(),
                          parallel="ddp", model_hash="abc", vocab_size=64, micro=(2, 16), micro_steps=1,
                          steps_left=steps_left, resumed=resumed, cache=tmp_path / "choices.json",
                          compiler=compiler)


def _eager(fn) -> bool:
    return fn.__name__ == "step"  # objective.loss_fn's own function, not the test compiler's wrapper


def _model():
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=16, vocab_size=64))


def test_a_long_run_measures_once_and_leaves_the_model_and_rng_as_they_were(tmp_path, monkeypatch):
    monkeypatch.setattr(autocompile, "PAYBACK_RUNS", 0)  # any run counts as long
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    compiler = Compiler()
    fn, choice = _choose(model, tmp_path, compiler)
    assert compiler.calls == 1 and "measured here" in choice.reason
    assert choice.figures["eager_s"] > 0 and choice.figures["compiled_s"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert _eager(fn) == (not choice.compiled)
    cached = json.loads((tmp_path / "choices.json").read_text())
    assert len(cached) == 1 and "micro 2x16" in next(iter(cached))

    def no_timing(*a, **k):
        raise AssertionError("a cached measurement must not be timed again")
    monkeypatch.setattr(autocompile, "_time_passes", no_timing)
    _, again = _choose(model, tmp_path, Compiler())
    assert "from this machine's measurement" in again.reason


def test_a_failing_compile_falls_back_to_eager_and_is_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(autocompile, "PAYBACK_RUNS", 0)
    model = _model()
    fn, choice = _choose(model, tmp_path, Compiler(fail=True))
    assert _eager(fn) and not choice.compiled
    assert "torch.compile failed here: RuntimeError: InductorError: no working C++ compiler found;" in choice.reason
    compiler = Compiler()
    fn, again = _choose(model, tmp_path, compiler)
    assert _eager(fn) and compiler.calls == 0 and "failed" in again.reason


def test_short_runs_take_the_device_default_and_resumed_runs_keep_their_choice(tmp_path, monkeypatch):
    model = _model()
    compiler = Compiler()
    monkeypatch.setattr(autocompile, "_time_passes", lambda *a: 0.001)  # a 1 ms step, whatever this box does
    fn, choice = _choose(model, tmp_path, compiler, steps_left=100_000)  # 100 s: can't repay 10 compiles
    assert _eager(fn) and not choice.compiled and "too short" in choice.reason and compiler.calls == 0
    fn, choice = _choose(model, tmp_path, compiler, steps_left=10)  # shorter than one compile, on any device
    assert _eager(fn) and "shorter than a ~30 s compile" in choice.reason and compiler.calls == 0
    assert not (tmp_path / "choices.json").exists()
    fn, choice = _choose(model, tmp_path, compiler, resumed=True)
    assert choice.compiled and compiler.calls == 1 and "as the run was" in choice.reason
    fn, choice = _choose(model, tmp_path, compiler, setting="off")
    assert _eager(fn) and not choice.compiled


def test_the_run_records_its_choice_in_metrics_and_checkpoint(bytes_data, tmp_path):
    cfg = tiny_config(bytes_data, train__max_steps=4, train__ckpt_every=2, train__eval_every=0)
    train(cfg, tmp_path / "run", quiet=True)
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["detail"]["reason"] for e in events if e.get("type") == "compile"][0].startswith("compile auto: eager")
    assert ckpt.read_trainer(ckpt.resolve(tmp_path / "run"))["compiled"] is False


def test_timings_interleave_the_two_ways_and_keep_each_ones_fastest(monkeypatch):
    clock, order = [0.0], []
    durations = {"eager": iter([9, 1.0, 5.0, 0.9, 3.0, 2.0, 8.0]), "compiled": iter([9, 0.5, 4.0, 0.7, 0.6, 6.0])}

    def passes(model, fn, batch, device, n):
        order.append(fn)
        clock[0] += next(durations[fn])
    monkeypatch.setattr(autocompile, "_passes", passes)
    monkeypatch.setattr(autocompile.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(autocompile, "TIMED_PASSES", 5)
    eager_s, compiled_s = autocompile._time_both(_model(), "eager", "compiled", None, torch.device("cpu"))
    assert order == ["eager", "compiled"] + ["eager", "compiled"] * 5  # a warm-up of each, then alternating
    assert (eager_s, compiled_s) == pytest.approx((0.9, 0.5))  # the fastest pass of each, not the median (3.0 and 0.7)


def test_figures_taken_under_load_decide_this_run_only_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(autocompile, "PAYBACK_RUNS", 0)
    monkeypatch.setattr(autocompile, "_load", lambda device: 0.3)  # the matmul rate at 30% of its best here
    _, choice = _choose(_model(), tmp_path, Compiler())
    assert "30% of its best matmul rate" in choice.reason and "not remembered" in choice.reason
    assert choice.figures["load"] == 0.3 and not (tmp_path / "choices.json").exists()


def test_a_remembered_measurement_expires(tmp_path, monkeypatch):
    monkeypatch.setattr(autocompile, "PAYBACK_RUNS", 0)
    model = _model()
    _choose(model, tmp_path, Compiler())
    cache = tmp_path / "choices.json"
    key, fig = next(iter(json.loads(cache.read_text()).items()))
    _, again = _choose(model, tmp_path, Compiler())
    assert f"measurement of {fig['measured']}" in again.reason and "taken again after 7 days" in again.reason
    fig["measured_s"] = time.time() - 8 * 86400
    cache.write_text(json.dumps({key: fig}))
    compiler = Compiler()
    _, fresh = _choose(model, tmp_path, compiler)
    assert compiler.calls == 1 and "measured here" in fresh.reason
