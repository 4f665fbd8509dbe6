"""The progress callback a job reports its own steps through (training images or samples)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``progress(done, total, note)``: ``note`` is a short status, e.g. the running loss."""

    def __call__(self, done: int, total: int, note: str = "") -> None: ...
