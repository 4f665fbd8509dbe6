"""Who is running what: claim files, so two ``edmgrid run`` on one store never run a job twice.

A run claims a job before it starts it by creating ``claims/<id>.claim`` with O_CREAT|O_EXCL
(holding pid, host and time) and deletes it once the job's row is written. A claim is stale when
its pid is dead on this host, or when its heartbeat (the file's mtime, touched every
``HEARTBEAT_S`` by the holder) is older than ``STALE_AFTER_S`` (a holder on another host);
the next run that meets a stale claim takes it over. Take-overs happen under an exclusive
``flock`` of ``claims/.lock`` so that two runs can never both take over the same claim.

``active_run`` marks a run as live with a shared ``flock`` of ``.active``: a run that gets it
exclusively knows no other run is live, so every claim and every ``*.tmp`` file is a leftover
of a killed run and is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edmgrid.files import FILE_MODE, file_lock

#: The holder touches its claims this often.
HEARTBEAT_S = 30.0
#: A claim whose heartbeat is older than this is stale, whoever holds it.
STALE_AFTER_S = 300.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """The claims of one run in a results directory; ``heartbeat`` keeps them fresh."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "claims"
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.held: set[str] = set()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.claim"

    def stale(self, path: Path) -> bool:
        """Whether the claim at ``path`` belongs to a dead run (False once it is gone)."""
        try:
            age = time.time() - path.stat().st_mtime
            owner = json.loads(path.read_text())
            pid, host = int(owner["pid"]), owner["host"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError):
            return True  # empty or unreadable: a claim cut short by a crash
        return age > STALE_AFTER_S or (host == self.host and not pid_alive(pid))

    def acquire(self, name: str) -> bool:
        """Claim ``name``; False when a live run holds it."""
        path = self.path(name)
        with file_lock(self.dir / ".lock"):
            if path.exists():
                if not self.stale(path):
                    return False
                path.unlink()
            # held before it exists, so an interrupt from here on still releases it; under the
            # lock no other run can create it meanwhile
            self.held.add(name)
            body = json.dumps({"pid": self.pid, "host": self.host, "time": time.time()})
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            except FileExistsError:  # a run whose file system ignores our lock
                self.held.discard(name)
                return False
            with os.fdopen(fd, "w") as f:
                f.write(body)
        return True

    def taken(self, name: str) -> bool:
        """Whether a live run (this one included) holds ``name``."""
        path = self.path(name)
        return path.exists() and not self.stale(path)

    def release(self, name: str) -> None:
        self.held.discard(name)
        self.path(name).unlink(missing_ok=True)

    def release_all(self) -> None:
        for name in list(self.held):
            self.release(name)

    def touch(self) -> None:
        """Refresh the heartbeat of every held claim."""
        for name in list(self.held):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path(name))

    def __enter__(self) -> Claims:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                self.touch()

        self._beat = threading.Thread(target=beat, name="edmgrid-heartbeat", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.release_all()


def sweep(root: Path) -> int:
    """Delete every claim and ``*.tmp`` file (and a DuckDB ``*.tmp.wal`` beside one) under
    ``root`` (only safe with no live run)."""
    removed = 0
    for pattern in ("claims/*.claim", "**/*.tmp", "**/*.tmp.wal"):
        for path in root.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def active_run(root: Path) -> Iterator[bool]:
    """Mark a run as live for the block; yields whether it found (and swept) leftovers alone."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".active", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            alone = False
        if alone:
            sweep(root)
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield alone
    finally:
        os.close(fd)
