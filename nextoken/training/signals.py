"""Ctrl-C and SIGTERM: stop at the next step boundary, after saving a checkpoint."""

from __future__ import annotations

import signal

from nextoken.errors import NextokenError


class Interrupted(NextokenError):
    """Ctrl-C or SIGTERM (on any rank), or the death of torchrun's agent: a checkpoint was saved at the current
    step."""

    exit_code = 130


class GracefulStop:
    """The first Ctrl-C (or SIGTERM) asks the loop to stop at the next step boundary, where it saves a
    checkpoint; a second one raises KeyboardInterrupt at once. `restore()` puts the previous handlers
    back; outside the main thread (no signals there) it does nothing."""

    def __init__(self, notify=None):
        self.requested = False
        self.notify = notify or (lambda msg: None)
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.notify("stopping after this step to save a checkpoint; press Ctrl-C again to exit at once")

    def install(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
