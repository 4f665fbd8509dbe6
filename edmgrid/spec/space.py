"""YAML spaces: ``base`` (one job) × ``grid`` (Cartesian product) × ``zip`` (lockstep lists)."""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edmgrid.errors import SpecError
from edmgrid.spec.job import JobSpec
from edmgrid.spec.presets import PRESETS

#: Grids larger than this need an explicit confirmation (``--yes``).
MAX_JOBS = 2000

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class SpaceFile(BaseModel):
    """The top level of a space file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    base: dict[str, Any]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    search: dict[str, Any] | None = None


@dataclass(frozen=True)
class Space:
    """A validated space and its expanded, deduplicated jobs."""

    name: str
    source: str
    file: SpaceFile
    jobs: list[JobSpec]


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """config[a][b][c] = value for path 'a.b.c', creating dicts on the way."""
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = copy.deepcopy(value)


def resolve_presets(node: Any, scope: str = "") -> Any:
    """Replace ``preset: NAME`` (or a list of names) by the preset with the other keys over it."""
    if isinstance(node, list):
        return [resolve_presets(v, scope) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    if "preset" in node:
        names = node["preset"] if isinstance(node["preset"], list) else [node["preset"]]
        table = PRESETS.get(scope)
        for name in names:
            if table is None:
                raise SpecError(f"presets are not available under '{scope or 'top level'}'")
            if name not in table:
                valid = ", ".join(table)
                raise SpecError(f"unknown {scope} preset {name!r}; valid: {valid}", path=scope)
            entry = table[name]
            out = deep_merge(out, entry(node) if callable(entry) else copy.deepcopy(entry))
    rest = {k: v for k, v in node.items() if k != "preset"}
    merged = deep_merge(out, rest)
    return {k: resolve_presets(v, k) for k, v in merged.items()}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``; a dict that changes its choice replaces rather than merges."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        same_choice = (
            isinstance(old, dict)
            and isinstance(value, dict)
            and all(value.get(k, old.get(k)) == old.get(k) for k in ("name", "arch", "kind"))
        )
        out[key] = deep_merge(old, value) if same_choice else value  # type: ignore[arg-type]
    return out


def expand(file: SpaceFile) -> list[dict[str, Any]]:
    """The raw job configs of a space, in grid order (later keys vary fastest)."""
    factors: list[list[list[tuple[str, Any]]]] = []
    for path, values in file.grid.items():
        if not values:
            raise SpecError("grid entry has no values", path=f"grid.{path}")
        factors.append([[(path, v)] for v in values])
    for i, group in enumerate(file.zip):
        lengths = {len(v) for v in group.values()}
        if len(lengths) != 1 or 0 in lengths:
            detail = ", ".join(f"{p}: {len(v)}" for p, v in group.items())
            raise SpecError(
                f"zip lists must have one equal, nonzero length ({detail})", path=f"zip[{i}]"
            )
        factors.append(
            [list(zip(group, row, strict=True)) for row in zip(*group.values(), strict=True)]
        )
    configs = []
    for combo in itertools.product(*factors):
        config = copy.deepcopy(file.base)
        for assignment in combo:
            for path, value in assignment:
                set_path(config, path, value)
        configs.append(resolve_presets(config))
    return configs


class _LineIndex:
    """Line numbers of the keys of a YAML document, by dotted path."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        with contextlib.suppress(yaml.YAMLError):
            self._walk(yaml.compose(text, Loader=yaml.SafeLoader), "")

    def _walk(self, node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                self.lines[path] = key.start_mark.line + 1
                self._walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                self.lines[f"{prefix}[{i}]"] = value.start_mark.line + 1
                self._walk(value, f"{prefix}[{i}]")

    def find(self, *paths: str) -> int | None:
        """The line of the longest known prefix of the first path that has one."""
        for path in paths:
            parts = path.split(".")
            for n in range(len(parts), 0, -1):
                line = self.lines.get(".".join(parts[:n]))
                if line is not None:
                    return line
        return None


def error_path(error: Any, data: Any) -> str:
    """The dotted field path of a pydantic error, without the discriminator tags."""
    parts: list[str] = []
    node = data
    for loc in error["loc"]:
        if (
            isinstance(node, dict)
            and loc not in node
            and any(node.get(k) == loc for k in ("name", "arch", "kind"))
        ):
            continue  # a union tag, not a field
        parts.append(f"[{loc}]" if isinstance(loc, int) else str(loc))
        node = node[loc] if isinstance(node, dict | list) and _has(node, loc) else None
    return ".".join(parts).replace(".[", "[")


def _has(node: dict[str, Any] | list[Any], loc: Any) -> bool:
    return loc in node if isinstance(node, dict) else isinstance(loc, int) and loc < len(node)


def read_text(path: Path) -> str:
    """The file's text, or a SpecError that says why it cannot be read."""
    if not path.exists():
        raise SpecError("no such file", file=str(path))
    if path.is_dir():
        raise SpecError("is a directory, not a space file", file=str(path))
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text (byte {e.start})", file=str(path)) from None
    except OSError as e:
        raise SpecError(f"cannot read: {e.strerror}", file=str(path)) from None


def load_space(
    path: str | Path, max_jobs: int | None = MAX_JOBS, overrides: dict[str, Any] | None = None
) -> Space:
    """Parse, expand and validate a space file; every problem is a SpecError naming the spot.

    ``overrides`` maps dotted paths to values set in every job (``--data`` sets ``data.path``).
    """
    path = Path(path)
    text = read_text(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"invalid YAML: {reason}", file=str(path), line=line) from None
    lines = _LineIndex(text)
    if not isinstance(raw, dict):
        raise SpecError("a space must be a mapping with name, base, grid", file=str(path))
    try:
        file = SpaceFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = error_path(err, raw)
        raise SpecError(err["msg"], file=str(path), line=lines.find(where), path=where) from None
    try:
        configs = expand(file)
    except SpecError as e:
        raise SpecError(e.reason, file=str(path), line=lines.find(e.path), path=e.path) from None
    if max_jobs is not None and len(configs) > max_jobs:
        raise SpecError(
            f"the grid expands to {len(configs)} jobs, over the limit of {max_jobs}; "
            "pass --yes to run it anyway",
            file=str(path),
        )
    jobs: dict[str, JobSpec] = {}
    for i, config in enumerate(configs):
        for key, value in (overrides or {}).items():
            set_path(config, key, value)
        try:
            job = JobSpec.model_validate(config)
        except ValidationError as e:
            err = e.errors()[0]
            where = error_path(err, config)
            line = lines.find(*_sources(where, file))
            raise SpecError(
                f"{err['msg']} (job {i})", file=str(path), line=line, path=where
            ) from None
        jobs.setdefault(job.job_id, job)
    return Space(name=file.name, source=str(path), file=file, jobs=list(jobs.values()))


def _sources(where: str, file: SpaceFile) -> list[str]:
    """Candidate YAML paths for a job field: the grid or zip key that sets it, else base."""
    candidates = [
        f"grid.{key}" for key in file.grid if where.startswith(key) or key.startswith(where)
    ]
    candidates += [
        f"zip[{i}].{key}"
        for i, group in enumerate(file.zip)
        for key in group
        if where.startswith(key)
    ]
    return [*candidates, f"base.{where}"]
