"""Hugging Face interop (nextoken/interop/): export and import compute the same function as the model they
came from (logit parity both ways, greedy generation, tokenizer ids), evaluation agrees with transformers' loss,
a round trip keeps every bit, continued pretraining learns, and every refusal is one line that writes nothing.

No downloads: the transformers models are built here from their config classes with random weights."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the network, whatever the test does

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nextoken.api import evaluate  # noqa: E402
from nextoken.cli import main  # noqa: E402
from nextoken.config import ModelConfig  # noqa: E402
from nextoken.data.loader import TokenData, eval_windows  # noqa: E402
from nextoken.data.prepare import PrepareOptions, prepare  # noqa: E402
from nextoken.data.tokenizer import EOT, bytes_tokenizer, load_tokenizer  # noqa: E402
from nextoken.generate import generate  # noqa: E402
from nextoken.interop.hf_export import dtype_argument, export  # noqa: E402
from nextoken.interop.hf_import import HFModel, import_hf, write_run  # noqa: E402
from nextoken.model import GPT  # noqa: E402
from nextoken.run import Run  # noqa: E402

# (model.pos, model.norm_type, model.mlp) of each architecture, and the class transformers must load
LAYOUTS = {"gpt2": (dict(pos="learned"), "GPT2LMHeadModel"),
           "gpt_neox": (dict(pos="rope"), "GPTNeoXForCausalLM"),
           "llama": (dict(pos="rope", norm_type="rmsnorm", mlp="swiglu"), "LlamaForCausalLM")}
TEXT = ("Grüße aus Köln! Ça va? Привет, мир. 你好，世界。こんにちは 🙂🚀👩‍💻 🇫🇷\n\n\t\tdef f(x):\n"
        "        return  x   +\u00a01\r\n    \n   trailing   \u2003spaces   ")
TOL = 1e-4


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms and biases included, so no mapping passes by being all ones or zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _nextoken_run(path, arch: str, tied: bool, bias: bool = False, seed: int = 0):
    opts = LAYOUTS[arch][0]
    m = ModelConfig(n_layer=2, n_head=2, d_model=32, block_size=64, vocab_size=257, tie_embeddings=tied, bias=bias,
                    **opts)
    torch.manual_seed(seed)
    model = GPT(m)
    _perturb(model, seed)
    write_run(path, HFModel("test", "nextoken", m, {k: v.clone() for k, v in model.state_dict().items()},
                            bytes_tokenizer()))
    return path


def _hf_model(path, arch: str, tied: bool, seed: int = 0, **overrides):
    common = dict(vocab_size=257, tie_word_embeddings=tied, bos_token_id=256, eos_token_id=256)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, activation_function="gelu",
                                      **common)
    elif arch == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                       hidden_size=32, intermediate_size=88, max_position_embeddings=64,
                                       rms_norm_eps=1e-5, **common)
    else:
        cfg = transformers.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
                                         intermediate_size=128, max_position_embeddings=64, rotary_pct=1.0,
                                         use_parallel_residual=False, **common)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    _perturb(model, seed)
    model.save_pretrained(str(path))
    _hf_tokenizer(bytes_tokenizer()).save_pretrained(str(path))
    return model.eval()


def _hf_tokenizer(tok):
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT)


def _load_hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), **dtype_argument(transformers, torch.float32))


def _prompts(vocab: int = 257, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 48), generator=torch.Generator().manual_seed(seed))


def _hf_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    ids = prompt[None]
    with torch.no_grad():
        for _ in range(n):  # plain argmax, so an end-of-text never stops it early
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def _assert_same_function(gpt: GPT, hf) -> float:
    ids = _prompts()
    with torch.no_grad():
        diff = (gpt(ids) - hf(ids).logits).abs().max().item()
    assert diff <= TOL, diff
    prompt = ids[0, :8]
    ours = list(generate(gpt, prompt.tolist(), 50, temperature=0))
    assert ours == _hf_greedy(hf, prompt, 50)
    return diff


# ---- export ----

@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", list(LAYOUTS))
def test_export_loads_in_transformers_and_computes_the_same_function(tmp_path, arch, tied):
    run = _nextoken_run(tmp_path / "run", arch, tied, bias=not tied)
    res = export(run, tmp_path / "hf")
    assert res["architecture"] == LAYOUTS[arch][1] and res["max_abs_diff"] <= TOL
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= files
    hf = _load_hf(tmp_path / "hf").eval()
    assert type(hf).__name__ == LAYOUTS[arch][1]
    assert (hf.get_output_embeddings().weight is hf.get_input_embeddings().weight) == tied
    _assert_same_function(Run(run).load().model, hf)


def test_export_tokenizer_gives_the_same_ids(tmp_path, bpe_data):
    for name, tok in (("bytes", bytes_tokenizer()), ("bpe", load_tokenizer(bpe_data / "tokenizer.json"))):
        m = ModelConfig(n_layer=1, n_head=2, d_model=32, block_size=64, vocab_size=tok.get_vocab_size(), pos="rope")
        write_run(tmp_path / name, HFModel("test", "nextoken", m, GPT(m).state_dict(), tok))
        export(tmp_path / name, tmp_path / f"{name}-hf", check=False)
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / f"{name}-hf"))
        assert hf_tok.eos_token == EOT and hf_tok.eos_token_id == tok.token_to_id(EOT)
        for text in (TEXT, TEXT + EOT + "x"):  # a typed end-of-text is text on both sides
            ids = tok.encode(text, add_special_tokens=False).ids
            assert hf_tok(text)["input_ids"] == ids, name
            assert hf_tok.decode(ids) == text


def test_export_bf16_halves_the_file_and_model_card(tmp_path, bytes_data):
    from conftest import tiny_config

    from nextoken.api import train

    cfg = tiny_config(bytes_data, model__pos="rope", train__max_steps=10)
    train(cfg, tmp_path / "run", quiet=True)
    full = export(tmp_path / "run", tmp_path / "fp32")
    half = export(tmp_path / "run", tmp_path / "bf16", dtype="bf16")
    assert half["dtype"] == "bfloat16" and abs(half["bytes"] / full["bytes"] - 0.5) < 0.03
    assert half["max_abs_diff"] <= TOL  # against nextoken's model with its weights rounded to bf16 alike
    assert full["architecture"] == "GPTNeoXForCausalLM"  # the default preset's layout: RoPE, LayerNorm, GELU
    card = (tmp_path / "fp32" / "README.md").read_text()
    last = Run(tmp_path / "run").last_per_step("eval")[-1]
    assert f"{last['bits_per_byte']:.4f} bits per byte" in card and "nextoken train --config" in card
    assert "tokens" in card and "[model]" in card


# ---- import ----

@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", list(LAYOUTS))
def test_import_computes_the_same_function(tmp_path, arch, tied):
    hf = _hf_model(tmp_path / "hf", arch, tied)
    res = import_hf(tmp_path / "hf", tmp_path / "run")
    assert res["architecture"] == LAYOUTS[arch][1]
    loaded = Run(tmp_path / "run").load()
    assert loaded.step == 0 and loaded.model.cfg.tie_embeddings == tied
    _assert_same_function(loaded.model, hf)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == loaded.tokenizer.encode(TEXT).ids


def test_import_reads_bin_weights_and_converts_a_tokenizer(tmp_path):
    hf = _hf_model(tmp_path / "hf", "gpt2", tied=True)
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "hf" / f).unlink(missing_ok=True)
    # a slow GPT-2 tokenizer's files only: vocab.json and merges.txt (the byte-level vocabulary, no merges)
    vocab = json.loads(bytes_tokenizer().to_str())["model"]["vocab"]
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({**vocab, EOT: 256}))
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": EOT, "bos_token": EOT, "unk_token": EOT}))
    import_hf(tmp_path / "hf", tmp_path / "run")
    loaded = Run(tmp_path / "run").load()
    _assert_same_function(loaded.model, hf.eval())
    assert loaded.tokenizer.encode(TEXT).ids == bytes_tokenizer().encode(TEXT).ids


def test_eval_of_an_import_equals_transformers_loss(tmp_path, corpus_dir):
    hf = _hf_model(tmp_path / "hf", "llama", tied=False)
    import_hf(tmp_path / "hf", tmp_path / "run")
    data = tmp_path / "data"
    prepare([str(corpus_dir)], data, PrepareOptions(tokenizer=str(tmp_path / "run" / "tokenizer.json"),
                                                    val_fraction=0.1, progress=False), log=lambda m: None)
    with pytest.raises(Exception, match="--data"):
        evaluate(tmp_path / "run")  # an import names no data
    ours = evaluate(tmp_path / "run", data)
    losses, n = 0.0, 0
    with torch.no_grad():
        for x, y in eval_windows(TokenData(data, "val"), 64, 0):
            out = hf(x[None], labels=None).logits[0]
            losses += torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
            n += len(y)
    assert ours["eval_tokens"] == n
    assert ours["loss"] == pytest.approx(losses / n, rel=1e-5)


@pytest.mark.parametrize("arch,tied,bias", [("gpt2", True, False), ("gpt2", False, True), ("gpt_neox", True, False),
                                            ("gpt_neox", False, True), ("llama", True, True), ("llama", False, False)])
def test_round_trip_keeps_every_bit(tmp_path, arch, tied, bias):
    run = _nextoken_run(tmp_path / "run", arch, tied, bias)
    export(run, tmp_path / "hf", check=False)
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = Run(run).load(), Run(tmp_path / "back").load()
    for name in ("n_layer", "n_head", "d_model", "block_size", "vocab_size", "norm_type", "pos", "mlp",
                 "tie_embeddings", "bias", "rope_base"):
        assert getattr(a.model.cfg, name) == getattr(b.model.cfg, name), name
    assert a.model.cfg.mlp_hidden == b.model.cfg.mlp_hidden
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.tokenizer.to_str() == b.tokenizer.to_str()


def test_export_and_import_commands_print_strict_json(tmp_path, capsys):
    run = _nextoken_run(tmp_path / "run", "llama", tied=True)
    assert main(["export", str(run), "--out", str(tmp_path / "hf"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back"), "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert exported and imported and Run(tmp_path / "back").load().step == 0


# ---- continued pretraining ----

def test_init_from_an_import_lowers_its_val_loss(tmp_path, corpus_dir):
    from conftest import tiny_config

    from nextoken.api import resolve_train_config, train

    _hf_model(tmp_path / "hf", "gpt_neox", tied=True)
    import_hf(tmp_path / "hf", tmp_path / "run")
    data = tmp_path / "data"
    prepare([str(corpus_dir)], data, PrepareOptions(tokenizer=str(tmp_path / "run" / "tokenizer.json"),
                                                    val_fraction=0.1, progress=False), log=lambda m: None)
    before = evaluate(tmp_path / "run", data)["loss"]
    for source in (tmp_path / "run", tmp_path / "hf"):  # a run, or the transformers directory itself
        cfg = resolve_train_config(overrides=[("train.init_from", str(source))], data=data)
        base = tiny_config(data, train__max_steps=20, train__eval_tokens=0, optim__lr=3e-3)
        cfg.train, cfg.optim, cfg.log = base.train, base.optim, base.log
        cfg.train.init_from = str(source)
        assert cfg.model.d_model == 32 and cfg.model.pos == "rope"  # the shape comes from the source
        out = tmp_path / f"new-{source.name}"
        res = train(cfg, out, quiet=True)
        assert res["loss"] < before - 0.1, (res["loss"], before)
        events = [e for e in Run(out).events if e["type"] == "init"]
        assert events and events[0]["detail"]["source"] == str(source)


def test_init_from_refuses_data_with_another_tokenizer(tmp_path, bpe_data, capsys):
    _hf_model(tmp_path / "hf", "gpt2", tied=True)
    import_hf(tmp_path / "hf", tmp_path / "run")
    capsys.readouterr()
    code = main(["train", "--init-from", str(tmp_path / "run"), "--data", str(bpe_data), "--out",
                 str(tmp_path / "new"), "--train.max_steps", "2"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "tokenizer" in err, err
    assert not (tmp_path / "new").exists()


def test_init_from_takes_the_shape_from_the_source(tmp_path):
    from nextoken.api import resolve_train_config
    from nextoken.errors import ConfigError

    _hf_model(tmp_path / "hf", "llama", tied=False)
    src = str(tmp_path / "hf")
    cfg = resolve_train_config(overrides=[("model.block_size", "32"), ("model.dropout", "0.1")], init_from=src)
    assert (cfg.model.n_layer, cfg.model.block_size, cfg.model.dropout, cfg.model.mlp_hidden) == (2, 32, 0.1, 88)
    with pytest.raises(ConfigError, match="model.n_layer"):
        resolve_train_config(overrides=[("model.n_layer", "3")], init_from=src)
    with pytest.raises(ConfigError, match="--resume"):
        resolve_train_config(out=tmp_path, resume=True, init_from=src)


# ---- refusals: one line, nothing written ----

def _refused(capsys, argv, *words) -> str:
    capsys.readouterr()  # what building the fixtures printed
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("opts,word", [(dict(norm="post"), "model.norm post"),
                                       (dict(pos="rope", norm_type="rmsnorm"), "model.norm_type rmsnorm"),
                                       (dict(pos="learned", mlp="swiglu"), "model.mlp swiglu")])
def test_export_refuses_options_with_no_exact_equivalent(tmp_path, capsys, opts, word):
    m = ModelConfig(n_layer=1, n_head=2, d_model=32, block_size=16, vocab_size=257, **opts)
    write_run(tmp_path / "run", HFModel("test", "nextoken", m, GPT(m).state_dict(), bytes_tokenizer()))
    _refused(capsys, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")], word)
    assert not (tmp_path / "hf").exists()


def _edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("arch,change,word", [
    ("gpt2", dict(activation_function="gelu_new"), "activation_function"),
    ("gpt2", dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    ("gpt_neox", dict(use_parallel_residual=True), "use_parallel_residual"),
    ("gpt_neox", dict(rotary_pct=0.25, rope_parameters=None), "rotary_pct"),
    ("llama", dict(rms_norm_eps=1e-6), "rms_norm_eps"),
    ("llama", dict(model_type="mistral", architectures=["MistralForCausalLM"]), "model_type 'mistral'"),
    ("gpt2", dict(n_embd=64), "shape"),
])
def test_import_refuses_what_nextoken_cannot_represent(tmp_path, capsys, arch, change, word):
    _hf_model(tmp_path / "hf", arch, tied=True)
    _edit_config(tmp_path / "hf", **change)
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")], word)
    assert not (tmp_path / "run").exists()


def test_import_refuses_grouped_query_attention(tmp_path, capsys):
    _hf_model(tmp_path / "hf", "llama", tied=True, num_key_value_heads=1)
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")], "num_key_value_heads")
    assert not (tmp_path / "run").exists()


def test_import_refuses_missing_files_and_tensors(tmp_path, capsys):
    out = str(tmp_path / "run")
    _refused(capsys, ["import", str(tmp_path / "nowhere"), "--out", out], "does not exist")
    (tmp_path / "empty").mkdir()
    _refused(capsys, ["import", str(tmp_path / "empty"), "--out", out], "config.json")
    _hf_model(tmp_path / "hf", "gpt_neox", tied=False)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "model.safetensors").unlink()
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", out], "no weights")
    head = [k for k in weights if "embed_out" in k or k.startswith("lm_head")]
    save_file({k: v for k, v in weights.items() if k not in head}, str(tmp_path / "hf" / "model.safetensors"),
              metadata={"format": "pt"})
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", out], "lacks tensor")
    save_file({**weights, "gpt_neox.extra.weight": torch.zeros(2)}, str(tmp_path / "hf" / "model.safetensors"),
              metadata={"format": "pt"})
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", out], "gpt_neox.extra.weight")
    assert not (tmp_path / "run").exists()


def test_missing_extra_names_it(tmp_path, monkeypatch, capsys):
    import sys

    _hf_model(tmp_path / "hf", "gpt2", tied=True)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")], "nextoken[hf]")
    assert not (tmp_path / "run").exists()
