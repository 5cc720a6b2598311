"""The README's main job against another recipe, side by side on this machine: quality and wall-clock.

    python bench/default_run.py                       # the previous default (A) against today's (B), 2 rounds
    python bench/default_run.py --rounds 1 --b "--optim.muon_lr 0.03"

Each round trains A then B (interleaved, so that both see the same machine, which on shared boxes moves by
2x from day to day) as real `nextoken train` runs at the preset `tiny` plus the flags given, at --threads
torch threads, and reports for each run: training seconds (the loop's own, evaluations excluded), bits per
byte on the val split (all of it) and on held-out code: the standard library's own test suites, which
`stdlib` leaves out, tokenized with the run's tokenizer (--heldout-tokens windows spread over it; non-UTF-8
bytes of a few deliberately odd test files replaced). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The `tiny` preset before issue 14 (docs/LOG.md, 2026-11-25): AdamW at 3e-3, 4 x 128 with 4 heads of 32.
PREVIOUS = ("--optim.name adamw --optim.lr 3e-3 --optim.schedule cosine --optim.warmup_steps 50 "
            "--model.n_layer 4 --model.n_head 4 --model.d_model 128 --model.block_size 128 --model.depth 0 "
            "--train.batch_size 16 --train.max_steps 1500 --train.eval_every 300 --data.vocab_size 4096")


def heldout_data(tokenizer: Path, out: Path) -> Path:
    """The standard library's test suites (stdlib+tests minus stdlib), prepared with `tokenizer`."""
    from nextoken.data.prepare import PrepareOptions, prepare
    from nextoken.data.sources import stdlib_files

    if (out / "manifest.json").is_file():
        return out
    files = sorted(set(map(str, stdlib_files(include_tests=True))) - set(map(str, stdlib_files())))
    prepare(files, out, PrepareOptions(tokenizer=str(tokenizer), val_fraction=0.0, utf8="replace", force=True,
                                          progress=False))
    return out


def nextoken(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "nextoken", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"nextoken {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def one_run(name: str, flags: str, work: Path, threads: int, heldout_tokens: int) -> dict:
    run = work / name
    res = json.loads(nextoken("train", "--out", str(run), "--log.progress", "off", "--train.threads", str(threads),
                              "--json", *shlex.split(flags)))
    val = json.loads(nextoken("eval", str(run), "--json"))
    held = heldout_data(run / "tokenizer.json", work / f"heldout-{name}")
    ho = json.loads(nextoken("eval", str(run), "--data", str(held), "--split", "train", "--tokens",
                             str(heldout_tokens), "--json"))
    return {"name": name, "train_s": res["elapsed_s"], "val_bpb": val["bits_per_byte"],
            "heldout_bpb": ho["bits_per_byte"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", default=PREVIOUS, help="flags of recipe A on top of --preset tiny (default: the previous "
                   "default's)")
    p.add_argument("--b", default="", help="flags of recipe B (default: none, the preset as it is now)")
    p.add_argument("--rounds", type=int, default=2, help="A, B pairs (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument("--heldout-tokens", type=int, default=262144, help="held-out tokens evaluated (default 262144)")
    p.add_argument("--work", help="directory for the runs (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="one JSON object per run on stdout")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rows = []
        for r in range(args.rounds):
            for label, flags in (("A", args.a), ("B", args.b)):
                row = one_run(f"{label}{r}", flags, work, args.threads, args.heldout_tokens)
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{row['name']:>4}  train {row['train_s']:6.1f} s   val {row['val_bpb']:.4f} bits/byte   "
                          f"held-out {row['heldout_bpb']:.4f}", flush=True)
        if not args.json:
            for label in "AB":
                mine = [x for x in rows if x["name"][0] == label]
                flags = args.a if label == "A" else args.b or "the preset"
                print(f"{label} median: train {statistics.median(x['train_s'] for x in mine):.1f} s, val "
                      f"{statistics.median(x['val_bpb'] for x in mine):.4f}, held-out "
                      f"{statistics.median(x['heldout_bpb'] for x in mine):.4f}  ({flags})")


if __name__ == "__main__":
    main()
