"""Load check of `nextoken serve`: N concurrent next-token requests (default 50) against a tiny model, each a
different prompt, from a separate client process's threads to a server in its own process (as a user runs
it). Prints the first request's time (the model load), then p50/p95/max latency, the wall time and the errors.

    python bench/serve_load.py [RUN] [--requests 50] [--rounds 3] [--json]

Without RUN it prepares a small corpus and trains a tiny run (a few seconds) in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

WORDS = ["alpha", "beta", "gamma", "delta", "count", "value", "items", "total", "result", "name"]


def tiny_run(tmp: Path) -> Path:
    """A 2 x 32 model trained 30 steps on generated Python-like text: what the load is served from."""
    from nextoken.api import build_config, prepare, train
    from nextoken.data.synthetic import python_like

    data = tmp / "data"
    prepare([str(python_like(tmp / "corpus", n_docs=40))], data, tokenizer="bytes", val_fraction=0.1, progress=False)
    fields = {"data.path": data, "model.n_layer": 2, "model.n_head": 2, "model.d_model": 32, "model.block_size": 32,
              "train.max_steps": 30, "train.batch_size": 4, "train.eval_tokens": 2048, "train.threads": 1,
              "log.progress": "off", "log.sample_tokens": 0}
    run = tmp / "runs" / "tiny"
    train(build_config(overrides=[(k, str(v)) for k, v in fields.items()]), run, quiet=True)
    return run


def post(url: str, body: dict) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            json.loads(r.read())
            err = None if r.status == 200 else f"HTTP {r.status}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        err = str(e)
    return time.perf_counter() - t0, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="a run directory (default: train a tiny one)")
    ap.add_argument("--requests", type=int, default=50, help="concurrent requests per round (default 50)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    run = Path(args.run) if args.run else tiny_run(tmp)
    proc = subprocess.Popen([sys.executable, "-m", "nextoken", "serve", str(run), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stderr.readline()
        m = re.search(r"(http://\S+)", line)
        if not m:
            print(f"the server did not start: {line}{proc.stderr.read()}", file=sys.stderr)
            return 1
        base = m.group(1)
        run_id = json.loads(urllib.request.urlopen(base + "/api/runs").read())["runs"][0]["id"]
        first, err = post(base + "/api/next", {"run": run_id, "prompt": "def", "top": 20})
        rng = random.Random(0)
        latencies, errors = [], []
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            bodies = [{"run": run_id, "top": 20, "prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 12)))}
                      for _ in range(args.requests)]
            with ThreadPoolExecutor(args.requests) as pool:
                for dt, e in pool.map(lambda b: post(base + "/api/next", b), bodies):
                    latencies.append(dt)
                    if e:
                        errors.append(e)
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = np.array(latencies) * 1000
    res = {"requests": len(lat), "concurrency": args.requests, "first_ms": first * 1000,
           "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
           "max_ms": float(lat.max()), "requests_per_s": len(lat) / wall, "errors": len(errors) + bool(err),
           "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"first request (loads the model): {res['first_ms']:.0f} ms")
        print(f"{res['requests']} next-token requests, {args.requests} at a time: p50 {res['p50_ms']:.0f} ms, "
              f"p95 {res['p95_ms']:.0f} ms, max {res['max_ms']:.0f} ms, {res['requests_per_s']:.1f} requests/s, "
              f"errors {res['errors']}")
        for e in sorted(set(errors))[:5]:
            print(f"  error: {e}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
