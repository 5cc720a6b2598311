"""The depth dial: one number derives the shape, learning rates, batch and token budget (scaling/shapes.py)."""

from __future__ import annotations

import math

import pytest

from nextoken.config import Config, ModelConfig, build_config
from nextoken.errors import ConfigError
from nextoken.model.counting import param_counts, training_flops_per_token
from nextoken.scaling.plan import plan
from nextoken.scaling.shapes import (
    MAX_MICRO_BATCH,
    deepseek_batch_tokens,
    deepseek_lr,
    depth_dial,
    depth_for_params,
    dial_shape,
    shape_for_params,
)
from nextoken.scaling.sweep import plan_sweep


def test_dial_shape_follows_the_rule():
    gpt2 = dial_shape(12, ModelConfig(vocab_size=50304))
    assert (gpt2.n_layer, gpt2.d_model, gpt2.n_head, gpt2.head_dim, gpt2.block_size) == (12, 768, 12, 64, 1024)
    wide = dial_shape(40, ModelConfig())
    assert (wide.d_model, wide.head_dim, wide.n_head) == (2560, 128, 20)  # 128-wide heads from d_model 2048
    for depth in range(1, 80):
        m = dial_shape(depth, ModelConfig(aspect_ratio=48))
        assert m.n_layer == depth and m.d_model % m.n_head == 0 and m.depth == depth
        assert abs(m.d_model - 48 * depth) <= m.head_dim / 2 or m.d_model < 4 * 64
        assert 64 <= m.block_size <= 8192 and m.block_size & (m.block_size - 1) == 0
    narrow = dial_shape(3, ModelConfig(aspect_ratio=12, block_size=256), context=False)
    assert (narrow.d_model, narrow.n_head, narrow.block_size) == (36, 1, 256)
    with pytest.raises(ValueError):
        dial_shape(0, ModelConfig())


def test_depth_for_params_inverts_the_dial():
    base = ModelConfig(vocab_size=4096)
    for depth in (2, 5, 12, 30):
        n = param_counts(dial_shape(depth, base, context=False)).non_embedding
        assert depth_for_params(n, base) == depth
        assert depth_for_params(n * 1.03, base) == depth


def test_depth_dial_derives_budget_batch_and_learning_rates():
    run = depth_dial(12, ModelConfig(vocab_size=50304, pos="rope"))
    tokens_per_step = run.batch_size * run.grad_accum * run.model.block_size
    assert run.tokens == run.max_steps * tokens_per_step
    assert abs(run.tokens / (20 * run.params) - 1) < 0.5 * tokens_per_step / run.tokens + 1e-9
    assert run.flops == pytest.approx(run.tokens * training_flops_per_token(run.model))
    seqs = run.batch_size * run.grad_accum
    assert seqs & (seqs - 1) == 0 and run.batch_size <= MAX_MICRO_BATCH
    # B_opt within a factor sqrt(2) (rounding to a power of two of sequences); the LR is DeepSeek's at C
    c = 20 * run.params * training_flops_per_token(run.model)
    assert abs(math.log2(tokens_per_step / deepseek_batch_tokens(c))) <= 0.5 + 1e-9
    assert run.lr == pytest.approx(deepseek_lr(c))
    assert run.muon_lr == 0.02
    # bigger models: smaller AdamW LR, bigger batches, more tokens
    small, big = depth_dial(6, ModelConfig()), depth_dial(24, ModelConfig())
    assert big.lr < small.lr and big.tokens > small.tokens
    assert big.batch_size * big.grad_accum * big.model.block_size > small.batch_size * small.grad_accum * \
        small.model.block_size


def test_build_config_applies_the_dial_under_explicit_fields():
    # tiny is itself the dial at depth 4, aspect ratio 32, with its own pins
    tiny = build_config("tiny")
    assert (tiny.model.depth, tiny.model.n_layer, tiny.model.d_model, tiny.model.n_head) == (4, 4, 128, 2)
    assert (tiny.train.max_steps, tiny.optim.name, tiny.optim.muon_lr) == (1400, "muon", 0.04)
    cfg = build_config("tiny", None, [("model.depth", "6")])
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.block_size) == (6, 192, 3, 256)
    assert cfg.model.pos == "rope" and cfg.optim.name == "muon"  # the preset's other choices stay
    run = depth_dial(6, ModelConfig(vocab_size=4096, pos="rope", aspect_ratio=32))
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.optim.lr, cfg.optim.muon_lr) == (
        run.max_steps, run.batch_size, run.lr, 0.02)  # the dial's, not tiny's pins
    assert cfg.model.vocab_size == 0  # still taken from the data
    wide = build_config("tiny", None, [("model.depth", "6"), ("model.aspect_ratio", "64")])
    assert (wide.model.d_model, wide.model.n_head, wide.model.block_size) == (384, 6, 512)
    pinned = build_config("tiny", None, [("model.d_model", "256"), ("model.depth", "6"),
                                         ("train.max_steps", "10"), ("optim.lr", "1e-3")])
    assert (pinned.model.n_layer, pinned.model.d_model, pinned.model.n_head) == (6, 256, 4)  # heads follow
    assert (pinned.train.max_steps, pinned.optim.lr) == (10, 1e-3)
    plain = build_config(None, None, [("model.depth", "2")])
    assert (plain.model.n_layer, plain.model.d_model, plain.optim.name) == (2, 128, "adamw")
    for bad in ("-1", "x"):
        with pytest.raises(ConfigError):
            build_config("tiny", None, [("model.depth", bad)])


def test_dial_fields_do_not_change_the_model_hash():
    a, b = Config(), Config()
    b.model.depth, b.model.aspect_ratio = 4, 32
    assert a.model_hash() == b.model_hash()


def test_plan_proposes_dial_shapes_for_big_models():
    res = plan("chinchilla", params=175e9, tokens=300e9)
    s = res["shape"]
    assert s["d_model"] % s["n_head"] == 0 and s["d_model"] // s["n_head"] == 128
    assert s["block_size"] == 8192 and s["n_layer"] * 64 - 64 <= s["d_model"] <= s["n_layer"] * 64 + 64
    assert abs(s["params_non_embedding"] / 175e9 - 1) < 0.05
    small = plan("chinchilla", params=124e6)["shape"]
    assert small["d_model"] // small["n_head"] == 64 and small["block_size"] == 1024


def test_a_dial_sweep_moves_only_the_depth(bytes_data):
    cfg = build_config("scaling", None, [("model.aspect_ratio", "12"), ("model.block_size", "32")])
    cfg.model.vocab_size, cfg.model.depth = 260, 1
    specs = plan_sweep(cfg, [3e11, 3e12], spread=30, tokens_per_param=150, dial=True)
    for budget in (3e11, 3e12):
        depths = sorted(s.n_layer for s in specs if s.budget == budget)
        assert len(depths) >= 3 and depths == list(range(depths[0], depths[0] + len(depths))) and depths[0] >= 2
    assert all(s.d_model == 12 * s.n_layer for s in specs)
    # a base of the dial's family shapes by the dial: what fit and plan use for a dial sweep
    m = shape_for_params(100_000, cfg.model)
    assert m.d_model == 12 * m.n_layer and m.block_size == 32


def test_the_dial_derives_from_the_config_as_given():
    # the vocabulary (and anything else the FLOPs depend on) is the one the flags set, not the preset's
    cfg = build_config("tiny", None, [("model.depth", "2"), ("model.aspect_ratio", "64"),
                                      ("model.vocab_size", "50257")])
    run = depth_dial(2, ModelConfig(vocab_size=50257, pos="rope"))
    assert (cfg.train.max_steps, cfg.train.batch_size * cfg.train.grad_accum, cfg.optim.lr) == (
        run.max_steps, run.batch_size * run.grad_accum, run.lr)
    assert cfg.model.vocab_size == 50257


@pytest.mark.parametrize("flags", [["--model.aspect_ratio", "0"], ["--model.aspect_ratio", "3"],
                                   ["--model.aspect_ratio", "100000"], ["--model.depth", "-2"]])
def test_bad_dial_values_are_one_line_errors(flags, capsys):
    from nextoken.cli import main

    assert main(["train", "--model.depth", "4", *flags, "--dry-run"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0]
