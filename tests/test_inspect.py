"""nextoken.inspect: attention recomputed from the model's own queries and keys, the logit lens, teacher forcing
and target scoring; `nextoken inspect --json`. Hooks read, never change: the logits are the model's own."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config

from nextoken.cli import main
from nextoken.config import ModelConfig
from nextoken.inspect import score_continuation, trace
from nextoken.model.gpt import GPT

IDS = [3, 17, 5, 9, 9, 2, 40, 11]


def model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=3, n_head=2, d_model=32, block_size=16, vocab_size=50, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("kw", [{}, {"pos": "rope"}, {"norm": "post"}, {"attention": "bidirectional"},
                                {"pos": "rope", "n_kv_head": 1, "qk_norm": True}])
def test_attention_rows_sum_to_one_causal_and_reproduce_the_module(kw):
    m = model(**kw)
    t = trace(m, IDS)
    a = t["attention"]
    assert a.shape == (3, 2, len(IDS), len(IDS))
    assert torch.allclose(a.sum(-1), torch.ones(3, 2, len(IDS)), atol=1e-6)
    if kw.get("attention") == "bidirectional":
        assert a.triu(1).sum() > 0.1  # every position sees both sides
    else:
        assert a.triu(1).abs().max() == 0  # causal: no weight on a later key
    # probabilities @ values through the output projection is the attention module's own output
    got = {}
    attn = m.blocks[1].attn
    h1 = attn.register_forward_pre_hook(lambda mod, args: got.setdefault("in", args))
    h2 = attn.register_forward_hook(lambda mod, args, out: got.setdefault("out", out))
    with torch.no_grad():
        m(torch.tensor([IDS]))
    h1.remove(), h2.remove()
    _, _, v = attn.qkv_heads(got["in"][0], got["in"][1])
    v = v.repeat_interleave(2 // v.size(1), dim=1)  # grouped-query attention: key/value heads shared
    y = (a[1][None] @ v).transpose(1, 2).reshape(1, len(IDS), 32)
    assert torch.allclose(attn.proj(y), got["out"], atol=1e-5)


def test_logit_lens_last_layer_is_the_models_distribution_and_hooks_change_nothing():
    m = model()
    with torch.no_grad():
        ref = m(torch.tensor([IDS]))[0]
    t = trace(m, IDS)
    assert torch.equal(t["logits"], ref)  # the hooks only read
    assert t["lens"].shape == (4, len(IDS), 50)  # the embedding and 3 layers
    assert (t["lens"][-1] - ref.log_softmax(-1)).abs().max() < 1e-5
    assert (t["lens"][0] - t["lens"][-1]).abs().max() > 1e-3  # earlier layers predict otherwise
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())  # all removed


def test_score_continuation_is_teacher_forced_cross_entropy():
    m = model()
    cont = [7, 8, 9]
    nl = score_continuation(m, IDS, cont)
    with torch.no_grad():
        logp = m(torch.tensor([IDS + cont]))[0].log_softmax(-1)
    ref = [-float(logp[len(IDS) - 1 + k, c]) for k, c in enumerate(cont)]
    assert nl == pytest.approx(ref, abs=1e-5)


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, bpe_data):
    from nextoken.api import train

    out = tmp_path_factory.mktemp("inspect") / "bpe"
    train(tiny_config(bpe_data, train__max_steps=10), out, quiet=True)
    return out


def test_inspect_cli_json_and_multi_token_target(bpe_run, capsys):
    code = main(["inspect", str(bpe_run), "--prompt", "def alpha(beta):\n    return", "--target", "beta_gamma",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["checkpoints"] and out["run"] == str(bpe_run)  # as serve's /api/inspect has them
    T = len(out["tokens"])
    assert len(out["embedding_norm"]) == T and len(out["residual_norm"]) == 2
    assert len(out["attention"]) == 2 and len(out["attention"][0][0]) == T
    assert [r["name"] for r in out["lens"]] == ["embedding", "layer 1", "layer 2"]
    tf = out["teacher_forcing"]
    assert len(tf["positions"]) == T  # T - 1 prompt positions and the target's first token
    assert tf["ppl"] == pytest.approx(math.exp(tf["loss"]))
    tgt = out["target"]
    assert tgt["tokens_in_target"] == len(tgt["tokens"]) > 1  # every token scored, not only the first
    assert tgt["neg_log_p"] == pytest.approx(sum(t["neg_log_p"] for t in tgt["tokens"]))
    assert "".join(t["text"] for t in tgt["with_space"]["tokens"]) == " beta_gamma"  # BPE glues the space
    code = main(["inspect", str(bpe_run), "--prompt", "x = 1"])
    assert code == 0 and "logit lens" in capsys.readouterr().err


def test_plot_perplexity_axis_has_ticks_over_the_whole_range():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nextoken.plot import _exp, _log, _ppl_ticks

    fig, ax = plt.subplots()
    ax.set_ylim(1.0, 7.0)  # perplexity 2.7 to 1100
    ppl = ax.secondary_yaxis("right", functions=(_exp, _log))
    _ppl_ticks(ppl, ax.get_ylim())
    ticks = ppl.get_yticks()
    plt.close(fig)
    assert min(ticks) <= 5 and any(10 <= t <= 100 for t in ticks) and max(ticks) >= 500


def test_hooks_record_only_their_own_thread():
    """A server runs other requests through the same model while one is inspected: the capture ignores them."""
    import threading

    m = model()
    ref = trace(m, IDS)
    stop, errors = threading.Event(), []

    def other():
        with torch.no_grad():
            while not stop.is_set():
                m(torch.tensor([[1, 2, 3]]))

    threads = [threading.Thread(target=other) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            got = trace(m, IDS)
            if not torch.equal(got["attention"], ref["attention"]) or not torch.equal(got["lens"], ref["lens"]):
                errors.append("mixed")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
