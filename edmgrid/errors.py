"""Errors the CLI reports without a traceback (exit code 2 for bad input, 1 for failed jobs)."""

from __future__ import annotations


class EdmgridError(Exception):
    """Base class of every error edmgrid reports to the user as a message, not a traceback."""

    exit_code = 1


class InputError(EdmgridError):
    """Bad input: a space, a job config or a command-line value.

    The message names the file, the line where known, the dotted field path and the reason.
    """

    exit_code = 2

    def __init__(
        self, reason: str, *, file: str | None = None, line: int | None = None, path: str = ""
    ) -> None:
        self.reason, self.file, self.line, self.path = reason, file, line, path
        where = file or ""
        if file and line is not None:
            where += f":{line}"
        parts = [p for p in (where, path) if p]
        super().__init__(f"{': '.join(parts)}: {reason}" if parts else reason)


class DataError(EdmgridError):
    """A dataset, weights file or checkpoint the user must provide is missing or malformed."""

    exit_code = 2


class JobError(EdmgridError):
    """A job failed for a reason worth reporting in one line (divergence, non-finite samples)."""
