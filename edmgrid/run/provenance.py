"""What made a row: the code, its checkout, the libraries and the machine.

Every row (evaluation or training) carries ``provenance()``: ``edmgrid_version``,
``git_commit`` and ``git_dirty`` (when edmgrid runs from a git checkout, else None),
``torch_version``, ``python_version``, ``host`` and ``code_fingerprint``.

``code_fingerprint`` hashes the modules that compute a row's numbers: every ``.py`` file of
``edmgrid/config`` (schemas, presets, the ODE error's reference), ``edmgrid/design`` (the math
of each axis) and ``edmgrid/engine`` (data, denoisers, sampling, training, metrics), by path
and bytes. The scheduler, the store, the CLI and the ground floor (``run/``, ``cli.py``,
``files.py`` …) only decide where and when a result is computed, and do not count. It is not
part of the job id, so that ids stay stable across edits: ``edmgrid run`` warns about rows
whose fingerprint differs from the code's, and ``--rerun-stale`` evaluates them again.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from edmgrid import __version__

PACKAGE = Path(__file__).resolve().parents[1]
#: The sub-packages whose code computes a row's numbers (see the module docstring).
COMPUTING = ("config", "design", "engine")


def hash_sources(digest: Any, paths: Iterable[Path]) -> Any:
    """``digest`` updated with each file's path (relative to the package) and bytes, in order."""
    for path in sorted(paths):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex digits over the source of the ``COMPUTING`` sub-packages."""
    paths = [p for folder in COMPUTING for p in (PACKAGE / folder).rglob("*.py")]
    return str(hash_sources(hashlib.sha256(), paths).hexdigest()[:16])


def _git(*args: str) -> str | None:
    """``git -C <checkout> ARGS`` output, or None (no git, or not a checkout)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE.parent), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout edmgrid is imported from; (None, None) when it is not
    the top of a git work tree (an installed wheel, or a folder inside another repository).
    Dirty: tracked files changed or untracked files that git does not ignore."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != PACKAGE.parent:
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    return commit, None if status is None else bool(status)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """The provenance columns of a row written by this process (computed once)."""
    commit, dirty = git_state()
    return {
        "edmgrid_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": _version("torch"),
        "python_version": platform.python_version(),
        "host": platform.node(),
        "code_fingerprint": code_fingerprint(),
    }
