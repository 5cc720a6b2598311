"""Published laws, FLOP accounting and shapes: the paper's own numbers, and PyTorch's FLOP counter."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from nextoken.config import ModelConfig
from nextoken.errors import NextokenError
from nextoken.model.counting import flops_6nd, measured_flops_per_token, param_counts, training_flops_per_token
from nextoken.scaling.laws import CHINCHILLA, CHINCHILLA_TABLE3, EPOCH, KAPLAN, LAWS
from nextoken.scaling.plan import format_plan, load_fit, plan
from nextoken.scaling.shapes import shape_for_params


def test_gpt3_training_compute():
    # Brown et al. 2020, Table D.1: 174.6B parameters on 300B tokens, 3.14e23 FLOPs.
    assert flops_6nd(174.6e9, 300e9) == pytest.approx(3.14e23, rel=0.005)


@pytest.mark.parametrize("params,flops,tokens", CHINCHILLA_TABLE3)
def test_plan_reproduces_chinchilla_table3(params, flops, tokens):
    by_flops = plan("chinchilla-table3", flops=flops)
    assert by_flops["params"] == pytest.approx(params, rel=0.06)
    assert by_flops["tokens"] == pytest.approx(tokens, rel=0.06)
    by_params = plan("chinchilla-table3", params=params)
    assert by_params["flops"] == pytest.approx(flops, rel=0.1)
    assert by_params["tokens_per_param"] == pytest.approx(tokens / params, rel=0.1)


def test_chinchilla_approach3_exponents_and_closed_form():
    # Hoffmann et al. 2022, Table 2, approach 3: a = 0.46, b = 0.54.
    assert CHINCHILLA.a == pytest.approx(0.46, abs=0.005)
    assert CHINCHILLA.b == pytest.approx(0.54, abs=0.005)
    C = 5.76e23  # Gopher's budget
    N, D = CHINCHILLA.optimal(C)
    assert 6 * N * D == pytest.approx(C, rel=1e-9)
    # the closed form (eq. 4) is the minimum of L along 6ND = C
    for f in (0.9, 1.1):
        assert CHINCHILLA.loss(N * f, D / f) > CHINCHILLA.loss(N, D)
    assert EPOCH.a == pytest.approx(0.51, abs=0.01)  # Besiroglu et al. 2024: a and b near 0.5, as approaches 1-2


def test_kaplan_frontier_and_loss():
    N, D = KAPLAN.optimal(1e21)
    assert 6 * N * D == pytest.approx(1e21)
    N2, _ = KAPLAN.optimal(1e22)
    assert math.log10(N2 / N) == pytest.approx(0.73, abs=1e-6)
    # eq. 1.5 reduces to eq. 1.1 when data is unlimited
    assert KAPLAN.loss(1e9, 1e30) == pytest.approx((8.8e13 / 1e9) ** 0.076, rel=1e-6)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_plan_round_trips(name):
    a = plan(name, flops=1e21)
    b = plan(name, params=a["params"])
    c = plan(name, tokens=a["tokens"])
    for other in (b, c):
        assert other["flops"] == pytest.approx(1e21, rel=1e-3)
    assert set(a) >= {"params", "tokens", "flops", "loss", "tokens_per_param", "shape"}


@pytest.mark.parametrize("kw", [{}, {"mlp": "swiglu", "pos": "rope", "tie_embeddings": False, "bias": True},
                                {"norm": "post", "norm_type": "rmsnorm", "n_layer": 3},
                                {"pos": "rope", "n_head": 4, "n_kv_head": 1, "head_size": 32, "mlp_hidden": 100,
                                 "qk_norm": True, "qkv_bias": True}])
def test_exact_flops_match_pytorch_flop_counter(kw):
    cfg = ModelConfig(**{"n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 64, "vocab_size": 300, **kw})
    exact, measured = training_flops_per_token(cfg), measured_flops_per_token(cfg)
    assert exact == pytest.approx(measured, rel=0.05)


def test_6nd_is_close_to_exact_for_large_models():
    cfg = shape_for_params(1e9, ModelConfig(vocab_size=50257, block_size=2048))
    ratio = training_flops_per_token(cfg) / (6 * param_counts(cfg).total)
    # the attention term 12·L·D·T over 6N ≈ 6·12·L·D² is about T / (6 D)
    assert 1.0 < ratio < 1 + cfg.block_size / (6 * cfg.d_model) + 0.02


@pytest.mark.parametrize("target", [3e4, 1e5, 1e6, 1.3e7, 1e8, 7e10])
def test_shape_hits_the_target_with_a_sane_aspect_ratio(target):
    cfg = shape_for_params(target, ModelConfig(vocab_size=1024))
    n = param_counts(cfg).non_embedding
    assert n == pytest.approx(target, rel=0.2)
    assert cfg.d_model % cfg.n_head == 0
    if target >= 1e6:
        assert 20 <= cfg.d_model / cfg.n_layer <= 200  # Kaplan et al. 2020, Fig. 5
        assert cfg.d_model // cfg.n_head in range(32, 129)


# ---- plan from two of C, N, D (issue 15, fault 6) --------------------------------------------------------

# Chinchilla approach 3 with the constants of the paper's TeX source, written out here (not read from laws.py)
# so that the figures below are checked by hand: L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2).
E, A, B, ALPHA, BETA = math.exp(0.5267228), math.exp(6.0073404), math.exp(6.0179186), 0.33917084, 0.2849083


def _by_hand(N: float, D: float) -> dict:
    C = 6 * N * D
    G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))  # eq. 4
    n_opt, d_opt = G * (C / 6) ** (BETA / (ALPHA + BETA)), (C / 6) ** (ALPHA / (ALPHA + BETA)) / G
    # along the optimum both terms fall as (C/6)^-gamma: L_opt(C) = E + K (C/6)^-gamma, so C is solvable for a loss
    gamma, K = ALPHA * BETA / (ALPHA + BETA), A * G**-ALPHA + B * G**BETA
    loss = E + A / N**ALPHA + B / D**BETA
    return {"flops": C, "loss": loss, "n_opt": n_opt, "d_opt": d_opt,
            "loss_opt": E + A / n_opt**ALPHA + B / d_opt**BETA, "same": 6 * ((loss - E) / K) ** (-1 / gamma)}


# (N, D; and what `plan` prints: 6ND, tokens per parameter, loss, optimal N, D, loss at the same C, and the
# compute at which the compute-optimal model reaches the same loss), approach 3 with the unrounded constants.
MODELS = {
    "gpt3": (174.6e9, 300e9, 3.143e23, 1.718, 1.9765, 3.061e10, 1.711e12, 1.9405, 1.307e23),  # Brown et al. 2020
    "llama2-70b": (70e9, 2e12, 8.4e23, 28.57, 1.9071, 4.795e10, 2.920e12, 1.9056, 8.036e23),  # Touvron et al. 2023
    "llama3-8b": (8e9, 15e12, 7.2e23, 1875.0, 1.9436, 4.469e10, 2.685e12, 1.9108, 2.901e23),  # Llama 3 (2024)
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_plan_of_a_published_allocation(name):
    N, D, C, tpp, loss, n_opt, d_opt, loss_opt, same = MODELS[name]
    res = plan("chinchilla", params=N, tokens=D)
    hand = _by_hand(N, D)
    assert res["flops"] == pytest.approx(hand["flops"], rel=1e-12) and res["flops"] == pytest.approx(C, rel=5e-4)
    assert res["params"] == N and res["tokens"] == D and res["tokens_per_param"] == pytest.approx(tpp, rel=1e-3)
    assert res["loss"] == pytest.approx(hand["loss"], rel=1e-12) and res["loss"] == pytest.approx(loss, abs=5e-5)
    opt = res["optimal"]
    assert opt["params"] == pytest.approx(hand["n_opt"], rel=1e-9) and opt["params"] == pytest.approx(n_opt, rel=1e-3)
    assert opt["tokens"] == pytest.approx(hand["d_opt"], rel=1e-9) and opt["tokens"] == pytest.approx(d_opt, rel=1e-3)
    assert opt["loss"] == pytest.approx(hand["loss_opt"], rel=1e-12)
    assert opt["loss"] == pytest.approx(loss_opt, abs=5e-5)
    assert opt["tokens_per_param"] == pytest.approx(hand["d_opt"] / hand["n_opt"], rel=1e-9)
    assert res["flops_for_same_loss"] == pytest.approx(hand["same"], rel=1e-6)
    assert res["flops_for_same_loss"] == pytest.approx(same, rel=1e-3)
    assert {"params", "tokens", "flops", "loss", "tokens_per_param", "shape"} <= set(res)  # the contract's keys


def test_llama3_8b_over_training_trade():
    # 1,875 tokens per parameter where approach 3's optimum at 7.2e23 FLOPs is about 60: a model 5.6x smaller
    # (cheaper to serve) for a loss 0.033 nats higher, which a compute-optimal model reaches with 40% of the FLOPs.
    res = plan("chinchilla", params=8e9, tokens=15e12)
    assert res["tokens_per_param"] == pytest.approx(1875)
    assert 55 < res["optimal"]["tokens_per_param"] < 65
    assert res["optimal"]["params"] / 8e9 == pytest.approx(5.59, abs=0.01)
    assert res["loss"] - res["optimal"]["loss"] == pytest.approx(0.033, abs=0.001)
    assert res["flops_for_same_loss"] / res["flops"] == pytest.approx(0.403, abs=0.001)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_any_two_of_flops_params_tokens_give_one_plan(name):
    N, D = 7e9, 1e12
    by_nd = plan(name, params=N, tokens=D)
    C = by_nd["flops"]
    assert C == pytest.approx(6 * N * D, rel=1e-12)
    for kw in ({"flops": C, "params": N}, {"flops": C, "tokens": D}, {"flops": C * 1.01, "params": N, "tokens": D}):
        other = plan(name, **kw)
        for k in ("params", "tokens", "flops", "loss", "flops_for_same_loss"):
            assert other[k] == pytest.approx(by_nd[k], rel=1e-9), (kw, k)
    if name in ("chinchilla", "epoch"):  # eq. 4 minimizes L(N, D) on 6ND = C: the optimum is no worse, and cheaper
        assert by_nd["optimal"]["loss"] <= by_nd["loss"] and by_nd["flops_for_same_loss"] <= C * (1 + 1e-9)
    # a compute-optimal plan is its own optimum and needs its own budget for its own loss
    one = plan(name, flops=C)
    assert one["optimal"]["params"] == pytest.approx(one["params"], rel=1e-9)
    assert one["flops_for_same_loss"] == pytest.approx(C, rel=1e-6)
    assert plan(name, params=one["params"], tokens=one["tokens"])["flops_for_same_loss"] == pytest.approx(C, rel=1e-6)


@pytest.mark.parametrize("kw,needle", [
    ({}, "none given"),
    ({"flops": 1e24, "params": 174.6e9, "tokens": 300e9}, "disagrees"),
    ({"flops": 3.0e23, "params": 174.6e9, "tokens": 300e9}, None),  # within 5%: accepted
])
def test_plan_none_or_three_that_disagree_is_one_line(kw, needle):
    if needle is None:
        assert plan("chinchilla", **kw)["flops"] == pytest.approx(6 * 174.6e9 * 300e9)
        return
    with pytest.raises(NextokenError) as e:
        plan("chinchilla", **kw)
    assert needle in str(e.value) and "\n" not in str(e.value) and "--flops" in str(e.value)


def test_format_plan_text_and_cli(capsys):
    from nextoken.cli import main

    text = format_plan(plan("chinchilla", params=174.6e9, tokens=300e9))
    assert "3.143e+23 FLOPs" in text and "1.7 tokens per parameter" in text
    assert "optimal" in text and "3.061e+10" in text and "1.711e+12" in text and "1.9405" in text
    assert "1.307e+23 FLOPs (0.42x" in text
    assert main(["plan", "--params", "174.6e9", "--tokens", "300e9"]) == 0
    assert capsys.readouterr().err.strip() == text
    assert main(["plan", "--params", "174.6e9", "--tokens", "300e9", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    contract = {"params", "tokens", "flops", "loss", "tokens_per_param", "shape"}
    assert contract | {"optimal", "flops_for_same_loss"} <= set(res)
    assert "optimal" not in format_plan(plan("chinchilla", flops=5.76e23))  # a compute-optimal plan: no comparison
    # chinchilla-table3 allocates by approach 1 (~20 tokens per parameter) and predicts with approach 3, so an
    # allocation nearer approach 3's own optimum (Llama-2 70B's 28.6) beats it, and the text says so
    llama2 = plan("chinchilla-table3", params=70e9, tokens=2e12)
    assert llama2["optimal"]["loss"] > llama2["loss"] and llama2["flops_for_same_loss"] > llama2["flops"]
    assert "beats the law's own allocation" in format_plan(llama2)
    assert "beats" not in text


def _sweep_fit(tmp_path: Path) -> str:
    """A fit.json as `nextoken fit SWEEP` writes it: constants and the sweep's model (exact FLOPs per shape)."""
    model = dataclasses.asdict(ModelConfig(n_layer=4, n_head=4, d_model=128, block_size=128, vocab_size=259))
    (tmp_path / "fit.json").write_text(json.dumps({**EPOCH.to_dict(), "model": model}))
    return str(tmp_path)


def test_plan_fit_with_two_given_counts_exact_flops(tmp_path):
    fit = _sweep_fit(tmp_path)
    law = load_fit(fit)
    nd = plan(fit=fit, params=2e6, tokens=1e8)
    cfg = shape_for_params(2e6, law.base)
    fpt = training_flops_per_token(cfg)
    assert nd["flops_convention"] == "exact" and nd["params"] == param_counts(cfg).non_embedding
    assert nd["tokens"] == 1e8 and nd["flops"] == pytest.approx(1e8 * fpt)
    assert nd["loss"] == pytest.approx(float(EPOCH.loss(nd["params"], 1e8)))
    cn = plan(fit=fit, flops=nd["flops"], params=2e6)
    assert cn["tokens"] == pytest.approx(1e8) and cn["params"] == nd["params"]
    cd = plan(fit=fit, flops=nd["flops"], tokens=1e8)  # the shape whose FLOPs per token are nearest C / D
    assert cd["params"] == nd["params"] and cd["tokens"] == pytest.approx(1e8)
    assert nd["optimal"]["loss"] <= nd["loss"] and nd["flops_for_same_loss"] <= nd["flops"] * 1.001
    assert "optimal" in format_plan(nd) and "params 2.075e+06 where 2e+06 was given" in format_plan(nd)
    off = plan(fit=fit, flops=1.2e13, tokens=1e8)  # 1.2e5 FLOPs per token: the nearest shape trains at 1.109e5
    assert off["flops"] == 1.2e13 and "tokens 1.082e+08 where 1e+08 was given" in format_plan(off)
    with pytest.raises(NextokenError, match="FLOPs per token"):  # fewer FLOPs per token than any shape needs
        plan(fit=fit, flops=1e9, tokens=1e8)
