"""Hugging Face interop (nextoken/interop/): export and import compute the same function as the model they
came from (logit parity both ways, greedy generation, tokenizer ids), evaluation agrees with transformers' loss,
a round trip keeps every bit, continued pretraining learns, and every refusal is one line that writes nothing.

No downloads: the transformers models are built here from their config classes, shaped as the real families are
(GPT-2, Pythia, Llama with GQA and MQA, Qwen2, Qwen3), with random weights, norms and biases included."""

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
from nextoken.interop.hf_import import HFModel, import_hf, read_special_tokens, write_run  # noqa: E402
from nextoken.model import GPT  # noqa: E402
from nextoken.run import Run  # noqa: E402

# nextoken options of each architecture, and the class transformers must load
LAYOUTS = {"gpt2": (dict(pos="learned"), "GPT2LMHeadModel"),
           "gpt_neox": (dict(pos="rope"), "GPTNeoXForCausalLM"),
           "llama": (dict(pos="rope", norm_type="rmsnorm", mlp="swiglu"), "LlamaForCausalLM"),
           # the new options, each where a family has it
           "gpt2-tanh": (dict(pos="learned", gelu="tanh", norm_eps=1e-6, mlp_hidden=72), "GPT2LMHeadModel"),
           "pythia": (dict(pos="rope", parallel_residual=True, rotary_fraction=0.25, gelu="tanh"),
                      "GPTNeoXForCausalLM"),
           "llama-gqa": (dict(pos="rope", norm_type="rmsnorm", mlp="swiglu", n_kv_head=1, rope_base=5e5),
                         "LlamaForCausalLM"),
           "qwen2": (dict(pos="rope", norm_type="rmsnorm", mlp="swiglu", qkv_bias=True, norm_eps=1e-6),
                     "Qwen2ForCausalLM"),
           "qwen3": (dict(pos="rope", norm_type="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=1, head_size=32),
                     "Qwen3ForCausalLM")}
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
    elif arch == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
                                         intermediate_size=128, max_position_embeddings=64, rotary_pct=1.0,
                                         use_parallel_residual=False, **common)
    else:
        cfg = FAMILIES[arch](common)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    _perturb(model, seed)
    model.save_pretrained(str(path))
    _hf_tokenizer(bytes_tokenizer()).save_pretrained(str(path))
    return model.eval()


FAMILIES = {  # tiny models laid out as the real ones are (their config.json's options, not their sizes)
    # GPT-2: tanh GELU ("gelu_new"), biases everywhere, learned positions
    "gpt2-real": lambda c: transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, **c),
    # Pythia / GPT-NeoX: parallel residuals, RoPE on a quarter of each head, exact GELU, biases
    "pythia": lambda c: transformers.GPTNeoXConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=128, max_position_embeddings=64,
        rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu", **c),
    # SmolLM / Llama 3 (without 3.1's RoPE scaling): grouped-query attention, a large RoPE base, a width the
    # ratio rule cannot reach
    "llama-gqa": lambda c: transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=72,
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5e5},
        **c),
    # TinyLlama-like extreme: multi-query attention (one key/value head)
    "llama-mqa": lambda c: transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32, intermediate_size=88,
        max_position_embeddings=64, rms_norm_eps=1e-6, **c),
    # Qwen2 / 2.5: biases on q, k, v only, GQA, eps 1e-6, RoPE base 1e6
    "qwen2": lambda c: transformers.Qwen2Config(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=88,
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        **c),
    # Qwen3: per-head q/k RMSNorm, heads wider than hidden_size / heads (as Qwen3-0.6B's 16 x 128 over 1024)
    "qwen3": lambda c: transformers.Qwen3Config(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size=32,
        intermediate_size=88, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **c),
}
HF_CLASSES = {"gpt2-real": "GPT2LMHeadModel", "pythia": "GPTNeoXForCausalLM", "llama-gqa": "LlamaForCausalLM",
              "llama-mqa": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


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
        ours, theirs = gpt(ids), hf(ids).logits
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, diff
    assert (ours.softmax(-1) - theirs.softmax(-1)).abs().max().item() <= TOL  # next-token probabilities
    prompt = ids[0, :8]
    ours = list(generate(gpt, prompt.tolist(), 50, temperature=0))
    assert ours == _hf_greedy(hf, prompt, 50)
    return diff


# ---- export ----

@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", list(LAYOUTS))
def test_export_loads_in_transformers_and_computes_the_same_function(tmp_path, arch, tied):
    # biases everywhere where the family has them (Qwen2 and Qwen3 have none in the MLP)
    run = _nextoken_run(tmp_path / "run", arch, tied, bias=not tied and not arch.startswith("qwen"))
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
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])  # the real families' layouts: FAMILIES below
def test_import_computes_the_same_function(tmp_path, arch, tied):
    hf = _hf_model(tmp_path / "hf", arch, tied)
    res = import_hf(tmp_path / "hf", tmp_path / "run")
    assert res["architecture"] == LAYOUTS[arch][1]
    loaded = Run(tmp_path / "run").load()
    assert loaded.step == 0 and loaded.model.cfg.tie_embeddings == tied
    _assert_same_function(loaded.model, hf)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == loaded.tokenizer.encode(TEXT).ids


@pytest.fixture(scope="module")
def family_data(tmp_path_factory, corpus_dir):
    """Data prepared with the tokenizer every family's import carries (the byte-level one, through transformers)."""
    folder = tmp_path_factory.mktemp("family-tok")
    _hf_tokenizer(bytes_tokenizer()).save_pretrained(str(folder))
    data = folder / "data"
    prepare([str(corpus_dir)], data, PrepareOptions(tokenizer=str(folder / "tokenizer.json"), val_fraction=0.1,
                                                    progress=False), log=lambda m: None)
    return data


def _hf_loss(hf, data) -> tuple[float, int]:
    losses, n = 0.0, 0
    with torch.no_grad():
        for x, y in eval_windows(TokenData(data, "val"), 64, 0):
            losses += torch.nn.functional.cross_entropy(hf(x[None]).logits[0], y, reduction="sum").item()
            n += len(y)
    return losses / n, n


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_imports_exactly_and_round_trips(tmp_path, family_data, one_thread, family, tied):
    """The real families' layouts: import gives transformers' probabilities (1e-4) and greedy 50 tokens, eval
    gives its mean loss (relative 1e-5), and import -> export -> transformers gives identical logits."""
    hf = _hf_model(tmp_path / "hf", family, tied)
    assert type(hf).__name__ == HF_CLASSES[family]
    import_hf(tmp_path / "hf", tmp_path / "run")
    loaded = Run(tmp_path / "run").load()
    assert loaded.model.cfg.tie_embeddings == tied
    _assert_same_function(loaded.model, hf)

    loss, n = _hf_loss(hf, family_data)
    ours = evaluate(tmp_path / "run", family_data)
    assert ours["eval_tokens"] == n and ours["loss"] == pytest.approx(loss, rel=1e-5)

    res = export(tmp_path / "run", tmp_path / "back")
    assert res["architecture"] == HF_CLASSES[family]
    back = _load_hf(tmp_path / "back").eval()
    ids = _prompts()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)


@pytest.mark.parametrize("family,change,word", [
    ("llama-gqa", dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192}), "llama3"),
    ("qwen2", dict(use_sliding_window=True), "use_sliding_window"),
    ("llama-gqa", dict(model_type="olmo2", architectures=["Olmo2ForCausalLM"]), "OLMo-2"),
])
def test_import_refuses_a_family_detail_in_one_line(tmp_path, capsys, family, change, word):
    _hf_model(tmp_path / "hf", family, tied=True)
    _edit_config(tmp_path / "hf", **change)
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")], word)
    assert not (tmp_path / "run").exists()


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
                                            ("gpt_neox", False, True), ("llama", True, True), ("llama", False, False),
                                            ("gpt2-tanh", False, False), ("pythia", True, True),
                                            ("llama-gqa", False, True), ("qwen2", True, False),
                                            ("qwen3", False, False)])
def test_round_trip_keeps_every_bit(tmp_path, arch, tied, bias):
    run = _nextoken_run(tmp_path / "run", arch, tied, bias)
    export(run, tmp_path / "hf", check=False)
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = Run(run).load(), Run(tmp_path / "back").load()
    for name in ("n_layer", "n_head", "d_model", "block_size", "vocab_size", "norm_type", "pos", "mlp",
                 "tie_embeddings", "bias", "rope_base", "kv_heads", "head_dim", "qk_norm", "qkv_bias", "gelu",
                 "parallel_residual", "norm_eps", "rotary_fraction", "mlp_width"):
        assert getattr(a.model.cfg, name) == getattr(b.model.cfg, name), name
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
        # the source's bos/eos/pad carry over, so an export of the continued run names the same ones
        assert read_special_tokens(out) == read_special_tokens(tmp_path / "run") != {}


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


LLAMA = dict(pos="rope", norm_type="rmsnorm", mlp="swiglu")


@pytest.mark.parametrize("opts,word", [(dict(norm="post"), "model.norm post"),
                                       (dict(pos="rope", norm_type="rmsnorm"), "model.norm_type rmsnorm"),
                                       (dict(pos="learned", mlp="swiglu"), "model.mlp swiglu"),
                                       (dict(pos="learned", n_kv_head=1), "model.n_kv_head 1"),
                                       (dict(pos="rope", qk_norm=True), "model.qk_norm"),
                                       (dict(LLAMA, qk_norm=True, bias=True), "model.bias"),
                                       (dict(LLAMA, parallel_residual=True), "model.parallel_residual"),
                                       (dict(LLAMA, rotary_fraction=0.5), "model.rotary_fraction 0.5")])
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
    ("gpt2", dict(activation_function="relu"), "activation_function"),
    ("gpt_neox", dict(hidden_act="silu"), "hidden_act"),
    ("llama", dict(hidden_act="gelu"), "hidden_act"),
    ("llama", dict(model_type="mistral", architectures=["MistralForCausalLM"]), "model_type 'mistral'"),
    ("gpt2", dict(n_embd=64), "shape"),
])
def test_import_refuses_what_nextoken_cannot_represent(tmp_path, capsys, arch, change, word):
    _hf_model(tmp_path / "hf", arch, tied=True)
    _edit_config(tmp_path / "hf", **change)
    _refused(capsys, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")], word)
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


# ---- training with the families' options ----

def test_gqa_and_qk_norm_run_trains_resumes_bit_identically_and_exports(tmp_path, bytes_data):
    import shutil

    from conftest import tiny_config
    from safetensors.torch import load_file

    from nextoken.api import train

    opts = dict(model__pos="rope", model__norm_type="rmsnorm", model__mlp="swiglu", model__n_head=4,
                model__n_kv_head=1, model__qk_norm=True, train__ckpt_every=10, train__keep=5)
    train(tiny_config(bytes_data, **opts), tmp_path / "full", quiet=True)
    split = tmp_path / "split"
    train(tiny_config(bytes_data, **opts), split, quiet=True)
    shutil.rmtree(split / "checkpoints" / "step_00000020")  # "crashed" after its step-10 checkpoint
    (split / "checkpoints" / "latest").write_text("step_00000010\n")
    train(tiny_config(bytes_data, **opts), split, resume=True, quiet=True)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_00000020" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "step_00000020" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["blocks.0.attn.qkv.weight"].shape == ((4 + 2 * 1) * 8, 32)  # 4 query heads, 1 key/value head of 8
    losses = [r["loss"] for r in Run(tmp_path / "full").last_per_step("train")]
    assert losses[-1] < losses[0] - 0.5, losses  # it learns
    res = export(tmp_path / "full", tmp_path / "hf")
    assert res["architecture"] == "Qwen3ForCausalLM" and res["max_abs_diff"] <= TOL


# ---- special tokens ----

def test_export_writes_special_tokens_and_a_pad_token_and_generation_stops_at_eos(tmp_path):
    run = _nextoken_run(tmp_path / "run", "gpt_neox", tied=False, bias=True)
    eot = bytes_tokenizer().token_to_id(EOT)
    # every position's final norm gives the same vector, and only eos's output row reads it: greedy is all eos
    path = next((run / "checkpoints").glob("step_*")) / "model.safetensors"
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    sd["norm_f.weight"].zero_()
    sd["norm_f.bias"].fill_(1.0)
    sd["lm_head.weight"].zero_()
    sd["lm_head.weight"][eot] = 1.0
    save_file(sd, str(path))
    export(run, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert cfg["eos_token_id"] == cfg["pad_token_id"] == gen["eos_token_id"] == gen["pad_token_id"] == eot
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    batch = tok(["a", "abc"], padding=True)  # raised before: no pad token
    assert batch["input_ids"][0] == [ord("a"), eot, eot] and batch["attention_mask"][0] == [1, 0, 0]
    hf = _load_hf(tmp_path / "hf").eval()
    out = hf.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=10, do_sample=False)
    assert out[0].tolist() == [1, 2, 3, eot]  # stopped at eos


def test_import_keeps_the_models_own_special_tokens_through_export(tmp_path):
    tok = bytes_tokenizer()
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])  # ids 257, 258, 259 after <|endoftext|> (256)
    bos, eos, pad = (tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    cfg = transformers.LlamaConfig(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, hidden_size=32,
                                   intermediate_size=64, max_position_embeddings=64, vocab_size=260,
                                   bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(tmp_path / "hf"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                         pad_token="<pad>").save_pretrained(str(tmp_path / "hf"))
    import_hf(tmp_path / "hf", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "special_tokens.json").read_text()) == {
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    export(tmp_path / "run", tmp_path / "back")
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    gen = json.loads((tmp_path / "back" / "generation_config.json").read_text())
    assert (back["bos_token_id"], back["eos_token_id"], back["pad_token_id"]) == (bos, eos, pad)
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (bos, eos, pad)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == ("<s>", "</s>", "<pad>")


def test_each_familys_import_opens_in_serve(tmp_path):
    """A newcomer's path: import a family's model, open it in `nextoken serve`, ask the next-token page."""
    from starlette.testclient import TestClient

    from nextoken.serve.app import create_app

    root = tmp_path / "runs"
    for family in FAMILIES:
        _hf_model(tmp_path / "hf" / family, family, tied=False)
        import_hf(tmp_path / "hf" / family, root / family)
    client = TestClient(create_app([root]))
    runs = {r["id"] for r in client.get("/api/runs").json()["runs"]}
    assert runs == {f"runs/{f}" for f in FAMILIES}
    for run_id in runs:
        r = client.post("/api/next", json={"run": run_id, "prompt": "The cat sat on the", "top": 5})
        assert r.status_code == 200, r.text
        assert len(r.json()["top"]) == 5 and r.json()["vocab_size"] == 257
