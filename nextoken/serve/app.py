"""The web app of `nextoken serve`: a JSON API (docs/serve.md) and the pages built on it, served from
nextoken/serve/static/ (no script, style or font from anywhere else).

Starlette rather than FastAPI: every handler is a thin call into nextoken's own functions, which already
validate their input and raise one-line NextokenErrors; FastAPI's pydantic layer would add a second error
format and a large dependency for ~15 routes. Sync handlers run in Starlette's thread pool, so a model
forward never blocks other requests.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from nextoken.errors import NextokenError
from nextoken.serve import models as M
from nextoken.serve.runs import (
    X_AXES,
    Forbidden,
    MetricsTail,
    NotFound,
    Roots,
    config_diff,
    curves,
    lab_summary,
    summarize,
)

STATIC = Path(__file__).parent / "static"
PAGES = ("/", "/run", "/compare", "/next", "/inspect", "/surprise", "/sample", "/scaling", "/labs")
MAX_BODY = 256 * 1024
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class BadRequest(NextokenError):
    """A query or body the API cannot use."""


class State:
    def __init__(self, roots: Roots):
        self.roots = roots
        self.tail = MetricsTail()
        self.models = M.ModelCache()
        self.curves: OrderedDict[tuple, dict] = OrderedDict()  # (run, metrics bytes read, x, buckets): polls of
        self.curves_lock = threading.Lock()                     # an unchanged run cost nothing
        self.inspections: OrderedDict[tuple, bytes] = OrderedDict()  # (checkpoint, mtime, prompt, target, top):
        self.inspections_lock = threading.Lock()                       # the JSON, encoded once
        self.started = time.time()


# ---- request helpers -------------------------------------------------------------------------------

def _param(source: dict, name: str, kind=str, default=None, required: bool = False):
    v = source.get(name)
    if v is None or v == "":
        if required:
            raise BadRequest(f"missing {name!r}")
        return default
    if kind is str:
        if not isinstance(v, str):
            raise BadRequest(f"{name!r} must be a string")
        return v
    try:
        if isinstance(v, bool):
            raise ValueError
        out = kind(v)
    except (TypeError, ValueError):
        raise BadRequest(f"{name!r} must be {'an integer' if kind is int else 'a number'}; got {v!r}") from None
    if kind is float and not math.isfinite(out):
        raise BadRequest(f"{name!r} must be finite; got {v!r}")
    return out


async def _body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the request body is over {MAX_BODY // 1024} KiB")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _error(e: Exception) -> JSONResponse:
    status = 404 if isinstance(e, NotFound) else 403 if isinstance(e, Forbidden) else 400
    return JSONResponse({"error": str(e).splitlines()[0] if str(e) else type(e).__name__}, status_code=status)


def api(fn):
    """A JSON endpoint: the handler's dict as JSON, a NextokenError as {"error": one line} with 400/403/404."""
    async def endpoint(request: Request) -> Response:
        try:
            out = await fn(request, request.app.state.serve)
        except NextokenError as e:
            return _error(e)
        except Exception as e:  # a bug or a file that changed under us: one line, never a traceback page
            return JSONResponse({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"},
                                status_code=500)
        return out if isinstance(out, Response) else JSONResponse(out)

    endpoint.__name__ = fn.__name__
    return endpoint


def _threaded(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return run_in_threadpool(fn, *args)


def _run_entry(st: State, path: Path) -> dict:
    rid = st.roots.id_of(path)
    try:
        run = st.roots.run(rid)
        rows, tail = st.tail.read(run.path)
        return {"id": rid, "name": run.name, **summarize(run, rows, tail.mtime)}
    except Exception as e:  # a corrupt or foreign directory: one line in the list, the others still shown
        return {"id": rid, "name": path.name, "state": "unreadable", "error": str(e).splitlines()[0] if str(e)
                else type(e).__name__}


# ---- endpoints -------------------------------------------------------------------------------------

@api
async def list_runs(request: Request, st: State) -> dict:
    def work():
        runs, sweeps = st.roots.discover()
        return {"roots": {k: str(v) for k, v in st.roots.roots.items()},
                "runs": [_run_entry(st, p) for p in runs],
                "sweeps": [{"id": st.roots.id_of(s), "name": s.name} for s in sweeps]}
    return await _threaded(work)


@api
async def run_detail(request: Request, st: State) -> dict:
    rid = _param(request.query_params, "run", required=True)

    def work():
        run = st.roots.run(rid)
        rows, tail = st.tail.read(run.path)
        try:
            config = run.config.to_dict()
        except Exception as e:
            raise NextokenError(f"{rid}: its config.toml cannot be read ({str(e).splitlines()[0]})") from None
        return {"id": rid, "name": run.name, **summarize(run, rows, tail.mtime), "config": config,
                "lines": len(rows), "version": tail.offset}
    return await _threaded(work)


@api
async def run_curves(request: Request, st: State) -> dict:
    q = request.query_params
    rid = _param(q, "run", required=True)
    x = _param(q, "x", default="step")
    if x not in X_AXES:
        raise BadRequest(f"x must be one of {', '.join(X_AXES)}; got {x!r}")
    buckets = _param(q, "buckets", int, 1000)

    def work():
        run = st.roots.run(rid)
        rows, tail = st.tail.read(run.path)
        key = (str(run.path), tail.ino, tail.offset, x, buckets)
        with st.curves_lock:
            if key in st.curves:
                return st.curves[key]
        out = {"id": rid, "version": tail.offset, **curves(rows, x, buckets)}
        with st.curves_lock:
            st.curves[key] = out
            while len(st.curves) > 32:
                st.curves.popitem(last=False)
        return out
    return await _threaded(work)


@api
async def compare(request: Request, st: State) -> dict:
    ids = request.query_params.getlist("run")
    if not 1 <= len(ids) <= 8:
        raise BadRequest("compare takes 1 to 8 runs: ?run=A&run=B")

    def work():
        configs, out = {}, {}
        for rid in ids:
            run = st.roots.run(rid)
            rows, tail = st.tail.read(run.path)
            configs[rid] = run.config.to_dict()
            out[rid] = summarize(run, rows, tail.mtime)
        return {"runs": out, "diff": config_diff(configs)}
    return await _threaded(work)


@api
async def next_token(request: Request, st: State) -> dict:
    b = await _body(request)
    rid = _param(b, "run", required=True)
    prompt = _param(b, "prompt", default="")
    step, top, target = _param(b, "step", int), _param(b, "top", int, 20), _param(b, "target")

    def work():
        loaded = st.models.get(st.roots.run(rid), step)
        return {"run": rid, **M.next_logits(loaded, prompt, top, target)}
    return await _threaded(work)


@api
async def inspect_prompt(request: Request, st: State) -> Response:
    from nextoken.inspect import inspect

    b = await _body(request)
    rid, step = _param(b, "run", required=True), _param(b, "step", int)
    prompt, target, top = _param(b, "prompt", default=""), _param(b, "target"), _param(b, "top", int, 5)

    def work():
        run = st.roots.run(rid)
        loaded = st.models.get(run, step)
        key = (*st.models.key(run, loaded.checkpoint), prompt, target, top)
        with st.inspections_lock:
            if key in st.inspections:
                st.inspections.move_to_end(key)
                return st.inspections[key]
        out = {"run": rid, "checkpoints": run.checkpoint_steps(),
               **inspect(loaded, prompt, target, top)}
        body = json.dumps(out, separators=(",", ":"), allow_nan=False).encode()
        with st.inspections_lock:
            st.inspections[key] = body
            while len(st.inspections) > 16:  # up to ~7 MB each: a 124M model at 64 tokens
                st.inspections.popitem(last=False)
        return body
    return Response(await _threaded(work), media_type="application/json")


@api
async def list_labs(request: Request, st: State) -> dict:
    def work():
        labs: list[Path] = []
        st.roots.discover(labs)
        out = []
        for d in labs:
            lid = st.roots.id_of(d)
            try:
                out.append({"id": lid, "name": d.name, **lab_summary(d)})
            except Exception as e:
                out.append({"id": lid, "name": d.name, "error": str(e).splitlines()[0] if str(e) else type(e).__name__})
        return {"labs": out}
    return await _threaded(work)


def _lab_dir(st: State, lid: str) -> Path:
    path = st.roots.resolve(lid)
    if not (path / "lab.json").is_file():
        raise BadRequest(f"{lid!r} is not a lab experiment directory (no lab.json; see /api/labs)")
    return path


@api
async def lab_report(request: Request, st: State) -> dict:
    lid = _param(request.query_params, "lab", required=True)

    def work():
        path = _lab_dir(st, lid)
        report = path / "report.md"
        runs = [st.roots.id_of(r) for r in sorted((path / "runs").glob("*")) if r.is_dir() and not r.is_symlink()] \
            if (path / "runs").is_dir() else []
        return {"id": lid, "name": path.name, **lab_summary(path), "run_ids": runs,
                "report": report.read_text(errors="replace") if report.is_file() else None}
    return await _threaded(work)


async def lab_figure(request: Request) -> Response:
    st = request.app.state.serve
    try:
        path = _lab_dir(st, _param(request.query_params, "lab", required=True)) / "figure.png"
        if not path.is_file() or path.is_symlink():
            raise NotFound("this experiment has no figure.png yet")
    except NextokenError as e:
        return _error(e)
    return FileResponse(path, media_type="image/png")


@api
async def surprise(request: Request, st: State) -> dict:
    b = await _body(request)
    rid, step = _param(b, "run", required=True), _param(b, "step", int)
    text, doc = _param(b, "text"), _param(b, "doc", int)
    if (text is None) == (doc is None):
        raise BadRequest("give a text or a val document index (doc), one of them")

    def work():
        run = st.roots.run(rid)
        loaded = st.models.get(run, step)
        return {"run": rid, **M.surprise(loaded, text if doc is None else M.val_document(run, doc))}
    return await _threaded(work)


@api
async def val_docs(request: Request, st: State) -> dict:
    rid = _param(request.query_params, "run", required=True)
    return await _threaded(lambda: {"run": rid, "documents": M.val_documents(st.roots.run(rid))})


@api
async def sample(request: Request, st: State) -> Response:
    from nextoken.generate import check_sampling, draw_seed, encode_prompt, stream_text

    b = await _body(request)
    rid, step, prompt = _param(b, "run", required=True), _param(b, "step", int), _param(b, "prompt", default="")
    n = _param(b, "max_new_tokens", int, 200)
    temperature = _param(b, "temperature", float, 0.8)
    top_k, top_p = _param(b, "top_k", int), _param(b, "top_p", float)
    seed = _param(b, "seed", int)
    if n > 2000:
        raise BadRequest(f"max_new_tokens must be <= 2000; got {n}")
    check_sampling(temperature, top_k, top_p, n)
    seed = draw_seed() if seed is None else seed
    loaded = await _threaded(st.models.get, st.roots.run(rid), step)
    encode_prompt(loaded.tokenizer, prompt)  # one-line error before the stream starts

    def lines():  # a sync iterator: Starlette runs it in its thread pool, one token at a time
        yield json.dumps({"seed": seed, "step": loaded.step, "checkpoint": loaded.checkpoint.name}) + "\n"
        for piece in stream_text(loaded.tokenizer, loaded.model, prompt, n, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=seed):
            yield json.dumps({"text": piece}) + "\n"
        yield json.dumps({"done": True}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@api
async def sweep_detail(request: Request, st: State) -> dict:
    from nextoken.serve.scaling import sweep_view

    sid = _param(request.query_params, "sweep", required=True)
    return await _threaded(sweep_view, st.roots.resolve(sid), sid)


@api
async def plan_view(request: Request, st: State) -> dict:
    from nextoken.serve.scaling import plan_for

    q = request.query_params
    flops, params, tokens = (_param(q, k, float) for k in ("flops", "params", "tokens"))
    law, sid = _param(q, "law", default="chinchilla"), _param(q, "sweep")
    tps = _param(q, "tokens_per_s", float)
    fit = st.roots.resolve(sid) / "fit.json" if sid else None
    if fit is not None and not fit.is_file():
        raise BadRequest(f"{sid} has no fit.json yet; run `nextoken fit {sid}` (serve never writes it)")
    return await _threaded(plan_for, law, flops, params, tokens, fit, tps)


@api
async def laws(request: Request, st: State) -> dict:
    from nextoken.scaling.laws import LAWS

    return {"laws": list(LAWS)}


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def not_found(request: Request, exc) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": f"no endpoint {request.url.path}; see docs/serve.md"}, status_code=404)
    return JSONResponse({"error": f"no page {request.url.path}"}, status_code=404)


class _Headers:
    """Security headers on every response: the CSP keeps every request on this origin."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]
            await send(message)

        await self.app(scope, receive, send_with)


def create_app(paths: list[str | Path], allowed_hosts: list[str] | None = None) -> Starlette:
    """The app over the runs under `paths`. `allowed_hosts` restricts the Host header (the CLI passes the
    loopback names when bound to loopback, so a page on another site cannot reach it by DNS rebinding)."""
    routes = [
        Route("/api/runs", list_runs), Route("/api/run", run_detail), Route("/api/curves", run_curves),
        Route("/api/compare", compare), Route("/api/next", next_token, methods=["POST"]),
        Route("/api/surprise", surprise, methods=["POST"]), Route("/api/docs", val_docs),
        Route("/api/sample", sample, methods=["POST"]), Route("/api/sweep", sweep_detail),
        Route("/api/plan", plan_view), Route("/api/laws", laws),
        Route("/api/inspect", inspect_prompt, methods=["POST"]), Route("/api/labs", list_labs),
        Route("/api/lab", lab_report), Route("/api/lab/figure", lab_figure),
        *[Route(p, page) for p in PAGES],
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(_Headers)]
    if allowed_hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={404: not_found})
    app.state.serve = State(Roots(paths))
    return app
