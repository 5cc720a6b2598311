"""GPT-2 small (124M) on the CPU, as a user runs it after `nextoken import gpt2`: the import, `next` and
`sample` (in the process and as commands, model load included), `eval`'s throughput, and the latency of the
web app's next-token page (`/api/next`, one request at a time as a person types). The model is a random one of
GPT-2 small's shape built from transformers' GPT2Config (no download); its tokenizer is byte-level with GPT-2's
50,257 ids (the bytes, filler tokens, <|endoftext|>), so every figure but the text is GPT-2's.

    python bench/interop_124m.py [--threads N] [--tokens 100] [--requests 20] [--json]

Needs transformers (`nextoken[hf]`) and ~1.5 GB of temporary disk (removed at the end). On a CPU shared with
other jobs, `--threads 1` (two threads oversubscribe a loaded 2-core box ~10x). Quote figures from a quiet
machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROMPTS = ["The cat sat on the", "Once upon a time", "def main():\n    ", "import numpy as", "In 1905, Einstein",
           "The capital of France is", "for i in range(", "She opened the door and"]


def gpt2_small(folder: Path) -> None:
    """A random GPT-2 small (transformers' GPT2Config defaults: 12 x 768, 12 heads, context 1024, gelu_new)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from nextoken.data.tokenizer import EOT, byte_to_unicode

    torch.manual_seed(0)
    cfg = transformers.GPT2Config()
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(str(folder))
    vocab = {ch: b for b, ch in byte_to_unicode().items()}
    vocab |= {f"tok{i}": 256 + i for i in range(cfg.vocab_size - 257)}  # filler ids up to GPT-2's size
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    assert tok.get_vocab_size() == cfg.vocab_size
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT).save_pretrained(
        str(folder))


def cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nextoken", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def serve_latency(run: Path, n: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "nextoken", "serve", str(run), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        m = re.search(r"(http://\S+)", proc.stderr.readline())
        assert m, "the server did not start"
        base = m.group(1)
        run_id = json.loads(urllib.request.urlopen(base + "/api/runs").read())["runs"][0]["id"]

        def post(prompt: str) -> float:
            body = json.dumps({"run": run_id, "prompt": prompt, "top": 20}).encode()
            t0 = time.perf_counter()
            req = urllib.request.Request(base + "/api/next", body, {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                json.loads(r.read())
            return time.perf_counter() - t0

        first = post("The cat sat on the")
        # a person typing: each request the prompt so far, one character longer
        text = "The cat sat on the mat, and the dog lay by the fire."
        lat = [post(text[:k]) for k in range(len(text) - n, len(text))]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"first_ms": first * 1000, "p50_ms": statistics.median(lat) * 1000,
            "max_ms": max(lat) * 1000, "requests": len(lat)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tokens", type=int, default=100, help="tokens sampled (default 100)")
    ap.add_argument("--requests", type=int, default=20, help="next-token page requests (default 20)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="interop-124m-"))
    try:
        res = measure(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ~1.5 GB of weights
    if args.json:
        print(json.dumps(res))
        return 0
    s = res["serve"]
    print(f"GPT-2 small shape, {res['params_M']:.1f}M parameters, {res['threads']} torch threads on {res['cpus']} CPUs")
    print(f"import {res['import_s']:.1f} s; load {res['load_s']:.1f} s")
    print(f"next (in process): {res['next_ms_p50']:.0f} ms per prompt (median of {len(PROMPTS)})")
    print(f"sample (in process, KV-cache): {res['sample_tokens_per_s']:.1f} tokens/s over {args.tokens} tokens")
    print(f"eval: {res['eval_tokens_per_s']:.0f} tokens/s")
    print(f"commands, load included: `next` {res['cli_next_s']:.1f} s, `sample --max-new-tokens {args.tokens}` "
          f"{res['cli_sample_s']:.1f} s")
    print(f"serve /api/next: first {s['first_ms']:.0f} ms (loads the model), then p50 {s['p50_ms']:.0f} ms, "
          f"max {s['max_ms']:.0f} ms over {s['requests']} keystrokes")
    return 0


def measure(tmp: Path, args) -> dict:
    import torch

    from nextoken.api import evaluate, prepare
    from nextoken.data.synthetic import python_like
    from nextoken.generate import generate, next_token_distribution
    from nextoken.interop.hf_import import import_hf
    from nextoken.run import Run

    res: dict = {"cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    gpt2_small(tmp / "hf")
    t0 = time.perf_counter()
    import_hf(tmp / "hf", tmp / "run")
    res["import_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    loaded = Run(tmp / "run").load()
    res["load_s"] = time.perf_counter() - t0
    res["params_M"] = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    next_token_distribution(loaded.model, loaded.tokenizer, PROMPTS[0])  # warm-up
    lat = []
    for p in PROMPTS:
        t0 = time.perf_counter()
        next_token_distribution(loaded.model, loaded.tokenizer, p, top=10)
        lat.append(time.perf_counter() - t0)
    res["next_ms_p50"] = statistics.median(lat) * 1000
    ids = loaded.tokenizer.encode(PROMPTS[0]).ids
    t0 = time.perf_counter()
    n = sum(1 for _ in generate(loaded.model, ids, args.tokens, temperature=1.0, top_k=50, seed=0))
    res["sample_tokens_per_s"] = n / (time.perf_counter() - t0)

    data = tmp / "data"
    prepare([str(python_like(tmp / "corpus", n_docs=40))], data, tokenizer=str(tmp / "run" / "tokenizer.json"),
            val_fraction=0.1, progress=False)
    t0 = time.perf_counter()
    ev = evaluate(tmp / "run", data)
    res["eval_tokens_per_s"] = ev["eval_tokens"] / (time.perf_counter() - t0)
    del loaded

    res["cli_next_s"] = cli("next", str(tmp / "run"), "--prompt", PROMPTS[0])
    res["cli_sample_s"] = cli("sample", str(tmp / "run"), "--prompt", PROMPTS[0], "--max-new-tokens",
                              str(args.tokens), "--seed", "0")
    res["serve"] = serve_latency(tmp / "run", args.requests)
    return res


if __name__ == "__main__":
    raise SystemExit(main())
