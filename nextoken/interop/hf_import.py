"""`nextoken import HF_DIR --out RUN`: a transformers model directory (GPT-2, Llama or GPT-NeoX with options
nextoken represents) as an ordinary run directory, so that eval, sample, next and `train --init-from` work on it.

    RUN/config.toml                          the resolved config, with the model's fields (data.path empty)
    RUN/tokenizer.json                       the model's fast tokenizer (a slow one converted by transformers)
    RUN/special_tokens.json                  its bos, eos and pad tokens (`export` writes them back)
    RUN/metrics.jsonl                        one `import` event naming the source
    RUN/checkpoints/step_00000000/           the weights, through nextoken.checkpoint.save (no optimizer state)

Weights come from safetensors (one file or an index of shards), or from `.bin` files read with
`torch.load(weights_only=True)`. Anything that does not fit (an unknown architecture, an option nextoken cannot
represent, a missing or extra tensor, a wrong shape) is one line naming it, and nothing is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from nextoken import checkpoint as ckpt
from nextoken.atomic import building
from nextoken.config import Config, ModelConfig, validate
from nextoken.data.tokenizer import EOT, end_of_text, load_tokenizer, save_tokenizer
from nextoken.errors import ConfigError, DataError
from nextoken.interop import InteropError, require
from nextoken.interop.adapters import Adapter, Tensors, adapter_for_hf
from nextoken.run import holds_run

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "tokenizer.model", "added_tokens.json", "generation_config.json")


@dataclass
class HFModel:
    """A transformers checkpoint read as nextoken's: its config, weights (GPT's names) and tokenizer."""

    source: str
    architecture: str
    config: ModelConfig
    state_dict: Tensors
    tokenizer: Tokenizer
    special: dict[str, str | None] | None = None  # bos_token, eos_token, pad_token (None: the end-of-text)


def read_hf(hf_dir: str | Path) -> HFModel:
    """Read a transformers model directory (or, where the machine has the internet, a hub name) as nextoken's
    model. Raises InteropError naming what does not fit."""
    folder = _local(hf_dir)
    raw = _read_json(folder / "config.json", "config.json")
    adapter = adapter_for_hf(raw)
    hf = _full_config(folder, raw)
    sd = _normalized(_read_weights(folder), adapter)
    m = adapter.model_config(hf, sd)
    try:
        validate(Config(model=m))
    except ConfigError as e:
        raise InteropError(f"{folder}: {e}") from None
    extra = sorted(set(sd) - adapter.hf_names(m) - {adapter.lm_head})
    if extra:
        raise InteropError(f"{folder} holds tensors a {adapter.architecture} with this config has no place for "
                           f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")
    try:
        ours = adapter.from_hf(sd, m)
    except KeyError as e:
        raise InteropError(f"{folder} lacks tensor {e.args[0]} (config: {adapter.architecture}, "
                           f"tie_word_embeddings {m.tie_embeddings})") from None
    _check_shapes(ours, m, folder)
    tok = _tokenizer(folder, m, hf)
    return HFModel(str(hf_dir), adapter.architecture, m, ours, tok, special_tokens(folder, hf, tok))


def import_hf(hf_dir: str | Path, out: str | Path, force: bool = False) -> dict:
    """Import `hf_dir` into the run directory `out` (see the module's docstring). Returns what was written."""
    out = Path(out)
    if holds_run(out) or (out.exists() and any(out.iterdir()) and not force):
        raise InteropError(f"{out} already exists and is not empty; choose another --out"
                           + ("" if holds_run(out) else " or pass --force"))
    model = read_hf(hf_dir)
    path = write_run(out, model)
    return {"run": str(out), "checkpoint": str(path), "architecture": model.architecture,
            "model": asdict(model.config), "source": model.source}


def write_run(out: Path, model: HFModel) -> Path:
    """An ordinary run directory holding `model` as its step-0 checkpoint; written aside, then renamed."""
    from nextoken.model import GPT

    cfg = Config(model=model.config)
    with building(out) as tmp:
        (tmp / "config.toml").write_text(cfg.to_toml())
        save_tokenizer(model.tokenizer, tmp / "tokenizer.json")
        if model.special:
            (tmp / SPECIAL_TOKENS_FILE).write_text(json.dumps(model.special, indent=2) + "\n")
        event = {"kind": "event", "step": 0, "type": "import",
                 "detail": {"source": model.source, "architecture": model.architecture}}
        (tmp / "metrics.jsonl").write_text(json.dumps(event) + "\n")
        with torch.device("meta"):  # no initialization: every weight comes from the checkpoint
            gpt = GPT(model.config)
        gpt.load_state_dict(model.state_dict, assign=True)
        if model.config.tie_embeddings:
            gpt.lm_head.weight = gpt.wte.weight
        trainer = {"step": 0, "tokens": 0, "data_step": 0, "elapsed_s": 0.0, "compiled": None,
                   "model_hash": cfg.model_hash(), "model": asdict(model.config), "stability": {},
                   "imported_from": model.source}
        path = ckpt.save(tmp, 0, gpt, torch.optim.AdamW(gpt.parameters()), trainer, keep=1)
    return out / "checkpoints" / path.name


# ---- reading a transformers directory ----

def _local(hf_dir: str | Path) -> Path:
    p = Path(hf_dir)
    if p.is_dir():
        return p
    if p.exists():
        raise InteropError(f"{p} is a file; pass the directory that holds config.json and the weights")
    name = str(hf_dir)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise InteropError(f"{p} does not exist; pass a directory written by transformers' save_pretrained")
    # A hub name (owner/model): only where the machine reaches the internet (untested here).
    hub = require("huggingface_hub", "importing from the Hugging Face hub")
    try:
        return Path(hub.snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # network, authentication and missing-repository errors all end the import
        raise InteropError(f"{name} is neither a local directory nor a reachable hub model "
                           f"({type(e).__name__}); pass a local directory") from None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InteropError(f"{path.parent} has no {what}; pass a directory written by transformers' save_pretrained")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InteropError(f"{path} is not valid JSON") from None


def _full_config(folder: Path, raw: dict) -> dict:
    """config.json with the defaults of its transformers config class filled in."""
    transformers = require("transformers", "nextoken import")
    try:
        return transformers.AutoConfig.from_pretrained(str(folder)).to_dict()
    except (ValueError, OSError, TypeError) as e:
        raise InteropError(f"transformers cannot read {folder}/config.json ({str(e).splitlines()[0][:120]})") from None


def _read_weights(folder: Path) -> Tensors:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for index, single, kind in (("model.safetensors.index.json", "model.safetensors", "safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin")):
        if (folder / index).is_file():
            files = sorted(set(_read_json(folder / index, index).get("weight_map", {}).values()))
        elif (folder / single).is_file():
            files = [single]
        else:
            continue
        out: Tensors = {}
        for name in files:
            path = folder / name
            if not path.is_file():
                raise InteropError(f"{path} is missing (named by {index})")
            try:
                part = load_file(str(path)) if kind == "safetensors" else \
                    torch.load(path, map_location="cpu", weights_only=True)
            except (SafetensorError, OSError, RuntimeError) as e:
                raise InteropError(f"{path} is unreadable ({str(e).splitlines()[0][:120]})") from None
            except Exception as e:  # weights_only refuses anything but tensors (pickle.UnpicklingError and others)
                raise InteropError(f"{path} holds more than tensors ({type(e).__name__}); nextoken loads weights "
                                   "only: convert it to safetensors") from None
            if not isinstance(part, dict) or not all(torch.is_tensor(v) for v in part.values()):
                raise InteropError(f"{path} is not a state dict of tensors")
            out.update(part)
        return out
    raise InteropError(f"{folder} has no weights (model.safetensors, pytorch_model.bin, or their .index.json)")


def _normalized(sd: Tensors, adapter: Adapter) -> Tensors:
    sd = {k: v for k, v in sd.items() if not k.endswith(adapter.ignored)}
    names = adapter.normalize(set(sd))
    return {names[k]: v for k, v in sd.items()}


def _check_shapes(ours: Tensors, m: ModelConfig, folder: Path) -> None:
    from nextoken.model import GPT

    with torch.device("meta"):
        want = GPT(m).state_dict()
    for name, t in want.items():
        if name not in ours:
            raise InteropError(f"{folder}: nothing maps to nextoken's {name}")
        if tuple(ours[name].shape) != tuple(t.shape):
            raise InteropError(f"{folder}: a tensor for {name} has shape {tuple(ours[name].shape)}, the config says "
                               f"{tuple(t.shape)}")


def _tokenizer(folder: Path, m: ModelConfig, hf: dict) -> Tokenizer:
    """The model's tokenizer as a `tokenizers` Tokenizer: tokenizer.json, else a slow tokenizer converted by
    transformers. Its end-of-text token must be one nextoken recognizes (data/tokenizer.py EOT_SPELLINGS), or
    room must be left in the vocabulary for nextoken's."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        path = _convert_tokenizer(folder)
    try:
        raw = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception:  # tokenizers raises a bare Exception for malformed files
        raise InteropError(f"{path} is not a Hugging Face tokenizer.json") from None
    n = raw.get_vocab_size(with_added_tokens=True)
    if end_of_text(raw) is None and n >= m.vocab_size:
        raise InteropError(f"the tokenizer of {folder} has no end-of-text token nextoken recognizes ({EOT}, </s>, "
                           f"<|end_of_text|>) and the model has no spare id for one")
    tok = load_tokenizer(path)
    if tok.get_vocab_size(with_added_tokens=True) > m.vocab_size:
        raise InteropError(f"the tokenizer of {folder} has {tok.get_vocab_size(with_added_tokens=True)} ids, more "
                           f"than the model's vocab_size {m.vocab_size}")
    return tok


SPECIAL_TOKENS_FILE = "special_tokens.json"
_SPECIAL = ("bos", "eos", "pad")


def special_tokens(folder: Path, hf: dict, tok: Tokenizer) -> dict[str, str | None]:
    """The model's bos, eos and pad tokens (as strings of `tok`, None where it has none): the ids of
    generation_config.json, else of config.json, else the tokens of tokenizer_config.json / special_tokens_map.json.
    A list of eos ids (Llama 3's chat models) keeps its first."""
    gen = _read_json(folder / "generation_config.json", "") if (folder / "generation_config.json").is_file() else {}
    names: dict = {}
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / f).is_file():
            names.update(_read_json(folder / f, f))
    out: dict[str, str | None] = {}
    for kind in _SPECIAL:
        i = gen.get(f"{kind}_token_id", hf.get(f"{kind}_token_id"))
        i = i[0] if isinstance(i, list) and i else i
        token = tok.id_to_token(i) if isinstance(i, int) else None
        if token is None:
            named = names.get(f"{kind}_token")
            named = named.get("content") if isinstance(named, dict) else named
            token = named if isinstance(named, str) and tok.token_to_id(named) is not None else None
        out[f"{kind}_token"] = token
    return out


def read_special_tokens(run_dir: Path) -> dict[str, str | None]:
    """RUN/special_tokens.json of an imported run ({} for a run nextoken trained: its end-of-text is all three)."""
    path = Path(run_dir) / SPECIAL_TOKENS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _convert_tokenizer(folder: Path) -> Path:
    transformers = require("transformers", "converting a tokenizer without tokenizer.json")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise InteropError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json and merges.txt, or "
                           "tokenizer.model)")
    try:
        fast = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        backend = fast.backend_tokenizer
    except Exception as e:  # missing converters (sentencepiece, tiktoken) and malformed files alike
        raise InteropError(f"transformers could not convert the tokenizer of {folder} to a fast one "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="nextoken-tokenizer-")) / "tokenizer.json"  # never into the model's folder
    backend.save(str(tmp))
    return tmp


def tokenizer_mismatch(expected: Tokenizer, data_dir: str | Path) -> str | None:
    """Why the data in `data_dir` was not prepared with `expected`, or None when it was."""
    from nextoken.data.prepare import read_manifest
    from nextoken.data.tokenizer import tokenizer_hash

    try:
        have = read_manifest(data_dir).get("tokenizer_hash")
    except DataError:
        return None  # the loop reports unprepared data in its own words
    return None if have == tokenizer_hash(expected) else "its tokenizer differs"
