"""One typed config tree: data, model, optim, train, stability, log.

Every field has a default and a one-line doc (its `help`), which `nextoken train --help` prints.
Precedence: defaults < preset < TOML file (`--config`) < `--section.field VALUE` flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from nextoken.errors import ConfigError


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class DataConfig:
    path: str = _f("", "prepared data directory or a built-in corpus, stdlib or stdlib-prose (empty: stdlib, prepared "
                   "once and cached); with data.mix, the mix's first source")
    mix: str = _f("", "a data mix NAME=WEIGHT,... (`--data stdlib=0.8,stdlib-prose=0.2`): prepared directories or "
                  "built-in corpora with one tokenizer, weights normalized (README, Mixing data)")
    max_repeat: float = _f(4.0, "most epochs any source of a mix may be trained for (Muennighoff et al. 2023: up to "
                           "about 4 are worth almost as much as fresh data); 0: no cap")
    on_repeat: str = _f("report", "a mix source over data.max_repeat: report it (an event line) or refuse the run",
                        ("report", "refuse"))
    packing: str = _f("windows", "windows: random windows of the token stream; bestfit: rows that start at a document, "
                      "packed best-fit with a BOS (docs/packing.md)", ("windows", "bestfit"))
    doc_mask: bool = _f(False, "keep attention inside documents (block-causal at the end-of-text separators)")
    tokenizer: str = _f("bpe", "tokenizer used when a built-in corpus is prepared: bpe, bytes or a tokenizer.json")
    vocab_size: int = _f(4096, "BPE vocabulary size used when a built-in corpus is prepared")


@dataclass
class ModelConfig:
    n_layer: int = _f(4, "transformer blocks")
    n_head: int = _f(4, "attention heads per block")
    d_model: int = _f(128, "residual stream width")
    block_size: int = _f(128, "context length in tokens")
    vocab_size: int = _f(0, "vocabulary size (0: taken from the prepared data)")
    norm: str = _f("pre", "where the normalization sits in a block", ("pre", "post"))
    norm_type: str = _f("layernorm", "normalization layer", ("layernorm", "rmsnorm"))
    pos: str = _f("learned", "position encoding", ("learned", "rope"))
    mlp: str = _f("gelu", "feed-forward block", ("gelu", "swiglu"))
    mlp_ratio: float = _f(4.0, "hidden width of the MLP as a multiple of d_model (SwiGLU uses 2/3 of it)")
    tie_embeddings: bool = _f(True, "share the input embedding and the output projection")
    dropout: float = _f(0.0, "dropout probability (attention, residual and embeddings)")
    bias: bool = _f(False, "biases in linear layers and norms")
    rope_base: float = _f(10000.0, "RoPE base frequency")
    rotary_fraction: float = _f(1.0, "share of each head's channels RoPE rotates (GPT-NeoX's rotary_pct; Pythia 0.25)")
    n_kv_head: int = _f(0, "key/value heads, each shared by n_head / n_kv_head query heads: grouped-query "
                        "attention (Ainslie et al. 2023), multi-query at 1 (0: n_head, plain multi-head)")
    head_size: int = _f(0, "width of one attention head (0: d_model / n_head; Qwen3 sets it apart from d_model)")
    qk_norm: bool = _f(False, "RMSNorm on each head's queries and keys before RoPE (Dehghani et al. 2023, ViT-22B; "
                       "Qwen3): bounds the attention logits (Wortsman et al. 2023)")
    qkv_bias: bool = _f(False, "biases on the query, key and value projections only (Qwen2)")
    gelu: str = _f("exact", "GELU of the gelu MLP: exact (erf) or tanh (Hendrycks & Gimpel 2016, eq. 2; GPT-2's)",
                   ("exact", "tanh"))
    parallel_residual: bool = _f(False, "attention and MLP read the same block input and add to it together "
                                 "(GPT-J, GPT-NeoX/Pythia) instead of one after the other")
    norm_eps: float = _f(1e-5, "epsilon of every LayerNorm / RMSNorm")
    mlp_hidden: int = _f(0, "hidden width of the MLP (0: from mlp_ratio); real checkpoints use widths the ratio "
                         "rule cannot reach")
    attention: str = _f("causal", "causal (each position sees those before it) or bidirectional (every position "
                        "sees all: for train.objective mlm)", ("causal", "bidirectional"))
    depth: int = _f(0, "the depth dial: setting it (or aspect_ratio) derives n_layer, d_model, n_head, block_size, the "
                    "learning rates, batch and steps from it, replacing the preset's (docs/dial.md); fields set "
                    "explicitly still win (0: off)")
    aspect_ratio: int = _f(64, "depth dial: d_model = aspect_ratio x depth (64: nanochat's; Kaplan et al. 2020 find "
                           "the loss flat from about 20 to 200)")

    @property
    def head_dim(self) -> int:
        """K, the width of one attention head: head_size, or d_model / n_head."""
        return self.head_size or self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """The key/value heads: n_kv_head, or n_head."""
        return self.n_kv_head or self.n_head

    @property
    def rotary_dim(self) -> int:
        """The channels of a head RoPE rotates (rotary_fraction of K, as GPT-NeoX rounds it down)."""
        return int(self.head_dim * self.rotary_fraction)

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width F: mlp_hidden, or from mlp_ratio. SwiGLU keeps the parameter count of a GELU
        MLP of ratio r with 2/3 of its width (Shazeer 2020), rounded up to a multiple of 8."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-int(2 * self.mlp_ratio * self.d_model / 3) // 8) * 8
        return int(self.mlp_ratio * self.d_model)


@dataclass
class OptimConfig:
    name: str = _f("adamw", "optimizer: adamw, or muon (Muon for the blocks' weight matrices, AdamW for the rest)",
                   ("adamw", "muon"))
    lr: float = _f(3e-3, "peak learning rate (AdamW's; with optim.name muon, of the AdamW group)")
    muon_lr: float = _f(0.02, "muon: peak learning rate of the Muon group (it follows the same schedule)")
    muon_momentum: float = _f(0.95, "muon: momentum (Nesterov)")
    weight_decay: float = _f(0.1, "decoupled weight decay of matrices (each step scales one by 1 - LR x this): "
                             "AdamW's at optim.lr, and with optim.name muon the Muon group's too, at optim.muon_lr "
                             "(torch.optim.Muon's rule), so stronger there by muon_lr / lr")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "global gradient-norm clip (0: off)")
    schedule: str = _f("cosine", "LR schedule after warmup", ("cosine", "linear", "wsd", "constant"))
    warmup_steps: int = _f(100, "linear warmup steps; one that does not fit in train.max_steps is cut to a tenth of it")
    min_lr_ratio: float = _f(0.1, "final LR as a fraction of the peak")
    decay_ratio: float = _f(0.2, "wsd: fraction of the steps spent in the final decay")


@dataclass
class TrainConfig:
    max_steps: int = _f(2000, "optimizer steps")
    batch_size: int = _f(32, "sequences per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    eval_every: int = _f(250, "steps between evaluations (0: only at the end)")
    eval_tokens: int = _f(65536, "val tokens per evaluation (0: the whole val split)")
    eval_tasks: str = _f("", "downstream tasks scored at each evaluation, comma-separated: task .jsonl files or "
                         "builtin:nextline (docs/eval.md)")
    ckpt_every: int = _f(500, "steps between checkpoints (0: only at the end)")
    keep: int = _f(2, "checkpoints kept (the newest K)")
    log_every: int = _f(10, "steps between train metric lines")
    seed: int = _f(1337, "seed for init, data order and dropout")
    precision: str = _f("auto", "auto: bf16 autocast on CUDA, fp32 on CPU", ("auto", "fp32", "bf16"))
    compile: str = _f("auto", "torch.compile: auto measures eager against compiled on long runs and keeps the "
                      "faster (cached per machine and shape); short runs: compiled on CUDA, eager on CPUs; "
                      "runs shorter than one compile: eager",
                      ("auto", "on", "off"))
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    z_loss: float = _f(0.0, "z-loss coefficient (PaLM uses 1e-4)")
    label_smoothing: float = _f(0.0, "label smoothing")
    objective: str = _f("next", "next (next-token prediction, teacher forced), mlm (masked tokens, BERT's 80/10/10; "
                        "needs model.attention bidirectional and one id above the data's vocabulary for [MASK]) or "
                        "scheduled-sampling (inputs partly the model's own predictions)",
                        ("next", "mlm", "scheduled-sampling"))
    mask_rate: float = _f(0.15, "mlm: share of positions predicted")
    sampling_prob: float = _f(0.25, "scheduled-sampling: share of input tokens replaced by the model's own sample "
                              "(1: every input is the model's)")
    threads: int = _f(0, "CPU threads for torch (0: one per core idle when the run starts, at most torch's default; "
                         "kept by --resume)")
    parallel: str = _f("ddp", "data parallelism under torchrun: ddp, or fsdp (FSDP2, sharded)", ("ddp", "fsdp"))
    init_from: str = _f("", "start from the weights of a run, checkpoint or Hugging Face model directory, with a "
                        "fresh optimizer and schedule; the model's shape comes from it")


@dataclass
class StabilityConfig:
    # docs/stability.md explains the detector, the policies and the snapshot ring's cost.
    policy: str = _f("rollback", "on a loss spike or non-finite step: warn (log only), skip the update, or "
                     "roll back", ("warn", "skip", "rollback"))
    window: int = _f(100, "steps in the rolling window a step's loss and grad norm are compared with")
    threshold: float = _f(6.0, "spike: more than this many robust sd (1.4826 MAD) above the window's median")
    rollback_steps: int = _f(100, "rollback: restore the newest snapshot at least this many steps before the spike")
    skip_batches: int = _f(300, "rollback: batches of the data stream skipped after the restored position")
    max_rollbacks: int = _f(3, "rollback: give up after this many rollbacks within rollback_window steps")
    rollback_window: int = _f(1000, "rollback: the window, in steps, that max_rollbacks counts over")
    snapshot_every: int = _f(50, "rollback: steps between in-memory snapshots (ring of rollback_steps/this + 1)")
    inject: str = _f("", "fault injection, e.g. lr@300x100,batch@350,nan@450")


@dataclass
class LogConfig:
    progress: str = _f("auto", "rich progress display", ("auto", "on", "off"))
    tensorboard: bool = _f(False, "also log to TensorBoard (RUN/tensorboard)")
    wandb: bool = _f(False, "also log to Weights & Biases (honours WANDB_MODE=offline)")
    wandb_project: str = _f("nextoken", "Weights & Biases project")
    sample_tokens: int = _f(200, "tokens in the sample printed at the end of a run")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)

    def model_hash(self) -> str:
        """Hash of the fields that fix the weights' shapes: a checkpoint only loads into the same. Fields added
        after runs existed count only away from their default, so those runs keep their hash (and --resume)."""
        fields = {k: v for k, v in dataclasses.asdict(self.model).items()
                  if _ADDED_MODEL_FIELDS.get(k, ...) != v and k not in _DIAL_FIELDS}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# field: its default. Runs written before a field existed hash (and resume) as before.
_ADDED_MODEL_FIELDS = {"attention": "causal", "rotary_fraction": 1.0, "n_kv_head": 0, "head_size": 0,
                       "qk_norm": False, "qkv_bias": False, "gelu": "exact", "parallel_residual": False,
                       "norm_eps": 1e-5, "mlp_hidden": 0}
_DIAL_FIELDS = {"depth", "aspect_ratio"}  # inputs of the depth dial: the shapes they derive are hashed instead


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):  # JSON's escapes are TOML's; characters raw (TOML has no surrogate pairs), DEL escaped
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(v)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_types(section: str) -> dict[str, type]:
    cls = type(getattr(Config(), section))
    return get_type_hints(cls)


def field_docs(preset: str | None = None) -> list[tuple[str, str, Any, str]]:
    """(flag name, type name, default, help) for every field, for `--help`; the defaults are those of `preset`
    where one is given (`nextoken train` without --preset uses `tiny`)."""
    out = []
    cfg = Config()
    if preset:
        PRESETS[preset](cfg)
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        hints = get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            help_ = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                help_ += f" ({'|'.join(f.metadata['choices'])})"
            out.append((f"{sec.name}.{f.name}", hints[f.name].__name__, getattr(obj, f.name), help_))
    return out


def _coerce(name: str, typ: type, raw: Any) -> Any:
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if typ is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if typ is int:
                value = float(text) if ("e" in text.lower() and "x" not in text.lower()) else int(text, 0)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(value)
            if typ is float:
                return float(text)
            return text
        except ValueError:
            raise ConfigError(f"--{name}: {raw!r} is not a valid {typ.__name__}") from None
    if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if typ is bool and not isinstance(raw, bool) or typ is not bool and isinstance(raw, bool):
        raise ConfigError(f"{name}: {raw!r} is not a valid {typ.__name__}")
    if not isinstance(raw, typ):
        raise ConfigError(f"{name}: {raw!r} is not a valid {typ.__name__}")
    return raw


def set_field(cfg: Config, dotted: str, raw: Any) -> None:
    """Set `section.field` from a string (a flag) or a TOML value, checking name and type."""
    name = dotted.replace("-", "_")
    if "." not in name:
        raise ConfigError(f"unknown option --{dotted}: config fields are spelled --section.field (see --help)")
    section, key = name.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r} in --{dotted}; sections: {', '.join(SECTIONS)}")
    hints = _section_types(section)
    if key not in hints:
        close = [k for k in hints if k.startswith(key[:3])]
        hint = f" (did you mean {section}.{close[0]}?)" if close else ""
        raise ConfigError(f"unknown config field {section}.{key}{hint}; see `nextoken train --help`")
    value = _coerce(f"{section}.{key}", hints[key], raw)
    setattr(getattr(cfg, section), key, value)


def apply_dict(cfg: Config, data: dict[str, Any], origin: str) -> None:
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: top-level key {section!r} must be a [section] table")
        for key, value in values.items():
            set_field(cfg, f"{section}.{key}", value)


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing TOML file to --config")
    try:
        # surrogateescape: a path that is not UTF-8 is written as its bytes (run.write_atomic) and read back
        return tomllib.loads(p.read_text(encoding="utf-8", errors="surrogateescape"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML ({e}); fix the file") from None


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """Turn ['--optim.lr', '3e-4', '--model.n_layer=6'] into [('optim.lr', '3e-4'), ...]."""
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r}; config fields are set as --section.field VALUE")
        a = a[2:]
        if "=" in a:
            k, v = a.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
                raise ConfigError(f"--{a} needs a value")
            k, v = a, args[i + 1]
            i += 2
        out.append((k, v))
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def validate(cfg: Config) -> None:
    """Values that parse but make no sense: one line each, naming the field."""
    m, o, t, st = cfg.model, cfg.optim, cfg.train, cfg.stability
    checks = [
        (m.n_layer >= 1, "model.n_layer must be >= 1"),
        (m.n_head >= 1, "model.n_head must be >= 1"),
        (m.d_model >= 1 and (m.head_size > 0 or m.d_model % max(m.n_head, 1) == 0),
         f"model.d_model ({m.d_model}) must be a positive multiple of model.n_head ({m.n_head})"),
        (m.head_size >= 0, "model.head_size must be >= 0 (0: d_model / n_head)"),
        (m.n_kv_head >= 0 and m.n_head % max(m.kv_heads, 1) == 0,
         f"model.n_kv_head ({m.n_kv_head}) must divide model.n_head ({m.n_head}) (0: n_head)"),
        (0.0 < m.rotary_fraction <= 1.0, f"model.rotary_fraction must be in (0, 1], got {m.rotary_fraction}"),
        (m.norm_eps > 0, f"model.norm_eps must be positive, got {m.norm_eps}"),
        (not (m.parallel_residual and m.norm == "post"),
         "model.parallel_residual needs model.norm pre (post-LN normalizes the sum of one sublayer at a time)"),
        (m.mlp_hidden >= 0, "model.mlp_hidden must be >= 0 (0: from model.mlp_ratio)"),
        (m.block_size >= 2, "model.block_size must be >= 2"),
        (0 <= m.depth <= 1000, f"model.depth must be in [0, 1000] (0: the dial off), got {m.depth}"),
        (4 <= m.aspect_ratio <= 1024, f"model.aspect_ratio must be in [4, 1024], got {m.aspect_ratio}"),
        (m.pos != "rope" or (m.n_head >= 1 and m.rotary_dim % 2 == 0 and m.rotary_dim > 0),
         "model.pos rope needs an even number of rotated channels per head (head size x model.rotary_fraction)"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (m.vocab_size >= 0, "model.vocab_size must be >= 0"),
        (o.lr > 0, f"optim.lr must be positive (got {o.lr})"),
        (o.muon_lr > 0 and 0 <= o.muon_momentum < 1,
         "optim.muon_lr must be positive and optim.muon_momentum in [0, 1)"),
        (o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (o.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 turns clipping off)"),
        (0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]"),
        (0 < o.decay_ratio <= 1, "optim.decay_ratio must be in (0, 1]"),
        (o.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)"),
        (t.max_steps >= 1, "train.max_steps must be >= 1"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})"),
        (t.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (t.eval_every >= 0 and t.ckpt_every >= 0, "train.eval_every and train.ckpt_every must be >= 0"),
        (t.eval_tokens >= 0, "train.eval_tokens must be >= 0"),
        (t.keep >= 1, "train.keep must be >= 1"),
        (t.log_every >= 1, "train.log_every must be >= 1"),
        (t.z_loss >= 0, "train.z_loss must be >= 0"),
        (0 <= t.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
        (0 < t.mask_rate <= 1, "train.mask_rate must be in (0, 1]"),
        (0 <= t.sampling_prob <= 1, "train.sampling_prob must be in [0, 1]"),
        (t.objective != "mlm" or m.attention == "bidirectional",
         "train.objective mlm needs --model.attention bidirectional (a masked token is predicted from both sides)"),
        (t.objective == "mlm" or m.attention == "causal",
         f"model.attention bidirectional only suits train.objective mlm (got {t.objective}): each position would "
         "see the token it predicts"),
        (cfg.data.vocab_size >= 260, "data.vocab_size must be >= 260 (256 bytes plus special tokens)"),
        (cfg.data.max_repeat >= 0, "data.max_repeat must be >= 0 (0: no cap)"),
        (st.window >= 3, "stability.window must be >= 3"),
        (st.threshold > 0, "stability.threshold must be > 0"),
        (st.rollback_steps >= 0 and st.skip_batches >= 0, "stability.rollback_steps and skip_batches must be >= 0"),
        (st.max_rollbacks >= 1 and st.rollback_window >= 1, "stability.max_rollbacks and rollback_window must be >= 1"),
        (st.snapshot_every >= 1, "stability.snapshot_every must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    parse_inject(cfg.stability.inject)
    if cfg.data.mix:
        from nextoken.data.mixture import parse_mix

        parse_mix(cfg.data.mix)
    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            choices = f.metadata.get("choices")
            if choices and getattr(obj, f.name) not in choices:
                raise ConfigError(f"{section}.{f.name} must be one of {', '.join(choices)} "
                                  f"(got {getattr(obj, f.name)!r})")


_FAULT = re.compile(r"^(lr|batch|nan)@(\d+)(?:x([0-9.eE+-]+))?$")


def parse_inject(spec: str) -> list[tuple[str, int, float]]:
    """`stability.inject` as (kind, data step, factor) triples: `lr@300x100,batch@350,nan@450` gives
    [("lr", 300, 100.0), ("batch", 350, 1.0), ("nan", 450, 1.0)]; an lr fault without a factor multiplies by 100.
    Raises ConfigError, naming the item, for anything else."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = _FAULT.match(item)
        if not m:
            raise ConfigError(f"stability.inject: {item!r} is not KIND@STEP or KIND@STEPxFACTOR "
                              "(KIND: lr, batch, nan), e.g. lr@300x100")
        kind, step, factor = m.group(1), int(m.group(2)), 1.0
        if kind == "lr":
            try:
                factor = float(m.group(3)) if m.group(3) else 100.0
            except ValueError:
                raise ConfigError(f"stability.inject: {item!r} has a non-numeric factor") from None
            if not math.isfinite(factor) or factor <= 0:
                raise ConfigError(f"stability.inject: {item!r} needs a positive finite factor")
        out.append((kind, step, factor))
    return out


# ---- presets ---------------------------------------------------------------------------------------

def _tiny(cfg: Config) -> None:
    # The default run, chosen by measurement on the 2-core CPU (docs/LOG.md, "the default run, retuned"): the depth
    # dial at depth 4 and aspect ratio 32 (4 x 128, 2 heads of 64, context 128), RoPE, BPE-4096; Muon at 0.04 for
    # the blocks' matrices and AdamW at 6e-3 for the rest (each measured best of three); 16 sequences a step for
    # 1400 steps (2.9M tokens: at these budgets the model is short of updates, not of data; 1400, not the old
    # preset's 1500, because Muon's orthogonalization makes a step ~6% slower here: same wall-clock).
    cfg.model.pos = "rope"
    cfg.model.depth, cfg.model.aspect_ratio = 4, 32
    apply_depth_dial(cfg)
    cfg.optim.name, cfg.optim.muon_lr, cfg.optim.lr, cfg.optim.warmup_steps = "muon", 0.04, 6e-3, 50
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.grad_accum = 1400, 16, 1
    cfg.train.eval_every = 280


def _small(cfg: Config) -> None:
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.block_size = 6, 6, 384, 256
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-3, 200
    cfg.train.max_steps, cfg.train.batch_size = 5000, 32
    cfg.train.eval_every, cfg.train.ckpt_every = 500, 1000


def _gpt2_124m(cfg: Config) -> None:
    # GPT-2 small's shape (Radford et al. 2019): 12 x 768, 12 heads, context 1024, 50257-token vocab.
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.block_size = 12, 12, 768, 1024
    cfg.model.bias = False
    cfg.data.vocab_size = 50257
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay = 6e-4, 700, 0.1
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.grad_accum = 19000, 16, 32
    cfg.train.eval_every, cfg.train.ckpt_every, cfg.train.eval_tokens = 1000, 1000, 1 << 20


def _scaling(cfg: Config) -> None:
    # The base of `nextoken sweep` (docs/LOG.md, "scaling laws"): byte-level tokens, because with a BPE
    # vocabulary a tiny model's FLOPs are mostly its logits (6·V·d per token) and the IsoFLOP profiles in
    # non-embedding N came out monotone at CPU budgets; spikes logged, not acted on, so that every run
    # of a sweep trains the same way.
    cfg.data.tokenizer = "bytes"
    cfg.train.batch_size = 16
    cfg.stability.policy = "warn"


PRESETS = {"tiny": _tiny, "small": _small, "gpt2-124m": _gpt2_124m, "scaling": _scaling}


def build_config(preset: str | None = None, file: str | None = None,
                 overrides: list[tuple[str, str]] | None = None) -> Config:
    """The config of defaults < preset < `model.depth` dial < TOML file < flags. The dial (model/dial.py:
    depth_dial) derives shape, learning rates, batch and steps when the file or a flag sets model.depth or
    model.aspect_ratio (a preset may use it too); any field the file or a flag sets itself keeps that value.
    Raises ConfigError (one line) for an unknown preset, field or value."""
    if preset and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    data = load_toml(file) if file else {}

    def layers(dial=None) -> Config:
        cfg = Config()
        if preset:
            PRESETS[preset](cfg)
        if dial is not None:
            dial.apply(cfg)
        apply_dict(cfg, data, str(file))
        for key, value in overrides or []:
            set_field(cfg, key, value)
        return cfg

    cfg = layers()
    given = {f"{sec}.{k}" for sec, v in data.items() if isinstance(v, dict) for k in v}
    given |= {k.replace("-", "_") for k, _ in overrides or []}
    if cfg.model.depth > 0 and given & {"model.depth", "model.aspect_ratio"}:
        # derived from the config as given (its vocabulary, positions, MLP...), then file and flags on top
        cfg = layers(_dial_of(cfg))
        if "model.d_model" in given and "model.n_head" not in given:  # heads follow a width set by hand
            from nextoken.model.dial import heads_for

            cfg.model.n_head = heads_for(cfg.model.d_model, cfg.model.pos)
    validate(cfg)
    return cfg


def _dial_of(cfg: Config):
    """What the depth dial derives from cfg.model.depth and aspect_ratio and the rest of cfg.model, the
    vocabulary counted as the data will fix it when model.vocab_size is 0 (data.vocab_size for BPE, 256
    otherwise). Raises ConfigError for a depth or aspect ratio out of range."""
    from nextoken.model.dial import depth_dial

    m = cfg.model
    if not 1 <= m.depth <= 1000:
        raise ConfigError(f"model.depth must be in [1, 1000] for the depth dial, got {m.depth}")
    if not 4 <= m.aspect_ratio <= 1024:
        raise ConfigError(f"model.aspect_ratio must be in [4, 1024] (d_model per layer; 64 is nanochat's), "
                          f"got {m.aspect_ratio}")
    vocab = m.vocab_size or (cfg.data.vocab_size if cfg.data.tokenizer == "bpe" else 256)
    return depth_dial(m.depth, dataclasses.replace(m, vocab_size=vocab))


def apply_depth_dial(cfg: Config) -> None:
    """Replace the shape, learning rates, batch and steps of `cfg` by what the depth dial derives from
    cfg.model.depth and aspect_ratio (model/dial.py: depth_dial); model.vocab_size stays as it was. Raises
    ConfigError for a depth or aspect ratio out of range."""
    _dial_of(cfg).apply(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    apply_dict(cfg, data, "config")
    return cfg
