"""Plugins: modules that register their own design choices on any axis.

A plugin is a Python module that defines choices with the registries' decorators, as the
built-in ones are defined (``@schedules.register`` on a ``Schedule`` subclass …; see
docs/extending.md). It is named by a space (``plugins: [my_lab.choices]``, importable from the
space file's folder or the Python path), by ``--plugin MODULE``, or by an installed package's
entry point in the group ``edmgrid.choices``. After importing, the job schemas are rebuilt so
that they validate the new choices. A plugin that fails to import or to build is an
``InputError`` naming it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from edmgrid.config.job import JobSpec
from edmgrid.config.model import TrainedModel
from edmgrid.config.sampler import SamplerSpec
from edmgrid.errors import InputError
from edmgrid.registry import ENTRY_POINTS, PLUGIN_KEY

#: The schemas that hold registry unions, inner ones first (each is rebuilt after its parts).
SCHEMAS = (TrainedModel, SamplerSpec, JobSpec)

_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_entry_points_loaded = False


def prepend_import_paths(folders: Iterable[Path]) -> None:
    """Put ``folders`` first on this process's import path and on workers' ``PYTHONPATH``."""
    paths = list(dict.fromkeys(str(Path(f).expanduser().resolve()) for f in folders))
    sys.path[:0] = [p for p in paths if p not in sys.path]
    old = os.environ.get("PYTHONPATH", "")
    if unset := [p for p in paths if p not in old.split(os.pathsep)]:
        os.environ["PYTHONPATH"] = os.pathsep.join([*unset, *([old] if old else [])])


def load_plugins(
    modules: Sequence[str] = (),
    folder: Path | None = None,
    file: str | None = None,
    path: str = "plugins",
) -> None:
    """Import the plugin ``modules`` (from ``folder`` or the Python path) and, once per process,
    the installed ``edmgrid.choices`` entry points; then rebuild the job schemas.

    ``file`` and ``path`` say where the modules were named, for the error message.
    """
    if folder is not None and modules:
        prepend_import_paths([folder])
    loaded = False
    for i, name in enumerate(modules):
        where = f"{path}[{i}]" if file else path
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise InputError(
                f"plugin {name!r} is not a module name; give a dotted name like my_lab.choices",
                file=file,
                path=where,
            )
        _import(name, folder, file, where)
        loaded = True
    loaded |= _load_entry_points()
    if loaded:
        _rebuild(", ".join(modules) or "the installed plugins")


def _import(name: str, folder: Path | None, file: str | None, where: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(f"{e.name}.")):
            searched = f"{folder.resolve()} or the Python path" if folder else "the Python path"
            raise InputError(
                f"plugin {name!r} is not importable from {searched}; put {name.replace('.', '/')}"
                ".py there, or add its folder with --pythonpath or PYTHONPATH",
                file=file,
                path=where,
            ) from None
        raise InputError(_failure(name, e), file=file, path=where) from None
    except Exception as e:
        raise InputError(_failure(name, e), file=file, path=where) from None


def _failure(name: str, error: BaseException) -> str:
    """'plugin NAME failed to import (FILE:LINE: Type: message)', at the plugin's own frame."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "importlib" not in f.filename]
    at = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    message = str(error).splitlines()[0] if str(error) else ""
    return f"plugin {name!r} failed to import ({at}{type(error).__name__}: {message}); fix it"


def _load_entry_points() -> bool:
    """Import every ``edmgrid.choices`` entry point of the installed packages (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return False
    _entry_points_loaded = True
    found = metadata.entry_points(group=ENTRY_POINTS)
    for entry in found:
        try:
            entry.load()
        except Exception as e:
            dist = entry.dist.name if entry.dist is not None else "an installed package"
            raise InputError(
                f"{_failure(entry.value, e)} (entry point {entry.name!r} of {dist})"
            ) from None
    return bool(found)


def _rebuild(names: str) -> None:
    """Rebuild the schemas that hold registry unions, so that they see the new choices."""
    for schema in SCHEMAS:
        try:
            schema.model_rebuild(force=True)
        except Exception as e:
            raise InputError(
                f"plugin {names}: the {schema.__name__} schema does not build with its choices "
                f"({type(e).__name__}: {str(e).splitlines()[0]}); fix the plugin's fields",
                path="plugins",
            ) from None


def recorded_plugins(config: Any) -> list[str]:
    """The plugin modules a recorded job config names (its choices' ``plugin`` keys)."""
    return list(dict.fromkeys(_recorded(config)))


def _recorded(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get(PLUGIN_KEY), str):
            yield node[PLUGIN_KEY].partition(":")[0]
        for value in node.values():
            yield from _recorded(value)
    elif isinstance(node, list):
        for value in node:
            yield from _recorded(value)
