"""`nextoken serve`: a local web app to watch, probe and compare runs (docs/serve.md).

    app.py      the Starlette app: the JSON API and the pages
    runs.py     roots and run ids (nothing outside the roots), run state, summaries, curves
    models.py   the model cache and what the probing pages compute (next token, surprise, val documents)
    scaling.py  the scaling page: a sweep's profiles and fit, the plan calculator
    static/     the pages' HTML, JS and CSS: everything the browser loads comes from here
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

from nextoken.errors import NextokenError

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]", "::1"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line NextokenError saying what to do when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise NextokenError(f"port {port} on {host} is in use (another nextoken serve?); pass --port N, "
                                "or stop the other server") from None
        raise NextokenError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def make_server(paths: list[str | Path], host: str = "127.0.0.1", port: int = 8600):
    """(uvicorn server, bound socket, address) for the runs under `paths`; `port` 0 takes a free port."""
    import uvicorn

    from nextoken.serve.app import create_app

    app = create_app(paths, allowed_hosts=LOOPBACK_NAMES if is_loopback(host) else None)
    sock = bind(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    h, p = sock.getsockname()[:2]
    shown = f"[{h}]" if ":" in h else h
    return server, sock, f"http://{'127.0.0.1' if shown == '127.0.0.1' else shown}:{p}"


def serve(paths: list[str | Path], host: str = "127.0.0.1", port: int = 8600,
          log: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C. Raises NextokenError for a path that is not a directory or a port in use."""
    paths = list(paths) or ["runs"]
    for p in paths:
        if not Path(p).is_dir():
            raise NextokenError(f"{p} is not a directory; pass run directories or folders of runs "
                                "(default ./runs, e.g. the --out of nextoken train)")
    server, sock, url = make_server(paths, host, port)
    if not is_loopback(host):
        log(f"warning: listening on {host}: anyone who can reach this machine on port {sock.getsockname()[1]} can "
            "read these runs and query their models")
    log(f"nextoken serve: {url}  (runs under {', '.join(str(p) for p in paths)}; Ctrl-C stops)")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
