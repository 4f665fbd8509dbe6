"""Interrupts (SIGINT, SIGTERM) as requests to stop at the next safe point.

Inside ``deferred()`` a signal raises nothing where it lands (an import half done, a fork server
starting, a row being written); it is recorded, and ``check`` raises ``KeyboardInterrupt`` where
the run can stop cleanly: the scheduler's loop and its workers' progress events, and at once
inside ``immediate()`` (waiting for a worker to start). A second signal raises at once (a job
that reports no progress). ``edmgrid`` defers signals from its first line (``__main__``). The
run then says what it kept with ``Interrupted``: "interrupted: N done, M left; re-run to
continue", exit code 130.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from edmgrid.errors import EdmgridError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    depth = 0
    immediate = 0  # inside ``immediate()``
    received: int | None = None  # the first signal of this run
    #: () -> (jobs done, jobs left), set once a run knows its jobs.
    tally: Callable[[], tuple[int, int]] | None = None


def _handler(signum: int, frame: Any) -> None:
    again = _State.received is not None
    _State.received = signum
    if again or _State.immediate:
        raise KeyboardInterrupt


@contextmanager
def deferred() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM are recorded for ``check`` (nested blocks share one
    record). Only the main thread can handle signals: elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in SIGNALS} if _State.depth == 0 else {}
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0:
            for s, handler in old.items():
                signal.signal(s, handler)
            _State.received, _State.tally = None, None


def for_process() -> None:
    """``deferred()`` from now until the process exits (its entry point's first act)."""
    for s in SIGNALS:
        signal.signal(s, _handler)
    _State.depth += 1


@contextmanager
def immediate() -> Iterator[None]:
    """For the block, a wait that is safe to abandon (a worker starting up), a signal raises
    ``KeyboardInterrupt`` at once, as does one that arrived before."""
    check()
    _State.immediate += 1
    try:
        yield
    finally:
        _State.immediate -= 1


def requested() -> bool:
    """Whether a signal arrived (inside ``deferred``)."""
    return _State.received is not None


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a signal arrived."""
    if _State.received is not None:
        raise KeyboardInterrupt


def set_tally(tally: Callable[[], tuple[int, int]]) -> None:
    """How ``Interrupted.now`` counts the jobs done and left (the run's space in the store)."""
    _State.tally = tally


class Interrupted(EdmgridError):
    """A run stopped by a signal; what it finished is kept."""

    exit_code = 130

    @classmethod
    def now(cls) -> Interrupted:
        """The interruption of the current run, with its tally if it has one."""
        if _State.tally is None:
            return cls("interrupted; re-run to continue")
        done, left = _State.tally()
        return cls(f"interrupted: {done} done, {left} left; re-run to continue")
