"""`nextoken lab`: every experiment at the smoke budget writes its report (and its exact claims hold exactly),
and the measurements it is built on against hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nextoken.cli import main
from nextoken.config import Config, build_config
from nextoken.eval.measures import calibration, continuation_nll, layer_grad_norms, log_z
from nextoken.lab import available, get
from nextoken.lab.runner import run
from nextoken.model import GPT
from nextoken.training.objective import IGNORE_INDEX, masked_tokens, scheduled_sampling_inputs

# ---- measurements against hand-computed cases ----


def test_ece_of_a_hand_built_case():
    # bin (0.8, 0.9]: confidences 0.9, 0.9, accuracy 1/2 -> |0.5 - 0.9| = 0.4, weight 2/5
    # bin (0.5, 0.6]: confidences 0.6, 0.6, accuracy 1 -> 0.4, weight 2/5
    # bin (0.1, 0.2]: confidence 0.2, accuracy 0 -> 0.2, weight 1/5
    cal = calibration([0.9, 0.9, 0.6, 0.6, 0.2], [1, 0, 1, 1, 0], n_bins=10)
    assert cal["ece"] == pytest.approx(0.4 * 2 / 5 + 0.4 * 2 / 5 + 0.2 / 5, abs=1e-12)
    counts = [b["count"] for b in cal["bins"]]
    assert counts == [0, 1, 0, 0, 0, 2, 0, 0, 2, 0] and sum(counts) == 5
    assert cal["bins"][8]["accuracy"] == 0.5 and cal["bins"][1]["confidence"] == pytest.approx(0.2)


def test_ece_is_zero_when_confidence_matches_accuracy():
    assert calibration([0.75] * 4, [1, 1, 1, 0])["ece"] == pytest.approx(0.0, abs=1e-12)
    assert calibration([1.0, 1.0], [1, 1])["ece"] == 0.0


def test_log_z_of_known_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf, -math.inf]])
    assert log_z(logits).tolist() == pytest.approx([math.log(4.0), math.log(4.0)])


def _model(**kw) -> GPT:
    cfg = Config().model
    cfg.n_layer, cfg.n_head, cfg.d_model, cfg.block_size, cfg.vocab_size = 3, 2, 16, 16, 50
    for k, v in kw.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return GPT(cfg)


def test_layer_grad_norms_add_up_to_the_global_norm():
    model = _model()
    x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    norms = layer_grad_norms(model, x, y)
    assert list(norms) == ["embedding", "block0", "block1", "block2", "head"]
    assert all(p.grad is None for p in model.parameters())  # left as found
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(total, rel=1e-5)


def test_continuation_nll_of_a_uniform_reference_is_log_v():
    model = _model()
    with torch.no_grad():
        model.wte.weight.zero_()
    nll = continuation_nll(model, torch.randint(0, 50, (2, 12)), start=4)
    assert nll.shape == (2, 8) and torch.allclose(nll, torch.full_like(nll, math.log(50)))


def test_masked_tokens_follow_80_10_10():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 99, (64, 256), generator=g)
    inputs, targets = masked_tokens(x, vocab_size=100, rate=0.15, generator=g)
    chosen = targets != IGNORE_INDEX
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(targets[chosen], x[chosen]) and torch.equal(inputs[~chosen], x[~chosen])
    masked = (inputs == 99) & chosen
    kept = (inputs == x) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.02)
    assert kept.sum() / chosen.sum() == pytest.approx(0.1 + 0.1 / 99, abs=0.02)


def test_scheduled_sampling_keeps_the_first_token_and_mixes_the_rest():
    model = _model()
    x = torch.randint(0, 50, (4, 16))
    assert torch.equal(scheduled_sampling_inputs(model, x, 0.0), x)
    g = torch.Generator().manual_seed(0)
    mixed = scheduled_sampling_inputs(model, x, 1.0, generator=g)
    assert torch.equal(mixed[:, 0], x[:, 0]) and not torch.equal(mixed, x)


def test_bidirectional_attention_sees_the_future_and_leaves_the_default_hash():
    causal, bidir = _model(), _model(attention="bidirectional")
    bidir.load_state_dict(causal.state_dict())
    x = torch.randint(0, 50, (1, 8))
    x2 = x.clone()
    x2[0, -1] = (x[0, -1] + 1) % 50
    assert torch.equal(causal(x)[0, 0], causal(x2)[0, 0])
    assert not torch.equal(bidir(x)[0, 0], bidir(x2)[0, 0])
    cfg = Config()
    h = cfg.model_hash()
    cfg.model.attention = "bidirectional"
    assert cfg.model_hash() != h


def test_model_hash_of_the_default_config_is_what_it_was():
    # computed before model.attention, the depth dial and the families' options existed: existing runs keep resuming
    import dataclasses
    import hashlib

    cfg = build_config("tiny")
    later = ("attention", "depth", "aspect_ratio", "rotary_fraction", "n_kv_head", "head_size", "qk_norm", "qkv_bias",
             "gelu", "parallel_residual", "norm_eps", "mlp_hidden")
    fields = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in later}
    assert cfg.model_hash() == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def test_paired_effect_and_its_standard_error_by_hand():
    from nextoken.lab.base import paired, pm, sign

    e = paired([1.0, 2.0, 3.0], [1.5, 2.7, 3.4])  # differences 0.5, 0.7, 0.4: mean 0.5333, sd 0.1528, se 0.0882
    assert e["values"] == pytest.approx([0.5, 0.7, 0.4]) and e["mean"] == pytest.approx(1.6 / 3)
    assert e["se"] == pytest.approx(math.sqrt(((0.5 - 1.6 / 3) ** 2 + (0.7 - 1.6 / 3) ** 2 + (0.4 - 1.6 / 3) ** 2)
                                              / 2 / 3))
    assert sign(e) == 1 and sign(paired([1.5, 2.7, 3.4], [1.0, 2.0, 3.0])) == -1
    assert sign(paired([0.0, 0.0, 0.0], [0.1, -0.1, 0.05])) == 0  # within two standard errors
    assert sign(paired([1.0], [2.0])) == 0 and "± ?" in pm(paired([1.0], [2.0]))  # one seed: no standard error
    assert "over 3 seeds" in pm(e)


def test_lr_sensitivity_of_wortsman_et_al():
    from nextoken.lab.base import lr_sensitivity, trains

    # losses 3, 2, 6 (above the init loss 5: capped), nan (diverged: counts as 5): mean(3, 2, 5, 5) - 2 = 1.75
    assert lr_sensitivity([3.0, 2.0, 6.0, math.nan], initial=5.0) == pytest.approx(1.75)
    assert lr_sensitivity([2.0, 2.0], initial=5.0) == 0.0  # flat: no sensitivity
    assert trains([3.0, 2.05, math.inf, 2.0], best=2.0, within=0.1) == 2


def test_an_interrupted_lab_run_says_to_rerun_the_lab(tmp_path, monkeypatch):
    from nextoken.lab import runner
    from nextoken.training.signals import Interrupted

    def stop(*a, **k):
        raise Interrupted("Ctrl-C at step 3; saved ckpt; continue with nextoken train --out x --resume")

    monkeypatch.setattr(runner, "train_variant", stop)
    with pytest.raises(Interrupted) as e:
        run("weight-tying", "smoke", tmp_path / "wt", log=lambda m: None)
    assert "Ctrl-C at step 3" in str(e.value) and "--resume" not in str(e.value)
    assert f"nextoken lab run weight-tying --budget smoke --out {tmp_path / 'wt'}" in str(e.value)


# ---- the experiments at the smoke budget ----


def test_lab_lists_its_experiments(capsys):
    assert main(["lab", "list", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)["experiments"]]
    assert names == available() and len(names) == 11


def test_modular_examples_train_and_evaluate_on_the_answer_only(tmp_path):
    from conftest import tiny_config

    from nextoken.data.loader import ExampleSampler, TokenData, eval_windows
    from nextoken.data.synthetic import modular_addition
    from nextoken.training.loop import train

    data = modular_addition(tmp_path / "mod7", p=7, train_fraction=0.5)
    val = TokenData(data, "val")
    for x, y in eval_windows(val, 5, 0):  # [a + b =] -> [+ b = c]: only c counts, and it is (a + b) mod 7
        assert y.tolist()[:3] == [IGNORE_INDEX] * 3 and y[3] == (x[0] + x[2]) % 7 and y[4] == IGNORE_INDEX
    n_train = TokenData(data, "train").n_tokens // 6
    assert n_train + val.n_tokens // 6 == 49 and n_train in (24, 25)
    s = ExampleSampler(TokenData(data, "train"), 5, 0)
    x, _ = s.batch(3, n_train)
    assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, s.rows[:, :-1].tolist()))  # the full batch
    cfg = tiny_config(data, model__block_size=5, train__batch_size=n_train, train__max_steps=3)
    res = train(cfg, tmp_path / "run", quiet=True)
    assert res["eval_tokens"] == val.n_tokens // 6  # one answer per equation
    with pytest.raises(Exception, match="block_size 5"):
        ExampleSampler(TokenData(data, "train"), 8, 0)


@pytest.mark.parametrize("name", ["perplexity-bounds", "label-smoothing", "weight-tying", "z-loss", "spike",
                                  "warmup", "chinchilla", "grokking", "mlm", "teacher-forcing",
                                  "mixture"])
def test_experiment_at_smoke_writes_its_report(name, tmp_path):
    out = tmp_path / name
    figures = run(name, "smoke", out, log=lambda m: None)
    assert figures["verdict"] in ("held", "did not hold", "inconclusive") and figures["why"]
    for f in ("report.md", "figure.png", "figures.json", "lab.json"):
        assert (out / f).is_file(), f
    text = (out / "report.md").read_text()
    assert get(name).claim in text and f"**Verdict: {figures['verdict']}.**" in text
    if name == "perplexity-bounds":  # the exact claims, exactly
        assert figures["uniform_ppl"] == pytest.approx(figures["vocab_size"], rel=1e-5)
        assert len({r["val_loss"] for r in figures["temperatures"]} | {figures["trained_loss"]}) == 1
        temps = [r["tempered_ce"] for r in figures["temperatures"]]
        assert temps[1] == pytest.approx(figures["trained_loss"], rel=1e-5) and temps[0] != temps[2]
    if name == "mixture":  # each run trained its sources at their shares, and evaluated each of them
        for v in figures["variants"].values():
            assert set(v["val_loss"]) == {"code", "prose"}
            assert v["tokens_by_source"]["prose"] / v["tokens"] == pytest.approx(v["shares"]["prose"], abs=0.05)


def test_rerun_reuses_finished_runs_and_report_rewrites(tmp_path, capsys):
    out = tmp_path / "wt"
    first = run("weight-tying", "smoke", out, log=lambda m: None)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")}
    logs = []
    again = run("weight-tying", "smoke", out, log=logs.append)
    assert all("done" in m for m in logs) and len(logs) == 4  # 2 arms x 2 seeds
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert again["variants"]["tied-s1337"]["val_loss"] == first["variants"]["tied-s1337"]["val_loss"]
    (out / "report.md").unlink()
    assert main(["lab", "report", str(out)]) == 0 and (out / "report.md").is_file()
    assert main(["lab", "run", "spike", "--budget", "smoke", "--out", str(out)]) != 0
    assert "holds weight-tying" in capsys.readouterr().err


def test_rerun_resumes_an_unfinished_run(tmp_path):
    import shutil

    out = tmp_path / "pb"
    run("perplexity-bounds", "smoke", out, log=lambda m: None)
    run_dir = out / "runs" / "periodic"
    from nextoken.run import Run

    ckpts = Run(run_dir).checkpoints()
    shutil.rmtree(ckpts[-1])  # as if killed after its third checkpoint
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(r for r in lines if '"kind": "eval"' not in r) + "\n")
    logs = []
    run("perplexity-bounds", "smoke", out, log=logs.append)
    assert any("resuming" in m for m in logs)
    assert Run(run_dir).events[-1]["type"] == "checkpoint"
    assert any(e["type"] == "resume" for e in Run(run_dir).events)
