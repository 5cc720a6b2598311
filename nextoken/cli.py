"""The `nextoken` command: parses, calls the library, prints (STYLE rule 1).

Human output goes to stderr; `--json` prints one JSON object on stdout and nothing else there.
Errors are one line on stderr with a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nextoken.errors import ConfigError, NextokenError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _nonnegative_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _train_epilog() -> str:
    from nextoken.config import PRESETS, field_docs

    lines = ["config fields (set as --section.field VALUE; precedence: preset < --config file < flags):"]
    for name, typ, default, help_ in field_docs():
        lines.append(f"  --{name:<24} {typ:<5} {str(default)!s:<10} {help_}")
    lines.append(f"\npresets: {', '.join(PRESETS)}")
    return "\n".join(lines)


class UsageError(ConfigError):
    """A malformed command line, reported in one line like every other error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage lines and exits; we want one line
        raise UsageError(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nextoken", description="Pretrain decoder-only transformers by next-token "
                                "prediction. `nextoken train` with no arguments trains a small model on the "
                                "Python standard library's source.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    pr = sub.add_parser("prepare", help="text to tokenizer + token shards")
    pr.add_argument("sources", nargs="*", default=["stdlib"],
                    help="files, directories, globs, .jsonl/.parquet files, `stdlib` (default) or `stdlib+tests` "
                         "(with its test suites: twice the text)")
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument("--tokenizer", default="bpe", help="bpe (trained here), bytes, or a tokenizer.json path")
    pr.add_argument("--vocab-size", type=_positive_int, default=4096, help="BPE vocabulary size (default 4096)")
    pr.add_argument("--val-fraction", type=float, default=0.02, help="share of documents in val (default 0.02)")
    pr.add_argument("--text-field", default="text", help="text field of .jsonl/.parquet rows (default text)")
    pr.add_argument("--utf8", choices=("strict", "replace"), default="strict",
                    help="invalid UTF-8: strict refuses the file, replace substitutes U+FFFD and counts")
    pr.add_argument("--force", action="store_true", help="replace an existing output directory")
    pr.add_argument("--json", action="store_true", help="print the manifest as JSON")

    tr = sub.add_parser("train", help="train a model", formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=_train_epilog())
    tr.add_argument("--config", help="TOML config file")
    tr.add_argument("--preset", help="tiny (default), small, gpt2-124m")
    tr.add_argument("--data", help="prepared data directory (default: the built-in stdlib corpus)")
    tr.add_argument("--out", help="run directory (default: runs/PRESET-TIMESTAMP)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    tr.add_argument("--json", action="store_true", help="print the final figures as JSON")

    ev = sub.add_parser("eval", help="held-out loss, perplexity, bits per byte of a checkpoint")
    ev.add_argument("run", metavar="RUN|CKPT")
    ev.add_argument("--data", help="prepared data directory (default: the run's)")
    ev.add_argument("--split", default="val")
    ev.add_argument("--tokens", type=_nonnegative_int, default=0, help="tokens to evaluate (default: the whole split)")
    ev.add_argument("--json", action="store_true")

    sa = sub.add_parser("sample", help="generate text")
    sa.add_argument("run", metavar="RUN|CKPT")
    sa.add_argument("--prompt", default="")
    sa.add_argument("--max-new-tokens", type=_positive_int, default=200)
    sa.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    sa.add_argument("--top-k", type=int, default=None)
    sa.add_argument("--top-p", type=float, default=None)
    sa.add_argument("--seed", type=int, default=None)

    nx = sub.add_parser("next", help="the next-token distribution for a prompt")
    nx.add_argument("run", metavar="RUN|CKPT")
    nx.add_argument("--prompt", required=True)
    nx.add_argument("--temperature", type=float, default=1.0)
    nx.add_argument("--top", type=int, default=10)
    nx.add_argument("--json", action="store_true")

    pl = sub.add_parser("plot", help="loss and LR curves of a run, as PNG")
    pl.add_argument("run", metavar="RUN")
    pl.add_argument("--out", help="PNG path (default RUN/loss.png)")

    _add_scaling_commands(sub)
    return p


def _add_scaling_commands(sub) -> None:
    try:
        from nextoken.scaling import cli as scaling_cli
    except ImportError:
        return
    scaling_cli.add_parsers(sub)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.cmd is None and "-h" not in argv and "--help" not in argv:
            args, extra = parser.parse_known_args(["train", *argv])
    except UsageError as e:
        if "--debug" in argv:
            raise
        _err(f"error: {e}")
        return e.exit_code
    try:
        if args.cmd is None:
            parser.print_help()
            return 0
        if extra and args.cmd != "train" and not getattr(args, "config_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        handler = COMMANDS.get(args.cmd) or getattr(args, "handler", None)
        code = handler(args, extra) or 0
        if (distributed := sys.modules.get("nextoken.train.distributed")) is not None:
            distributed.shutdown()  # after a failure the process exits without it: a peer may be gone
        return code
    except NextokenError as e:
        if args.debug:
            raise
        _err(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


def cmd_prepare(args, extra) -> int:
    from nextoken.data.prepare import PrepareOptions, prepare

    opt = PrepareOptions(tokenizer=args.tokenizer, vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                         text_field=args.text_field, utf8=args.utf8, force=args.force)
    manifest = prepare(args.sources, args.out, opt, log=_err)
    if args.json:
        print(json.dumps(manifest))
    return 0


def _train_config(args, extra):
    from nextoken.config import (
        Config,
        apply_dict,
        build_config,
        load_toml,
        parse_overrides,
        set_field,
        validate,
    )

    overrides = parse_overrides(extra)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out RUN, the run to continue")
    if args.resume and not (Path(args.out) / "config.toml").is_file():
        raise ConfigError(f"{args.out} has no checkpoint to resume from (it holds no run); check --out, "
                          "or run without --resume")
    run_config = Path(args.out) / "config.toml" if args.out else None
    if args.resume and not args.config and not args.preset and run_config and run_config.is_file():
        cfg = Config()
        apply_dict(cfg, load_toml(run_config), str(run_config))
        for k, v in overrides:
            set_field(cfg, k, v)
        validate(cfg)
    else:
        cfg = build_config(args.preset or "tiny", args.config, overrides)
    if args.data:
        cfg.data.path = args.data
    return cfg


def cmd_train(args, extra) -> int:
    from nextoken.data.builtin import stdlib_data
    from nextoken.train.distributed import main_first
    from nextoken.train.loop import train

    cfg = _train_config(args, extra)
    with main_first(cfg.train) as dist:  # under torchrun rank 0 prepares the built-in corpus, the others wait
        if not cfg.data.path:
            cfg.data.path = str(stdlib_data(cfg.data.tokenizer, cfg.data.vocab_size, log=_err))
    cfg.data.path = str(Path(cfg.data.path).resolve())
    if dist.enabled and not args.out:
        raise ConfigError("a multi-process run needs --out RUN, the one directory all its processes share")
    out = args.out or _new_run_dir(f"runs/{args.preset or 'tiny'}-{time.strftime('%Y%m%d-%H%M%S')}")
    res = train(cfg, out, resume=args.resume)  # its first line says where it trains into
    model = res.pop("model")
    if res.pop("rank", 0) != 0:  # only rank 0 reports, samples and plots
        return 0
    if args.json:
        print(json.dumps(res))
        return 0
    _err(f"\nval loss {res['loss']:.4f} nats/token   perplexity {res['ppl']:.2f}   "
         f"bits/byte {res['bits_per_byte']:.3f}   ({res['tokens']:,} tokens in {res['elapsed_s']:.0f}s)")
    _print_sample(model, out, cfg)
    from nextoken.plot import plot_run

    png = plot_run(out)
    _err(f"\nplot: {png}\ncheckpoint: {res['checkpoint']}\n"
         f"next: nextoken sample {out} --prompt 'def'   |   nextoken eval {out}")
    return 0


def _print_sample(model, run_dir, cfg) -> None:
    from nextoken.data.tokenizer import load_tokenizer
    from nextoken.generate import stream_text

    if cfg.log.sample_tokens <= 0:
        return
    tok = load_tokenizer(Path(run_dir) / "tokenizer.json")
    prompt = "def"
    _err(f"\nsample (temperature 0.8, top-k 50):\n{'-' * 60}")
    sys.stderr.write(prompt)
    for piece in stream_text(tok, model, prompt, cfg.log.sample_tokens, temperature=0.8, top_k=50, seed=0):
        sys.stderr.write(piece)
        sys.stderr.flush()
    _err(f"\n{'-' * 60}")


def cmd_eval(args, extra) -> int:
    from nextoken import inference
    from nextoken.data.loader import TokenData
    from nextoken.data.tokenizer import token_byte_lengths
    from nextoken.eval.evaluate import evaluate
    from nextoken.train.rundir import read_run_config

    loaded = inference.load(args.run)
    data_dir = args.data or read_run_config(loaded.run_dir).data.path
    data = TokenData(data_dir, args.split)
    from nextoken.data.prepare import read_manifest
    from nextoken.errors import DataError

    if read_manifest(data_dir)["vocab_size"] > loaded.model.cfg.vocab_size:
        raise DataError(f"{data_dir} has a larger vocabulary than the model; evaluate on the run's own data")
    res = evaluate(loaded.model, data, loaded.model.cfg.block_size, token_byte_lengths(loaded.tokenizer),
                   args.tokens)
    res.update(step=loaded.trainer["step"], tokens=loaded.trainer["tokens"], checkpoint=str(loaded.checkpoint))
    if args.json:
        print(json.dumps(res))
    else:
        _err(f"{loaded.checkpoint}: {args.split} loss {res['loss']:.4f}  ppl {res['ppl']:.2f}  "
             f"bits/token {res['bits_per_token']:.3f}  bits/byte {res['bits_per_byte']:.3f}  "
             f"({res['eval_tokens']:,} tokens)")
    return 0


def cmd_sample(args, extra) -> int:
    from nextoken import inference
    from nextoken.generate import check_sampling, stream_text

    check_sampling(args.temperature, args.top_k, args.top_p)
    loaded = inference.load(args.run)
    sys.stdout.write(args.prompt)
    for piece in stream_text(loaded.tokenizer, loaded.model, args.prompt, args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _new_run_dir(name: str) -> str:
    """`name`, or `name-2`, `name-3`, ... when runs started in the same second already took it."""
    out, n = name, 1
    while Path(out).exists():
        n += 1
        out = f"{name}-{n}"
    return out


def cmd_next(args, extra) -> int:
    from nextoken import inference
    from nextoken.generate import next_token_distribution

    if args.temperature <= 0:
        raise NextokenError(f"--temperature must be > 0 to show a distribution; got {args.temperature}")
    if args.top < 1:
        raise NextokenError(f"--top must be >= 1; got {args.top}")
    loaded = inference.load(args.run)
    dist = next_token_distribution(loaded.model, loaded.tokenizer, args.prompt, args.temperature, args.top)
    if args.json:
        print(json.dumps(dist))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"next token after {args.prompt!r} (temperature {args.temperature})")
    table.add_column("rank", justify="right")
    table.add_column("token")
    table.add_column("p", justify="right")
    table.add_column("-log p (nats)", justify="right")
    table.add_column("", justify="left")
    for i, row in enumerate(dist["top"], 1):
        table.add_row(str(i), repr(row["token"]), f"{row['prob']:.4f}", f"{row['neg_log_p']:.3f}",
                      "█" * max(1, round(row["prob"] * 40)))
    con = Console(stderr=True)
    con.print(f"prompt as {len(dist['prompt_tokens'])} tokens: " + " ".join(repr(t) for t in dist["prompt_tokens"]),
              markup=False)
    con.print(table)
    if dist["trailing_space"]:
        con.print("note: the prompt ends in a space token. This tokenizer glues a space to the word after it "
                  "(' os' is one token), so training text rarely has a bare space there and the distribution "
                  "above is skewed; drop the trailing space to see what the model expects next.", markup=False)
    con.print(f"entropy {dist['entropy_nats']:.3f} nats: the model hesitates between about "
              f"{dist['effective_choices']:.1f} tokens (e^H).")
    con.print("Temperature reshapes what sampling draws from; the loss and perplexity are always measured "
              "at temperature 1 and do not change with it.")
    return 0


def cmd_plot(args, extra) -> int:
    from nextoken.plot import plot_run

    _err(f"wrote {plot_run(args.run, args.out)}")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval, "sample": cmd_sample,
            "next": cmd_next, "plot": cmd_plot}


if __name__ == "__main__":
    raise SystemExit(main())
