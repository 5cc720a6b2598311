"""`nextoken export RUN --out DIR`: a directory that transformers' AutoModelForCausalLM and AutoTokenizer load
with no network and no custom code, computing the same function as the run's checkpoint.

    DIR/config.json              the architecture adapters.py chose for the run's options
    DIR/model.safetensors        the weights in that architecture's names and layouts (tied ones once)
    DIR/generation_config.json   bos, eos and pad ids: an imported model's own (RUN/special_tokens.json), else
                                 nextoken's end-of-text for all three; generation stops at eos
    DIR/tokenizer.json, tokenizer_config.json, special_tokens_map.json   with a pad token, so that
                                 `tokenizer([...], padding=True)` works
    DIR/README.md                a model card: config, data, final val figures, how it was trained

Written into a temporary directory beside DIR and renamed into place, so a refusal or a failure leaves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from nextoken.atomic import building
from nextoken.config import ModelConfig
from nextoken.data.tokenizer import end_of_text, save_tokenizer
from nextoken.interop import InteropError, require
from nextoken.interop.adapters import adapter_for_model
from nextoken.run import Run

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HF_DTYPE = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def export(run: Run | str | Path, out: str | Path, step: int | None = None, dtype: str | None = None,
           check: bool = True, force: bool = False) -> dict:
    """Export `run`'s checkpoint at `step` (default: the newest) to `out`. `dtype` fp32, bf16 or fp16 casts the
    weights (default: kept as trained). With `check`, transformers loads the result and its logits on random
    tokens are compared with nextoken's (`max_abs_diff`). Returns what was written. Raises InteropError for a
    run with no exact transformers equivalent (naming the option), a missing extra or an occupied `out`."""
    run = run if isinstance(run, Run) else Run(run)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise InteropError(f"{out} already exists and is not empty; choose another --out or pass --force")
    if dtype is not None and dtype not in DTYPES:
        raise InteropError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    loaded = run.load(step)
    m: ModelConfig = loaded.model.cfg
    adapter = adapter_for_model(m)  # refuses before anything is written
    if check:
        require("transformers", "the check of an export (--no-check skips it)")
    sd = loaded.model.state_dict()
    kept = sd["wte.weight"].dtype
    target = DTYPES[dtype] if dtype else kept
    tensors = {k: v.detach().to(target).contiguous() for k, v in adapter.to_hf(sd, m).items()}
    special = special_tokens(run, loaded.tokenizer)
    ids = {f"{k}_id": loaded.tokenizer.token_to_id(v) if v else None for k, v in special.items()}

    config = {"architectures": [adapter.architecture], "model_type": adapter.model_type, **adapter.config(m),
              **ids, "torch_dtype": _HF_DTYPE[target], "use_cache": True}
    with building(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", ids)
        _write_tokenizer(tmp, loaded.tokenizer, m.block_size, special)
        (tmp / "README.md").write_text(model_card(loaded, adapter.architecture, target))
        result = {"out": str(out), "architecture": adapter.architecture, "step": loaded.step,
                  "checkpoint": str(loaded.checkpoint), "dtype": _HF_DTYPE[target],
                  "bytes": (tmp / "model.safetensors").stat().st_size}
        if check:
            result["max_abs_diff"] = logit_difference(loaded.model, tmp, target)
    return result


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def special_tokens(run: Run, tok) -> dict[str, str]:
    """bos, eos and pad tokens of the export: an imported model's own where it had them (a model without a pad
    token pads with eos, as GPT-2's users do), else nextoken's end-of-text, which separated the documents."""
    from nextoken.interop.hf_import import read_special_tokens

    have = read_special_tokens(run.path)
    eot = end_of_text(tok)
    eos = have.get("eos_token") or eot
    return {"bos_token": have.get("bos_token") or (eot if not have else None), "eos_token": eos,
            "pad_token": have.get("pad_token") or eos}


def _write_tokenizer(folder: Path, tok, block_size: int, special: dict[str, str | None]) -> None:
    """tokenizer.json as the run has it, and the config that makes AutoTokenizer a PreTrainedTokenizerFast over
    it: the special tokens, nothing added around the text by the config (a tokenizer.json's own post-processor,
    such as Llama's bos, still applies), no clean-up of spaces on decode, and special-token literals split as
    text (`split_special_tokens`), as nextoken encoded them in training."""
    save_tokenizer(tok, folder / "tokenizer.json")
    special = {k: v for k, v in special.items() if v}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": block_size,
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "split_special_tokens": True})


def logit_difference(model: torch.nn.Module, folder: Path, dtype: torch.dtype, seed: int = 0) -> float:
    """Max |logit difference| between transformers' model loaded from `folder` (computing in fp32) and
    `model` with its weights rounded to the exported `dtype`, on two random sequences."""
    transformers = require("transformers", "the check of an export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **dtype_argument(transformers, torch.float32))
    hf.eval()
    ours = type(model)(model.cfg)
    ours.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    ours.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.vocab_size, (2, min(model.cfg.block_size, 64)), generator=g)
    with torch.no_grad():
        return (hf(ids).logits.float() - ours(ids)).abs().max().item()


def dtype_argument(transformers, dtype: torch.dtype) -> dict:
    """from_pretrained's dtype keyword: `dtype` from transformers 5 on, `torch_dtype` before."""
    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}


def model_card(loaded, architecture: str, dtype: torch.dtype) -> str:
    """README.md of an export: what the model is, what it was trained on, how well it does, how to rebuild it."""
    run, cfg = loaded.run, loaded.run.config
    evals = [r for r in run.last_per_step("eval") if r["step"] <= loaded.step]
    last = evals[-1] if evals else None
    data = _data_summary(cfg.data.path)
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [nextoken]", "---", "",
             f"# {run.name}", "",
             f"A {architecture} exported by `nextoken export` from `{run.path}` at step {loaded.step} "
             f"({loaded.trainer.get('tokens', 0):,} training tokens), {_HF_DTYPE[dtype]} weights. transformers "
             "computes the same function as nextoken's model (the export compared their logits).", "",
             "    from transformers import AutoModelForCausalLM, AutoTokenizer",
             "    model = AutoModelForCausalLM.from_pretrained(DIR)",
             "    tokenizer = AutoTokenizer.from_pretrained(DIR)", "", "## Evaluation", ""]
    if last:
        lines += [f"Held-out ({last['split']}) at step {last['step']}: loss {last['loss']:.4f} nats per token, "
                  f"perplexity {last['ppl']:.2f}, {last['bits_per_token']:.3f} bits per token, "
                  f"{last['bits_per_byte']:.4f} bits per byte.", ""]
    else:
        lines += ["No evaluation was recorded for this checkpoint (`nextoken eval RUN --data DATA` measures one).", ""]
    lines += ["## Data", "", data, "", "## Training", "",
              "Trained with nextoken; saved as config.toml, this resolved config reproduces the run:",
              "", f"    nextoken train --config config.toml --data {cfg.data.path or 'DATA'} --out {run.name}", "",
              "```toml", cfg.to_toml().strip(), "```", ""]
    return "\n".join(lines)


def _data_summary(path: str) -> str:
    from nextoken.data.prepare import read_manifest
    from nextoken.errors import DataError

    if not path:
        return "Not recorded (the run names no prepared data)."
    try:
        man = read_manifest(path)
    except DataError:
        return f"`{path}` (no longer readable where the run was trained)."
    sp = man["splits"]
    return (f"Sources: {', '.join(map(str, man['sources']))}; {man['documents']:,} documents; tokenizer "
            f"{man['tokenizer']} with {man['vocab_size']:,} ids. Train split: {sp['train']['tokens']:,} tokens, "
            f"{sp['train']['bytes']:,} bytes of UTF-8; val split: {sp['val']['tokens']:,} tokens, "
            f"{sp['val']['bytes']:,} bytes.")
