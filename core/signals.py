"""Prompt stopping: SIGINT (Ctrl-C) and SIGTERM (a scheduler, `kill`) raise `Interrupted` in the
main thread at the next Python instruction, during any stage.

`Interrupted` is a BaseException, so no `except Exception` on the way up swallows it: Lightning
tears the trainer down and re-raises it, the runner's `finally` shuts engines down, the W&B run is
finished, and run.py exits with 128 + the signal number. Finished cache chunks are whole fsync'd
lines, so a rerun of the same command resumes. A second signal while unwinding exits at once.

An exception raised by a signal handler lands wherever the main thread is, and a few places drop it
(a finalizer, a library's blanket `except BaseException`). So long loops also check in
cooperatively with `check_interrupt()` (between cache chunks, between training steps), which raises
`Interrupted` again if a signal arrived and its exception was lost.
"""

from __future__ import annotations

import os
import signal
import sys


class Interrupted(BaseException):
    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []
_unwinding: list[bool] = []  # set once an Interrupted has been seen by the job's handler


def check_interrupt() -> None:
    """Raise `Interrupted` if a signal arrived (a no-op while the job is already unwinding)."""
    if _received and not _unwinding:
        raise Interrupted(_received[0])


def unwinding() -> None:
    """Called by the job's handler of `Interrupted`: the signal has been acted on."""
    _unwinding.append(True)


def _raise_interrupted(signum: int, frame) -> None:
    if _received:  # pressed again while shutting down: stop now
        print(f"\n{signal.Signals(signum).name} again: exiting now", file=sys.stderr)
        os._exit(128 + signum)
    _received.append(signum)
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """Install the handlers (main thread only; a no-op elsewhere, e.g. in launcher workers)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    _unwinding.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)
