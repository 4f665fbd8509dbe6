"""Ground floor: crash-safe files and content hashing, shared by every layer above.

Every file edmgrid writes goes through ``atomic_write`` (a ``*.tmp`` sibling renamed over it), so
a killed process leaves at most a ``*.tmp`` file. A file that cannot be read all the same
(truncated or overwritten on disk) is moved to ``quarantine/`` by ``read_or_quarantine`` with a
one-line warning, and is then missing: whatever it held is made again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

#: The folder of a results directory that unreadable files are moved to.
QUARANTINE = "quarantine"

T = TypeVar("T")

#: Space names become file names under ``spaces/``: no separators, no leading dot.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
NAME_RULE = "1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"


def check_space_name(name: str) -> str:
    """``name`` if it is a valid space name, else a ValueError that states the rule."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{name!r} is not a space name: use {NAME_RULE}")
    return name


def content_hash(obj: Any) -> str:
    """16 hex digits of SHA-256 over canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def umask() -> int:
    """The process's file mode creation mask (read from /proc on Linux; elsewhere set and
    restored, which is not thread-safe for that instant)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of the files edmgrid creates, before the umask: what ``open(path, "w")`` gives, so
#: that a store shared by a group (umask 002) or readable by all (022) stays so.
FILE_MODE = 0o666


def atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)``, fsync, rename over ``path``: readers never see a partial file.

    The file gets the mode a plainly created one would (``FILE_MODE`` less the umask), not
    ``mkstemp``'s 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE & ~umask())
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def quarantine(path: Path, root: Path, reason: str, seen: os.stat_result) -> None:
    """Move the unreadable file ``path`` to ``root/quarantine/`` (keeping its path under
    ``root``), with a one-line warning on stderr that is also appended to
    ``quarantine/quarantine.log``.

    ``seen`` is the file's stat from before it was read: a file replaced since (by a concurrent
    writer) is not the one that failed, and stays; one already moved by another process is
    not reported twice. A file that cannot be moved is only reported.
    """
    try:
        now = path.stat()
    except FileNotFoundError:
        return
    if (now.st_ino, now.st_size, now.st_mtime_ns) != (seen.st_ino, seen.st_size, seen.st_mtime_ns):
        return
    folder = root / QUARANTINE
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(path.name)
    dest, copies = folder / relative, 0
    while dest.exists():
        copies += 1
        dest = folder / relative.with_name(f"{relative.name}.{copies}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)
    except FileNotFoundError:
        return
    except OSError as e:
        sys.stderr.write(f"warning: {path} is unreadable ({reason}) and cannot be moved: {e}\n")
        return
    line = f"quarantined {path}: {reason} (moved to {dest})"
    sys.stderr.write(f"warning: {line}\n")
    with open(folder / "quarantine.log", "a") as log:
        log.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")


def read_or_quarantine(path: Path, read: Callable[[Path], T], root: Path) -> T | None:
    """``read(path)``, or None when the file is missing or ``read`` fails on it; a file that
    fails is quarantined (``quarantine``), so whatever it held is made again."""
    try:
        seen = path.stat()
    except FileNotFoundError:
        return None
    try:
        return read(path)
    except FileNotFoundError:
        return None
    except MemoryError:
        raise
    except Exception as e:
        said = str(e).splitlines()[0].replace(f" '{path}'", "") if str(e) else ""
        quarantine(path, root, f"{type(e).__name__}: {said.split('. ')[0]}", seen)
        return None


def load_cached(path: Path, cache_dir: Path) -> Any:
    """``torch.load`` (weights only) of a file in ``cache_dir`` (a results directory's
    ``cache/``), onto the CPU whichever device wrote it; None when it is missing or unreadable
    (then quarantined: it is made again)."""
    import torch

    def load(p: Path) -> Any:
        return torch.load(p, map_location="cpu", weights_only=True)

    return read_or_quarantine(path, load, cache_dir.parent)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
