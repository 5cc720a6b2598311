"""The `nextoken` command: parses, calls the library, prints.

Human output goes to stderr; `--json` prints one JSON object on stdout and nothing else there.
Errors are one line on stderr with a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from nextoken.errors import ConfigError, NextokenError


def _err(msg: str) -> None:
    from nextoken.paths import shown

    print(shown(msg), file=sys.stderr, flush=True)


def _print_json(obj) -> None:
    """`--json`: one strict JSON object on stdout, a non-finite figure as "Infinity", "-Infinity" or "NaN"."""
    from nextoken.nonfinite import dumps

    print(dumps(obj))


def _diverged(loss: float, vocab_size: int | None) -> str | None:
    """The note a command prints under the figures of a model that diverged, or None."""
    from nextoken.nonfinite import divergence

    why = divergence(loss, vocab_size)
    return why and (f"note: the model diverged ({why}); an earlier checkpoint may not have (nextoken eval RUN "
                    "--step N); retrain with a lower --optim.lr or --stability.policy rollback")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its message
    return parse


_nonnegative_int, _positive_int = _int_at_least(0), _int_at_least(1)


def _number(s: str) -> float:
    try:
        return float(s.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number (write e.g. 1e21)") from None


def _numbers(s: str) -> list[float]:
    return [_number(x) for x in s.split(",") if x.strip()]


def _train_epilog() -> str:
    from nextoken.config import PRESETS, field_docs

    lines = ["config fields (set as --section.field VALUE; precedence: preset < the depth dial, when --model.depth or",
             "--model.aspect_ratio is given < --config file < flags); the values shown are the tiny preset's, which",
             "`nextoken train` uses without --preset (itself the dial at depth 4, aspect ratio 32, with its own pins):"]
    docs = field_docs("tiny")
    width = max(len(name) for name, *_ in docs)
    for name, typ, default, help_ in docs:
        lines.append(f"  --{name:<{width}} {typ:<5} {str(default)!s:<10} {help_}")
    lines.append(f"\npresets: {', '.join(PRESETS)}")
    return "\n".join(lines)


class UsageError(ConfigError):
    """A malformed command line, reported in one line like every other error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage lines and exits; we want one line
        raise UsageError(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    from nextoken.config import PRESETS
    from nextoken.scaling.laws import LAWS

    p = _Parser(prog="nextoken", description="Pretrain decoder-only transformers by next-token "
                                "prediction. `nextoken train` with no arguments trains a small model on the "
                                "Python standard library's source.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    pr = sub.add_parser("prepare", help="text to tokenizer + token shards")
    pr.add_argument("sources", nargs="*", default=["stdlib"],
                    help="files, directories, globs, .jsonl/.parquet files, Hugging Face datasets (a save_to_disk "
                         "folder, hf:FILES for arrow/parquet/json/csv, hf:NAME[@SPLIT]), `stdlib` (default) or "
                         "`stdlib+tests` (with its test suites: twice the text)")
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument("--tokenizer", default="bpe", help="bpe (trained here), bytes, or a tokenizer.json path")
    pr.add_argument("--vocab-size", type=_positive_int, default=4096, help="BPE vocabulary size (default 4096)")
    pr.add_argument("--val-fraction", type=float, default=0.02, help="share of documents in val (default 0.02)")
    pr.add_argument("--text-field", default="text",
                    help="text field of .jsonl/.parquet rows and of dataset columns (default text)")
    pr.add_argument("--utf8", choices=("strict", "replace"), default="strict",
                    help="invalid UTF-8: strict refuses the file, replace substitutes U+FFFD and counts")
    pr.add_argument("--force", action="store_true", help="replace an existing output directory")
    pr.add_argument("--json", action="store_true", help="print the manifest as JSON")
    pr.set_defaults(handler=cmd_prepare)

    tr = sub.add_parser("train", help="train a model", formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=_train_epilog())
    tr.add_argument("--config", help="TOML config file")
    tr.add_argument("--preset", help=f"{', '.join(PRESETS)} (default tiny)")
    tr.add_argument("--data", help="prepared data directory, a built-in corpus (stdlib, stdlib+tests, "
                    "stdlib-prose), or a mix of "
                    "them by weight: A=0.7,B=0.3 (default: stdlib)")
    tr.add_argument("--out", help="run directory (default: runs/PRESET-TIMESTAMP)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    tr.add_argument("--init-from", metavar="RUN_OR_HF_DIR",
                    help="continue pretraining from these weights (a run, a checkpoint or a Hugging Face model "
                         "directory) with a fresh optimizer and schedule, into a new --out; the data must use its "
                         "tokenizer")
    tr.add_argument("--json", action="store_true", help="print the final figures as JSON")
    tr.add_argument("--dry-run", action="store_true",
                    help="print the config this command means (as TOML, with --model.depth's derived fields) and a "
                    "summary of the run, and stop without training")
    tr.set_defaults(handler=cmd_train, config_overrides=True)  # --section.field VALUE

    ev = sub.add_parser("eval", help="held-out loss, perplexity, bits per byte of a checkpoint; or its scores on "
                        "downstream tasks (--task, --harness; docs/eval.md)")
    ev.add_argument("run", metavar="RUN|CKPT", help="a run directory (its newest checkpoint) or a checkpoint directory")
    ev.add_argument("--data", help="prepared data directory, or a built-in corpus (stdlib, stdlib+tests, "
                    "stdlib-prose: prepared with the run's tokenizer) (default: the run's data; a mixed run's: each "
                    "source and the mix)")
    ev.add_argument("--split", default="val", help="val (default) or train")
    ev.add_argument("--tokens", type=_nonnegative_int, default=0, help="tokens to evaluate (default: the whole split)")
    ev.add_argument("--step", type=_nonnegative_int, help="the checkpoint at this step (default: the newest)")
    ev.add_argument("--task", action="append", metavar="FILE", default=[],
                    help="score a task instead: a .jsonl of {context, choices, label} or {context, continuation} "
                    "lines, or builtin:nextline (which line of stdlib test code comes next); repeatable")
    ev.add_argument("--harness", metavar="TASKS",
                    help="score lm-evaluation-harness tasks (comma-separated names, e.g. lambada_openai,hellaswag) "
                    "through nextoken's model class; needs pip install 'nextoken[eval]'")
    ev.add_argument("--include-path", metavar="DIR", help="--harness: a folder of your own lm-eval task YAMLs")
    ev.add_argument("--limit", type=_positive_int, help="--harness: documents per task (default: all)")
    ev.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    ev.set_defaults(handler=cmd_eval)

    sa = sub.add_parser("sample", help="generate text")
    sa.add_argument("run", metavar="RUN|CKPT", help="a run directory (its newest checkpoint) or a checkpoint directory")
    sa.add_argument("--prompt", default="", help="text to continue (default: none, a fresh document)")
    sa.add_argument("--max-new-tokens", type=_positive_int, default=200, help="tokens to generate (default 200)")
    sa.add_argument("--temperature", type=float, default=0.8, help="divides the logits (default 0.8); 0 is greedy")
    sa.add_argument("--top-k", type=int, default=None, help="sample from the K most likely tokens only")
    sa.add_argument("--top-p", type=float, default=None,
                    help="sample from the smallest set of likeliest tokens whose probability reaches P (nucleus)")
    sa.add_argument("--seed", type=int, default=None,
                    help="sampling seed; without it each call draws a fresh one and prints it, so --seed repeats it")
    sa.add_argument("--step", type=_nonnegative_int, help="the checkpoint at this step (default: the newest)")
    sa.add_argument("--past-eot", action="store_true",
                    help="go on past the end-of-text token into a new document (default: the sample ends there)")
    sa.set_defaults(handler=cmd_sample)

    nx = sub.add_parser("next", help="the next-token distribution for a prompt")
    nx.add_argument("run", metavar="RUN|CKPT", help="a run directory (its newest checkpoint) or a checkpoint directory")
    nx.add_argument("--prompt", required=True, help="the text whose next token is shown")
    nx.add_argument("--temperature", type=float, default=1.0,
                    help="reshapes the distribution shown (default 1: the one the loss is measured on)")
    nx.add_argument("--top", type=int, default=10, help="rows shown (default 10)")
    nx.add_argument("--step", type=_nonnegative_int, help="the checkpoint at this step (default: the newest)")
    nx.add_argument("--json", action="store_true", help="print the distribution as one JSON object on stdout")
    nx.set_defaults(handler=cmd_next)

    ins = sub.add_parser("inspect", help="inside one forward pass: tokens, attention, the logit lens, teacher "
                         "forcing (the web app draws the same: nextoken serve, /inspect)")
    ins.add_argument("run", metavar="RUN|CKPT",
                     help="a run directory (its newest checkpoint) or a checkpoint directory")
    ins.add_argument("--prompt", required=True, help="the text passed through the model (its last 64 tokens)")
    ins.add_argument("--target", help="the true continuation: its cross-entropy, every token of it")
    ins.add_argument("--top", type=int, default=5, help="tokens per layer and position in the logit lens (default 5)")
    ins.add_argument("--step", type=_nonnegative_int, help="the checkpoint at this step (default: the newest)")
    ins.add_argument("--json", action="store_true", help="print everything as one JSON object on stdout")
    ins.set_defaults(handler=cmd_inspect)

    pt = sub.add_parser("plot", help="loss and LR curves of a run, as PNG")
    pt.add_argument("run", metavar="RUN", help="a run directory")
    pt.add_argument("--out", help="PNG path (default RUN/loss.png)")
    pt.set_defaults(handler=cmd_plot)

    pl = sub.add_parser("plan", help="compute-optimal model size, tokens and loss for a budget; given two of C, N, "
                        "D, the third and what that allocation costs against the optimum")
    pl.add_argument("--flops", type=_number, help="training compute C in FLOPs")
    pl.add_argument("--params", type=_number, help="parameters N")
    pl.add_argument("--tokens", type=_number, help="training tokens D")
    pl.add_argument("--law", default="chinchilla", help=f"{', '.join(LAWS)} (default chinchilla)")
    pl.add_argument("--fit", help="a fit.json from `nextoken fit` (or its sweep directory); overrides --law. The "
                    "loss is approach 3's L(N, D) of the planned model with its 90%% prediction interval, the power "
                    "law through the sweep's IsoFLOP minima beside it; where the fit shows a red flag (E at a bound, "
                    "alpha and beta far apart, fewer than 3 interior minima, approaches disagreeing, a frontier "
                    "still steepening, a missed backtest) the number is called a guess, not a prediction "
                    "(docs/scaling.md)")
    pl.add_argument("--vocab-size", type=int, default=None, help="vocabulary of the shape (default 4096; with "
                    "--fit, the sweep's)")
    pl.add_argument("--block-size", type=int, default=None, help="context of the shape (default 128; with --fit, "
                    "the sweep's)")
    pl.add_argument("--tokens-per-s", type=_number, help="training throughput, for the time estimate")
    pl.add_argument("--device", help="GPU name (H100, A100, ...) for a time estimate at --mfu")
    pl.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization for --device (default 0.4)")
    pl.add_argument("--json", action="store_true", help="print the plan as one JSON object on stdout (with --fit: "
                    "interval, red_flags, and confidence: prediction or guess)")
    pl.set_defaults(handler=cmd_plan)

    sw = sub.add_parser("sweep", help="IsoFLOP sweep: models of several sizes per compute budget")
    sw.add_argument("--data", help="prepared data directory (default: the built-in stdlib corpus)")
    sw.add_argument("--out", required=True, help="sweep directory (rerun the same command to continue)")
    sw.add_argument("--budgets", type=_numbers, default=None,
                    help="comma-separated FLOP budgets (default 3e10,1e11,3e11,1e12,3e12: five budgets half a decade "
                    "apart, about 35 runs)")
    sw.add_argument("--sizes", type=int, default=7, help="model sizes per budget (default 7)")
    sw.add_argument("--spread", type=float, default=12.0,
                    help="ratio of the largest to the smallest N_eff in a budget (default 12: 7 sizes ~1.5x apart)")
    sw.add_argument("--tokens-per-param", type=float, default=60.0,
                    help="without --around, centre each budget's sizes where D = this x N_eff (default 60, from CPU "
                    "fits; docs/scaling.md)")
    sw.add_argument("--around", metavar="FIT",
                    help="centre each budget's sizes on the optimum of a previous fit (fit.json or its sweep)")
    sw.add_argument("--schedule", choices=("cosine", "wsd"), default="cosine",
                    help="cosine: one run per point; wsd: one constant-LR trunk per size with a cooldown branch per "
                    "budget (only the cooled-down points count; about 25-40%% less compute)")
    sw.add_argument("--rules", choices=("per-size", "fixed"), default="per-size",
                    help="per-size: each size's LR, batch, warmup and beta2 from the rules of docs/scaling.md "
                    "(default); fixed: the base config's for every size")
    sw.add_argument("--seeds", type=int, default=1,
                    help="runs per size with different seeds (default 1); the fit sees each size's scatter, which at "
                    "CPU budgets is about as large as the differences between neighbouring sizes")
    sw.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once, each in its own process at --train.threads (default 1 thread)")
    sw.add_argument("--dial", action="store_true",
                    help="sizes from the depth dial: every depth whose model (d_model = model.aspect_ratio x depth, "
                    "64-wide heads) falls within the spread, at least three; fit and plan then shape by the dial")
    sw.add_argument("--preset", help="base config preset (default scaling: byte-level, 16 x 128 tokens a step)")
    sw.add_argument("--config", help="base config TOML file")
    sw.add_argument("--dry-run", action="store_true", help="print the runs and stop")
    sw.add_argument("--json", action="store_true", help="print the points as JSON")
    sw.set_defaults(handler=cmd_sweep, config_overrides=True)  # --section.field VALUE sets the base config

    ex = sub.add_parser("export", help="a run as a Hugging Face model directory (transformers loads it as is)")
    ex.add_argument("run", metavar="RUN|CKPT")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--step", type=_nonnegative_int, help="the checkpoint at this step (default: the newest)")
    ex.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="cast the weights (default: as trained)")
    ex.add_argument("--no-check", action="store_true",
                    help="skip loading the result in transformers and comparing its logits with nextoken's")
    ex.add_argument("--force", action="store_true", help="replace an existing output directory")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(handler=cmd_export)

    im = sub.add_parser("import", help="a Hugging Face model directory (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, "
                        "Qwen3) as a run")
    im.add_argument("hf_dir", metavar="HF_DIR")
    im.add_argument("--out", required=True, help="run directory to create")
    im.add_argument("--force", action="store_true", help="replace an existing non-run output directory")
    im.add_argument("--json", action="store_true")
    im.set_defaults(handler=cmd_import)

    ft = sub.add_parser("fit", help="fit your own scaling law to a sweep (approaches 2 and 3 of Chinchilla); prints "
                        "90% intervals and red flags, the reasons not to trust its extrapolation")
    ft.add_argument("sweep", nargs="?", metavar="SWEEP", help="a sweep directory")
    ft.add_argument("--points", help="a CSV with header params,tokens,loss (optional flops,budget)")
    ft.add_argument("--out", help="fit.json path (default SWEEP/fit.json or next to the CSV)")
    ft.add_argument("--plot", help="PNG path (default: isoflop.png beside a fit.json, else the --out name with .png)")
    ft.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals (0: none)")
    ft.add_argument("--count", choices=("eff", "non-embedding"), default="eff",
                    help="how a sweep's N is counted: eff, N_eff = training FLOPs per token / 6, so that C = 6ND "
                    "exactly (default); non-embedding, Kaplan's N (the count before; docs/scaling.md)")
    ft.add_argument("--backtest", action="store_true",
                    help="also refit without the largest budget, predict its runs and print the error; a best-run "
                    "error over 2%% (or outside its interval) is a red flag")
    ft.add_argument("--min-budget", type=float, metavar="C",
                    help="fit only the runs of budgets of at least C FLOPs, leaving out budgets below the law's "
                    "regime (what the red flag of a frontier still steepening suggests); at least 5 runs must "
                    "remain, and the steepening check needs 3 budgets")
    ft.add_argument("--json", action="store_true", help="print the fit as one JSON object on stdout (its red_flags "
                    "included)")
    ft.set_defaults(handler=cmd_fit)

    se = sub.add_parser("serve", help="a local web app: watch, probe and compare runs in the browser")
    se.add_argument("paths", nargs="*", metavar="RUN_OR_DIR", help="run directories or folders of runs and sweeps "
                    "(default ./runs)")
    se.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                    "only)")
    se.add_argument("--port", type=_int_at_least(0), default=8600, help="port (default 8600; 0: any free one)")
    se.set_defaults(handler=cmd_serve)
    lb = sub.add_parser("lab", help="the claims of pretraining as experiments: train, measure, draw, verdict "
                        "(docs/lab.md)")
    lab = lb.add_subparsers(dest="lab_cmd", metavar="ACTION", required=True)
    ll = lab.add_parser("list", help="the experiments, with their claim and cost")
    ll.add_argument("--json", action="store_true")
    ll.set_defaults(handler=cmd_lab_list)
    lr = lab.add_parser("run", help="run an experiment (rerunning the same command continues it)")
    lr.add_argument("name", metavar="NAME", help="an experiment (`nextoken lab list`)")
    lr.add_argument("--budget", choices=("smoke", "small", "full"), default="small",
                    help="smoke: seconds (CI); small: about 5 minutes on a 2-core CPU (default); full: a GPU")
    lr.add_argument("--out", help="experiment directory (default lab/NAME-BUDGET)")
    lr.add_argument("--json", action="store_true", help="print the figures as JSON")
    lr.set_defaults(handler=cmd_lab_run)
    lp = lab.add_parser("report", help="rewrite an experiment's report.md and figure from its figures.json")
    lp.add_argument("dir", metavar="DIR", help="an experiment directory")
    lp.set_defaults(handler=cmd_lab_report)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.cmd is None and "-h" not in argv and "--help" not in argv:
            args, extra = parser.parse_known_args(["train", *argv])  # `nextoken` alone trains
    except UsageError as e:
        if "--debug" in argv:
            raise
        _err_once(e)
        return e.exit_code
    try:
        if args.cmd is None:
            parser.print_help()
            return 0
        if extra and not getattr(args, "config_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        code = args.handler(args, extra) or 0
        if (distributed := sys.modules.get("nextoken.training.distributed")) is not None and distributed.shutdown():
            distributed.exit_process(code)  # a rank of a finished job: leave without the interpreter's teardown
        return code
    except NextokenError as e:
        if args.debug:
            raise
        _err_once(e)
        if (distributed := sys.modules.get("nextoken.training.distributed")) is not None and distributed.live():
            distributed.exit_process(e.exit_code)  # a rank of a stopped job: no teardown of a group mid-job
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        # the reader of stdout left (`nextoken ... --json | head`): what it read was whole; say nothing more, and
        # point stdout at /dev/null so the interpreter's final flush does not raise again (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a Unix tool killed by a closed pipe reports


def cmd_prepare(args, extra) -> int:
    from nextoken.api import prepare

    manifest = prepare(args.sources, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, text_field=args.text_field, utf8=args.utf8, force=args.force,
                       log=_err)
    if args.json:
        _print_json(manifest)
    return 0


def cmd_train(args, extra) -> int:
    from nextoken.api import default_run_dir, resolve_train_config, train
    from nextoken.config import parse_overrides

    cfg = resolve_train_config(args.preset, args.config, parse_overrides(extra), args.data, args.out, args.resume,
                               args.init_from)
    if args.dry_run:
        print(cfg.to_toml())
        _err(_run_summary(cfg))
        return 0
    out = args.out or (None if _under_torchrun() else default_run_dir(args.preset))
    res = train(cfg, out, resume=args.resume, log=_err)  # its first line says where it trains into
    model = res.pop("model")
    if res.pop("rank", 0) != 0:  # only rank 0 reports, samples and plots
        return 0
    if args.json:
        _print_json(res)
        return 0
    run = res["run"]
    _err(f"\nval loss {res['loss']:.4f} nats/token   perplexity {res['ppl']:.2f}   "
         f"bits/byte {res['bits_per_byte']:.3f}   ({res['tokens']:,} tokens in {res['elapsed_s']:.0f}s)")
    if note := _diverged(res["loss"], cfg.model.vocab_size):
        _err(note)  # and no sample: a diverged model has nothing to show, and may have no distribution to draw
    elif cfg.log.sample_tokens > 0:
        from nextoken.generate import stream_text
        from nextoken.run import Run

        _err(f"\nsample (temperature 0.8, top-k 50):\n{'-' * 60}")
        sys.stderr.write("def")
        for piece in stream_text(Run(run).tokenizer, model, "def", cfg.log.sample_tokens, temperature=0.8, top_k=50,
                                 seed=0):
            sys.stderr.write(piece)
            sys.stderr.flush()
        _err(f"\n{'-' * 60}")
    from nextoken.plot import plot_run

    png = plot_run(run)
    _err(f"\nplot: {png}\ncheckpoint: {res['checkpoint']}\n"
         f"next: nextoken sample {run} --prompt 'def'   |   nextoken eval {run}   |   nextoken serve {run}")
    return 0


def _run_summary(cfg) -> str:
    """One line on what a config trains: shape, N, tokens and FLOPs (the vocabulary as the data will fix it)."""
    import dataclasses

    from nextoken.model.counting import param_counts, training_flops_per_token

    m, t = cfg.model, cfg.train
    vocab = m.vocab_size or (cfg.data.vocab_size if cfg.data.tokenizer == "bpe" and not cfg.data.path else 0)
    per_step = t.batch_size * t.grad_accum * m.block_size
    line = (f"{m.n_layer} layer{'s' * (m.n_layer != 1)} x {m.d_model} wide, {m.n_head} head{'s' * (m.n_head != 1)}, "
            f"context {m.block_size}; {t.max_steps:,} steps "
            f"of {per_step:,} tokens = {t.max_steps * per_step:,} tokens; "
            + (f"Muon lr {cfg.optim.muon_lr:.3g} + AdamW lr {cfg.optim.lr:.3g}" if cfg.optim.name == "muon"
               else f"AdamW lr {cfg.optim.lr:.3g}"))
    if vocab:
        shape = dataclasses.replace(m, vocab_size=vocab)
        n = param_counts(shape).non_embedding
        line += (f"; N {n:,} non-embedding parameters, {t.max_steps * per_step / n:.1f} tokens each, "
                 f"{t.max_steps * per_step * training_flops_per_token(shape):.3g} FLOPs")
    return line


def _err_once(e: NextokenError) -> None:
    """Print a user error as one line: under torchrun, an error every rank met alike (a bad flag) by rank 0 only,
    not once per process."""
    import os

    if not (e.every_rank and _under_torchrun() and os.environ.get("RANK", "0") != "0"):
        _err(f"error: {e}")


def _under_torchrun() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def cmd_eval(args, extra) -> int:
    from nextoken.api import evaluate

    if args.task and args.harness:
        raise UsageError("pass --task or --harness, not both")
    if (args.include_path or args.limit) and not args.harness:
        raise UsageError("--include-path and --limit go with --harness")
    if args.task:
        return _eval_tasks(args)
    if args.harness:
        return _eval_harness(args)
    res = evaluate(args.run, args.data, args.split, args.tokens, args.step)
    if args.json:
        _print_json(res)
    else:
        for name, r in res.get("sources", {}).items():  # a mixed run: each source, then the mixture
            _err(f"  {name}: {args.split} loss {r['loss']:.4f}  ppl {r['ppl']:.2f}  bits/byte {r['bits_per_byte']:.3f}"
                 f"  ({r['eval_tokens']:,} tokens)")
        _err(f"{res['checkpoint']}: {args.split} loss {res['loss']:.4f}  ppl {res['ppl']:.2f}  "
             f"bits/token {res['bits_per_token']:.3f}  bits/byte {res['bits_per_byte']:.3f}  "
             f"({res['eval_tokens']:,} tokens{', the mix at its weights' if 'sources' in res else ''})")
        if note := _diverged(res["loss"], _vocab_size(args.run)):
            _err(note)
    return 0


def _eval_tasks(args) -> int:
    from nextoken.api import evaluate_tasks

    res = evaluate_tasks(args.run, args.task, args.step, log=_err)
    if args.json:
        _print_json(res)
        return 0
    _err(f"{res['checkpoint']}:")
    for name, r in res["tasks"].items():
        norm = f"  acc_norm {r['acc_norm']:.4f}" if r["acc_norm"] is not None else ""
        _err(f"  {name}: acc {r['acc']:.4f}{norm}  bits/byte {r['bits_per_byte']:.4f}  ({r['n']} items)")
    return 0


def _eval_harness(args) -> int:
    from nextoken.api import evaluate_harness

    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    res = evaluate_harness(args.run, tasks, args.include_path, args.limit, args.step)
    if args.json:
        _print_json({"results": res["results"], "n": res.get("n-samples", {}), "step": res["step"],
                     "checkpoint": res["checkpoint"]})
        return 0
    from lm_eval.utils import make_table

    _err(f"{res['checkpoint']}:\n{make_table(res)}")
    return 0


def _vocab_size(run: str) -> int | None:
    """The vocabulary of the run's model; None where its config cannot be read (then only a non-finite loss
    counts as diverged)."""
    from nextoken.run import Run

    try:
        return Run(run).config.model.vocab_size
    except NextokenError:
        return None


def cmd_sample(args, extra) -> int:
    from nextoken.api import stream
    from nextoken.generate import check_prompt, draw_seed

    check_prompt(args.prompt)  # before anything is printed: `stream` starts at its first piece
    seed = args.seed if args.seed is not None else draw_seed()
    pieces = stream(args.run, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, seed,
                    args.step, stop_at_eot=not args.past_eot)
    if args.seed is None:
        _err(f"seed {seed} (--seed {seed} repeats this sample)")
    sys.stdout.write(args.prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_next(args, extra) -> int:
    from nextoken.api import next_token

    dist = next_token(args.run, args.prompt, args.temperature, args.top, args.step)
    if args.json:
        _print_json(dist)
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


def cmd_inspect(args, extra) -> int:
    from nextoken.api import inspect
    from nextoken.run import Run

    run = Run(args.run)
    res = inspect(run, args.prompt, args.target, args.top, args.step)
    if args.json:  # the same fields as serve's POST /api/inspect
        _print_json({"run": str(args.run), "checkpoints": run.checkpoint_steps(), **res})
        return 0
    show = lambda t: repr(t)[1:-1]  # noqa: E731
    lines = [f"{res['checkpoint']}: {len(res['tokens'])} tokens" + (" (the last 64)" if res["truncated"] else ""),
             "tokens:  " + " ".join(f"{show(t['text'])}[{t['id']}]" for t in res["tokens"]),
             "embedding norm: " + " ".join(f"{v:.2f}" for v in res["embedding_norm"])]
    for i, row in enumerate(res["residual_norm"], 1):
        lines.append(f"residual norm after layer {i}: " + " ".join(f"{v:.2f}" for v in row))
    lines.append("logit lens, top token at the last position per layer:")
    for row in res["lens"]:
        cell = row["positions"][-1]
        rank = f"  (true token rank {cell['true_rank']})" if "true_rank" in cell else ""
        lines.append(f"  {row['name']:>10}: {show(cell['top'][0]['text'])!s:<12} p {cell['top'][0]['p']:.3f}{rank}")
    tf = res["teacher_forcing"]
    if tf["loss"] is not None:
        what = "its own token (bidirectional)" if res["bidirectional"] else "its next token"
        lines.append(f"teacher forcing: every position predicts {what} from the true tokens before it: mean loss "
                     f"{tf['loss']:.3f} nats, perplexity e^loss = {tf['ppl']:.2f}")
    top = res["final"]["top"][:5]
    lines.append("next token: " + ", ".join(f"{show(t['text'])} {t['p']:.3f}" for t in top))
    if res["target"]:
        t = res["target"]
        lines.append(f"target {t['text']!r}: {t['tokens_in_target']} tokens, cross-entropy {t['neg_log_p']:.3f} nats")
        if "with_space" in t:
            w = t["with_space"]
            lines.append(f"  with a leading space {w['text']!r}: {w['neg_log_p']:.3f} nats")
    _err("\n".join(lines))
    return 0


def cmd_plot(args, extra) -> int:
    from nextoken.plot import plot_run

    _err(f"wrote {plot_run(args.run, args.out)}")
    return 0


def cmd_plan(args, extra) -> int:
    from nextoken.config import ModelConfig
    from nextoken.scaling.plan import format_plan, plan

    base = ModelConfig()
    if args.vocab_size is not None:
        base.vocab_size = args.vocab_size
    if args.block_size is not None:
        base.block_size = args.block_size
    if base.vocab_size < 1 and args.vocab_size is not None or base.block_size < 2:
        raise NextokenError("--vocab-size must be >= 1 and --block-size >= 2")
    res = plan(args.law, args.flops, args.params, args.tokens, args.fit, base, args.tokens_per_s, args.device,
               args.mfu)
    if args.json:
        _print_json(res)
        return 0
    _err(format_plan(res))
    return 0


def cmd_sweep(args, extra) -> int:
    from nextoken.config import build_config, parse_overrides
    from nextoken.scaling.sweep import DEFAULT_BUDGETS, sweep

    cfg = build_config(args.preset or "scaling", args.config, parse_overrides(extra))
    if args.data:
        cfg.data.path = args.data
    around = None
    if args.around:
        from nextoken.scaling.fit import load_fit

        around = load_fit(args.around)
    points = sweep(cfg, args.out, list(args.budgets or DEFAULT_BUDGETS), args.sizes, args.spread,
                   args.tokens_per_param, log=_err, dry_run=args.dry_run, jobs=args.jobs, seeds=args.seeds,
                   dial=args.dial, rules=args.rules, schedule=args.schedule, around=around)
    if args.json:
        _print_json({"sweep": str(args.out), "points": points})
    elif not args.dry_run:
        _err(f"done: {len(points)} runs in {args.out}; next: nextoken fit {args.out}")
    return 0


def cmd_fit(args, extra) -> int:
    from nextoken.scaling.fit import fit_run, format_fit

    result, law = fit_run(args.sweep, args.points, args.bootstrap, args.out, args.plot, args.count, args.backtest,
                          args.min_budget)
    if args.json:
        _print_json(result)
    else:
        _err(format_fit(result, law))
    return 0


def cmd_export(args, extra) -> int:
    from nextoken.interop.hf_export import export

    res = export(args.run, args.out, args.step, args.dtype, check=not args.no_check, force=args.force)
    if args.json:
        _print_json(res)
        return 0
    check = f"; logits match nextoken's within {res['max_abs_diff']:.1e}" if "max_abs_diff" in res else ""
    _err(f"wrote {res['out']}: {res['architecture']}, step {res['step']}, {res['dtype']}, "
         f"{res['bytes'] / 1e6:.1f} MB{check}\nload: AutoModelForCausalLM.from_pretrained({res['out']!r})")
    return 0


def cmd_import(args, extra) -> int:
    from nextoken.interop.hf_import import import_hf

    res = import_hf(args.hf_dir, args.out, force=args.force)
    if args.json:
        _print_json(res)
        return 0
    m = res["model"]
    _err(f"imported {res['architecture']} ({m['n_layer']} x {m['d_model']}, vocab {m['vocab_size']}) into "
         f"{res['run']}\nnext: nextoken eval {res['run']} --data DATA   |   nextoken sample {res['run']}   |   "
         f"nextoken train --init-from {res['run']} --data DATA --out NEW")
    return 0


def cmd_serve(args, extra) -> int:
    from nextoken.serve import serve

    serve(args.paths, args.host, args.port, log=_err)
    return 0


def cmd_lab_list(args, extra) -> int:
    from nextoken.lab import available, get

    rows = [{"name": n, "claim": get(n).claim, "source": get(n).source, "cost": get(n).cost} for n in available()]
    if args.json:
        _print_json({"experiments": rows})
        return 0
    for r in rows:
        _err(f"{r['name']}\n    claim: {r['claim']} ({r['source']})\n    cost: " +
             "; ".join(f"{b} {c}" for b, c in r["cost"].items()))
    return 0


def cmd_lab_run(args, extra) -> int:
    from nextoken.lab.runner import run

    figures = run(args.name, args.budget, args.out, log=_err)
    if args.json:
        _print_json(figures)
        return 0
    out = args.out or f"lab/{args.name}-{args.budget}"
    _err(f"verdict: {figures['verdict']}: {figures['why']}\nreport: {out}/report.md")
    return 0


def cmd_lab_report(args, extra) -> int:
    from nextoken.lab.runner import report

    figures = report(args.dir)
    _err(f"verdict: {figures['verdict']}: {figures['why']}\nreport: {args.dir}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
