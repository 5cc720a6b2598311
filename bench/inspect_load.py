"""Responsiveness of the inspect page (`nextoken serve`, /inspect) for a GPT-2-small-shaped model (12 x 768,
12 heads, vocabulary 50304: 124M parameters) with random weights, on the CPU.

    python bench/inspect_load.py [--tokens 16,32,64] [--threads 2] [--no-browser] [--json]

It writes a run with two checkpoints (step 0 and step 1, the second perturbed) in a temporary directory, starts
the server in this process (a thread, as `nextoken serve` runs it) and prints, per prompt length:
- `POST /api/inspect`: the first call (loads the model), a new prompt (the forward pass, attention and the lens
  computed), the same prompt again (served from the cache), the other checkpoint (a model load and a pass), and
  the response size;
- `POST /api/next` while an inspect is in flight (whether a busy model blocks the other pages);
- with Chromium and Playwright: the page's own time from a slider move to the new step drawn (request, JSON
  parse, 144 attention maps and the tables), cold and cached.
The tokenizer is the byte-level one (257 ids), so most of the 50304 rows decode to nothing: the figures are
about time, not text. Quote them from a quiet machine only (docs/LOG.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

PROMPT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest where "


def make_run(root: Path) -> Path:
    from nextoken import checkpoint as ckpt
    from nextoken.config import ModelConfig
    from nextoken.data.tokenizer import bytes_tokenizer
    from nextoken.interop.hf_import import HFModel, write_run
    from nextoken.model import GPT

    cfg = ModelConfig(n_layer=12, n_head=12, d_model=768, block_size=1024, vocab_size=50304)
    torch.manual_seed(0)
    gpt = GPT(cfg)
    out = root / "runs" / "gpt2-random"
    path = write_run(out, HFModel("random weights", "gpt2-shaped", cfg, gpt.state_dict(), bytes_tokenizer()))
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    trainer = json.loads((path / "trainer.json").read_text())
    ckpt.save(out, 1, gpt, torch.optim.AdamW(gpt.parameters()), {**trainer, "step": 1}, keep=2)
    return out


def post(url: str, body: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        raw = r.read()
        assert r.status == 200, raw[:200]
    return time.perf_counter() - t0, len(raw)


def browser_times(base: str, n_tokens: int) -> dict | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    prompt = (PROMPT * 4)[1:n_tokens + 1]  # not yet in the server's cache
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(600_000)
            page.goto(base + "/inspect?run=runs%2Fgpt2-random")
            page.locator("#inspect[data-step]").wait_for()
            t0 = time.perf_counter()
            page.locator("#prompt").fill(prompt)
            while page.locator("#ins-tokens .tok-id").count() != n_tokens:  # the page's CSP forbids eval: poll
                time.sleep(0.02)
            out["new_prompt_s"] = time.perf_counter() - t0 - 0.25  # less the page's typing debounce
            for label, key in (("slider_cold_s", "Home"), ("slider_cached_s", "End")):
                want = "0" if key == "Home" else "1"
                page.locator("#ckpt").focus()
                t0 = time.perf_counter()
                page.keyboard.press(key)
                page.locator(f'#inspect[data-step="{want}"]').wait_for()
                out[label] = time.perf_counter() - t0 - 0.25
        finally:
            browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="16,32,64", help="prompt lengths in tokens (bytes here; default 16,32,64)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the 2-core CPU of the issue)")
    ap.add_argument("--no-browser", action="store_true", help="the API only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from nextoken.serve import make_server

    tmp = Path(tempfile.mkdtemp(prefix="inspect-load-"))
    rows = []
    try:
        t0 = time.perf_counter()
        make_run(tmp)
        setup = time.perf_counter() - t0
        srv, sock, base = make_server([tmp / "runs"], "127.0.0.1", 0)
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not srv.started:
            time.sleep(0.05)
        url, run = base + "/api/inspect", "runs/gpt2-random"
        first, _ = post(url, {"run": run, "prompt": "x", "step": 1})
        post(base + "/api/next", {"run": run, "prompt": "x", "step": 0})  # both checkpoints loaded once
        for n in (int(x) for x in args.tokens.split(",")):
            prompt = (PROMPT * 4)[:n]
            new, size = post(url, {"run": run, "prompt": prompt, "step": 1})
            cached, _ = post(url, {"run": run, "prompt": prompt, "step": 1})
            other, _ = post(url, {"run": run, "prompt": prompt, "step": 0})
            # a next-token request while an inspect of a fresh prompt is being computed
            busy = threading.Thread(target=post, args=(url, {"run": run, "prompt": prompt[::-1], "step": 1}))
            busy.start()
            time.sleep(0.05)
            during, _ = post(base + "/api/next", {"run": run, "prompt": prompt, "step": 1})
            busy.join()
            row = {"tokens": n, "inspect_new_s": new, "inspect_cached_s": cached, "inspect_other_step_s": other,
                   "response_kib": size / 1024, "next_during_inspect_s": during}
            if not args.no_browser:
                b = browser_times(base, n)
                if b:
                    row.update(b)
            rows.append(row)
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"model": "12 x 768, 12 heads, vocab 50304 (124M), random", "threads": args.threads,
           "setup_s": setup, "first_inspect_with_load_s": first, "rows": rows}
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['model']}, {args.threads} threads: run written in {setup:.1f}s; first inspect (model load) "
          f"{first:.2f}s")
    for r in rows:
        line = (f"{r['tokens']:3d} tokens: inspect {r['inspect_new_s']:.2f}s new, {r['inspect_cached_s'] * 1000:.0f}ms "
                f"cached, {r['inspect_other_step_s']:.2f}s other checkpoint, {r['response_kib']:.0f} KiB; next "
                f"during an inspect {r['next_during_inspect_s']:.2f}s")
        if "slider_cold_s" in r:
            line += (f"; page: new prompt {r['new_prompt_s']:.2f}s, slider to another checkpoint "
                     f"{r['slider_cold_s']:.2f}s, back (cached) {r['slider_cached_s']:.2f}s")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
