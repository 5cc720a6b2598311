import json
import shutil

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from nextoken.cli import main
from nextoken.config import build_config
from nextoken.errors import ConfigError
from nextoken.training.loop import train


def weights(run):
    ckpt = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / ckpt / "model.safetensors"))


def test_resume_is_bit_identical_to_an_uninterrupted_run(bytes_data, tmp_path):
    cfg = dict(model__dropout=0.1, train__ckpt_every=7, train__keep=5)
    train(tiny_config(bytes_data, **cfg), tmp_path / "full", quiet=True)
    # the same run, "crashed" after its step-7 checkpoint: later checkpoints gone, latest at step 7
    split = tmp_path / "split"
    train(tiny_config(bytes_data, **cfg), split, quiet=True)
    for name in ("step_00000014", "step_00000020"):
        shutil.rmtree(split / "checkpoints" / name)
    (split / "checkpoints" / "latest").write_text("step_00000007\n")
    (split / "metrics.jsonl").write_text("")
    train(tiny_config(bytes_data, **cfg), split, resume=True, quiet=True)
    a, b = weights(tmp_path / "full"), weights(split)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["type"] == "resume" and [r["step"] for r in rows if r["kind"] == "train"][0] == 8


def test_same_seed_same_losses(bytes_data, tmp_path):
    losses = []
    for name in ("a", "b"):
        train(tiny_config(bytes_data), tmp_path / name, quiet=True)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in rows if r["kind"] in ("train", "eval")])
    assert losses[0] == losses[1]


def test_checkpoints_keep_the_last_k(bytes_data, tmp_path):
    train(tiny_config(bytes_data, train__ckpt_every=4, train__keep=2), tmp_path / "r", quiet=True)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step_*"))
    assert names == ["step_00000016", "step_00000020"]
    files = {p.name for p in (tmp_path / "r" / "checkpoints" / "step_00000020").iterdir()}
    assert files == {"model.safetensors", "state.safetensors", "trainer.json"}


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_eval_sample_next_plot(bytes_data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--model.n_layer", "1", "--model.d_model", "32", "--model.n_head", "2", "--model.block_size", "32",
             "--train.max_steps", "12", "--train.batch_size", "4", "--optim.warmup_steps", "2",
             "--train.eval_tokens", "1024", "--log.sample_tokens", "10", "--log.progress", "off"]
    code, out, err = run_cli(["train", "--data", bytes_data, "--out", run, "--json", *flags], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert {"loss", "ppl", "bits_per_token", "bits_per_byte", "checkpoint"} <= set(res)

    code, out, err = run_cli(["eval", run, "--json", "--tokens", "1024"], capsys)
    ev = json.loads(out)
    assert code == 0 and ev["ppl"] == pytest.approx(2.718281828 ** ev["loss"])
    assert ev["bits_per_token"] == pytest.approx(ev["loss"] / 0.6931471805599453)

    code, out, _ = run_cli(["sample", run, "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0"], capsys)
    code2, out2, _ = run_cli(["sample", run, "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0"],
                             capsys)
    assert code == 0 and out.startswith("def ") and out == out2  # greedy is deterministic

    code, out, _ = run_cli(["next", run, "--prompt", "for ", "--top", "5", "--json"], capsys)
    dist = json.loads(out)
    assert code == 0 and len(dist["top"]) == 5
    assert dist["top"][0]["prob"] >= dist["top"][-1]["prob"]
    assert dist["effective_choices"] == pytest.approx(2.718281828 ** dist["entropy_nats"])
    hot = json.loads(run_cli(["next", run, "--prompt", "for ", "--temperature", "3", "--json"], capsys)[1])
    assert hot["entropy_nats"] > dist["entropy_nats"]  # temperature flattens the distribution

    code, _, err = run_cli(["plot", run, "--out", tmp_path / "p.png"], capsys)
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 10_000


def test_run_dir_with_another_run_is_refused(bytes_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(tiny_config(bytes_data, train__max_steps=2), run, quiet=True)
    before = (run / "metrics.jsonl").read_bytes()
    code, _, err = run_cli(["train", "--data", bytes_data, "--out", run, "--train.max_steps", "2"], capsys)
    assert code != 0 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    assert (run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("flags, message", [
    (["--optim.lr", "-1"], "optim.lr must be positive"),
    (["--model.n_layr", "3"], "unknown config field model.n_layer"[:28]),
    (["--train.batch_size", "many"], "not a valid int"),
    (["--train.batch_size", "0"], "train.batch_size must be >= 1"),
    (["--preset", "huge"], "unknown preset"),
    (["--model.norm", "middle"], "model.norm must be one of"),
])
def test_config_errors_exit_2_with_one_line(flags, message, capsys, tmp_path):
    code, _, err = run_cli(["train", "--out", tmp_path / "x", *flags], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_toml_config_and_precedence(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\nn_layer = 3\n[optim]\nlr = 0.01\n")
    cfg = build_config("small", str(f), [("optim.lr", "0.02")])
    assert cfg.model.n_layer == 3 and cfg.model.d_model == 384 and cfg.optim.lr == 0.02
    f.write_text("[model]\nn_layers = 3\n")
    with pytest.raises(ConfigError, match="n_layers"):
        build_config(None, str(f))


def test_presets_build():
    for name in ("tiny", "small", "gpt2-124m"):
        build_config(name)
    g = build_config("gpt2-124m")
    assert (g.model.n_layer, g.model.d_model, g.model.block_size) == (12, 768, 1024)


def test_resume_without_checkpoint_and_corrupt_checkpoint(bytes_data, tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", bytes_data, "--out", tmp_path / "none", "--resume"], capsys)
    assert code != 0 and "no checkpoint" in err
    run = tmp_path / "r"
    train(tiny_config(bytes_data, train__max_steps=4, train__ckpt_every=4), run, quiet=True)
    ck = run / "checkpoints" / "step_00000004" / "model.safetensors"
    ck.write_bytes(ck.read_bytes()[:100])
    code, _, err = run_cli(["eval", run], capsys)
    assert code != 0 and "truncated" in err and len(err.strip().splitlines()) == 1


def test_mismatched_checkpoint_is_refused_on_resume(bytes_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(tiny_config(bytes_data, train__max_steps=4, train__ckpt_every=4), run, quiet=True)
    code, _, err = run_cli(["train", "--data", bytes_data, "--out", run, "--resume", "--model.n_layer", "3"], capsys)
    assert code != 0 and "different model config" in err


@pytest.mark.slow
def test_no_argument_run_prepares_stdlib_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = ["--train.max_steps", "3", "--model.n_layer", "1", "--train.batch_size", "2", "--train.eval_tokens",
             "512", "--log.sample_tokens", "5", "--log.progress", "off"]
    code, _, err = run_cli(["train", *small], capsys)
    assert code == 0, err
    assert "preparing the built-in corpus" in err and "bits/byte" in err and "sample" in err
    code, _, err = run_cli(["train", *small], capsys)
    assert code == 0 and "preparing the built-in corpus" not in err  # cached
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_sample_without_seed_is_fresh_each_call_and_its_printed_seed_repeats_it(bytes_data, tmp_path, capsys):
    # An unseeded generator starts from the same state every time: two calls printed the same text (issue 15).
    run = tmp_path / "run"
    train(tiny_config(bytes_data, train__max_steps=4, train__ckpt_every=4), run, quiet=True)
    args = ["sample", run, "--prompt", "def", "--temperature", "1.0", "--max-new-tokens", "40"]
    outs, seeds = [], []
    for _ in range(2):
        code, out, err = run_cli(args, capsys)
        assert code == 0
        seeds.append(int(err.split("seed ", 1)[1].split()[0]))
        outs.append(out)
    assert outs[0] != outs[1] and seeds[0] != seeds[1]
    code, again, err = run_cli([*args, "--seed", seeds[1]], capsys)
    assert code == 0 and again == outs[1] and "seed" not in err


def test_eval_on_data_of_another_tokenizer_is_refused(bpe_data, bytes_data, tmp_path, capsys):
    # A BPE model evaluated on byte-level data read its ids as other strings and printed meaningless figures.
    run = tmp_path / "run"
    train(tiny_config(bpe_data, train__max_steps=2, train__ckpt_every=2, train__eval_every=0), run, quiet=True)
    code, out, err = run_cli(["eval", run, "--data", bytes_data], capsys)
    assert code != 0 and out == "" and err.count("\n") == 1
    assert "prepared with another tokenizer" in err and f"--tokenizer {run}/tokenizer.json" in err
