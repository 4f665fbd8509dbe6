"""YAML spaces: ``base`` (one job) × ``grid`` (Cartesian product) × ``zip`` (lockstep lists)
× ``replicates`` (training seeds × independent evaluation seed ranges)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from edmgrid.config.job import JobSpec, parse_seeds, replicate_key, seed_text
from edmgrid.config.metrics import FID
from edmgrid.config.model import TrainedModel
from edmgrid.config.plugins import load_plugins
from edmgrid.config.presets import PRESETS
from edmgrid.config.slurm import SlurmSettings
from edmgrid.errors import InputError
from edmgrid.files import check_space_name, content_hash
from edmgrid.registry import Choice, Strict

#: Grids larger than this need an explicit confirmation (``--yes``).
MAX_JOBS = 2000

#: Values a space file may hold once YAML aliases are expanded (a guard against alias bombs).
MAX_VALUES = 100_000

#: Replicates of one kind at most (the paper uses 3).
MAX_REPLICATES = 100

#: Keys that name a choice in a job config (the registries' discriminators).
TAGS = ("name", "arch", "kind")


class Replicates(Strict):
    """Independent repeats of every job (issue 13), to put intervals on its metrics.

    Train replicate r sets ``model.training.seed`` to the job's seed + r; eval replicate r
    samples the job's seeds shifted by r × their span (``0-49999`` → ``50000-99999``: the
    paper's 3 × 50k FID). Replicate 0 is the job itself, with its id.
    """

    train: int = Field(1, ge=1, le=MAX_REPLICATES)
    eval: int = Field(1, ge=1, le=MAX_REPLICATES)


class SpaceFile(Strict):
    """The top level of a space file."""

    name: Annotated[str, AfterValidator(check_space_name)]
    description: str = ""
    base: dict[str, Any]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    search: dict[str, Any] | None = None
    #: Modules that register choices (``edmgrid.config.plugins``), from this file's folder or
    #: the Python path.
    plugins: list[str] = Field(default_factory=list)
    replicates: Replicates = Field(default_factory=Replicates)
    slurm: SlurmSettings | None = None


@dataclass(frozen=True)
class Space:
    """A validated space and its expanded, deduplicated jobs.

    ``replicates`` maps each job id to its (train, eval) replicate index (``replicate_indices``);
    ``digest`` hashes the file's text, to tell two files that share a ``name:`` apart.
    """

    name: str
    source: str
    file: SpaceFile
    jobs: list[JobSpec]
    replicates: dict[str, tuple[int, int]]
    digest: str


def replicate(job: JobSpec, train: int, evaluation: int) -> JobSpec:
    """Train replicate ``train`` × eval replicate ``evaluation`` of ``job`` (see ``Replicates``);
    the configs are those a grid over ``model.training.seed`` and ``seeds`` would give."""
    if train == evaluation == 0:
        return job
    config = job.resolved()
    if train:
        config["model"]["training"]["seed"] += train
    if evaluation:
        seeds = parse_seeds(job.seeds)
        span = max(seeds) - min(seeds) + 1
        config["seeds"] = seed_text([s + evaluation * span for s in seeds])
    return JobSpec.model_validate(config)


def replicate_indices(jobs: list[JobSpec]) -> dict[str, tuple[int, int]]:
    """{job id: (train, eval)}: among the jobs that are replicates of one configuration
    (``replicate_key``), the rank of the job's training seed and of its first seed.

    So ``replicates: {train: 3}`` and a grid over ``model.training.seed: [0, 1, 2]`` give the
    same indices; a job alone in its configuration is (0, 0).
    """
    groups: dict[str, list[JobSpec]] = {}
    for job in jobs:
        groups.setdefault(replicate_key(job.resolved()), []).append(job)
    out: dict[str, tuple[int, int]] = {}
    for group in groups.values():
        train = sorted({_training_seed(j) for j in group})
        first = sorted({min(j.seed_list) for j in group})
        for j in group:
            out[j.job_id] = (train.index(_training_seed(j)), first.index(min(j.seed_list)))
    return out


def _training_seed(job: JobSpec) -> int:
    return job.model.training.seed if isinstance(job.model, TrainedModel) else 0


def _check_replicates(job: JobSpec, wanted: Replicates) -> tuple[str, str] | None:
    """(field, reason) when ``job`` cannot be replicated as ``wanted``."""
    if wanted.train > 1 and not isinstance(job.model, TrainedModel):
        return "replicates.train", (
            f"training replicates need a trained model (model.kind: trained), not "
            f"{job.model.kind!r}; drop replicates.train or train the model"
        )
    paper = any(isinstance(m, FID) and m.protocol == "paper" for m in job.metrics)
    if wanted.eval > 1 and paper:
        return "replicates.eval", (
            "fid protocol 'paper' already samples 3 seed ranges; use protocol 'single' with "
            "replicates.eval: 3 (compare --stat min gives the paper's min of 3)"
        )
    return None


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """config[a][b][c] = value for path 'a.b.c', creating dicts on the way."""
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = copy.deepcopy(value)


def resolve_presets(node: Any, scope: str = "", where: str = "") -> Any:
    """Replace ``preset: NAME`` (or a list of names) by the preset with the other keys over it.

    ``scope`` is the key the node sits under (it picks the preset table), ``where`` its path.
    """
    if isinstance(node, list):
        return [resolve_presets(v, scope, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    if "preset" in node:
        names = node["preset"] if isinstance(node["preset"], list) else [node["preset"]]
        table = PRESETS.get(scope)
        here = f"{where}.preset" if where else "preset"
        for name in names:
            if table is None:
                valid = ", ".join(PRESETS)
                raise InputError(
                    f"presets are not available under '{scope or 'top level'}'; only under {valid}",
                    path=here,
                )
            if not isinstance(name, str) or name not in table:
                valid = ", ".join(table)
                raise InputError(f"unknown {scope} preset {name!r}; valid: {valid}", path=here)
            entry = table[name]
            try:
                out = deep_merge(out, entry(node) if callable(entry) else copy.deepcopy(entry))
            except ValueError as e:  # a preset computed from its node's keys (Table 2's budget)
                raise InputError(f"{scope} preset {name!r}: {e}", path=here) from None
    rest = {k: v for k, v in node.items() if k != "preset"}
    merged = deep_merge(out, rest)
    return {
        k: resolve_presets(v, k, f"{where}.{k}" if where else str(k)) for k, v in merged.items()
    }


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``; a dict that changes its choice replaces rather than merges."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        same_choice = (
            isinstance(old, dict)
            and isinstance(value, dict)
            and all(value.get(k, old.get(k)) == old.get(k) for k in TAGS)
        )
        out[key] = deep_merge(old, value) if same_choice else value  # type: ignore[arg-type]
    return out


def expand(file: SpaceFile, max_jobs: int | None = None) -> list[dict[str, Any]]:
    """The raw job configs of a space, in grid order (later keys vary fastest).

    The size of the product (times the replicates) is checked against ``max_jobs`` before
    anything is built.
    """
    factors: list[list[list[tuple[str, Any]]]] = []
    for path, values in file.grid.items():
        if not values:
            raise InputError("grid entry has no values", path=f"grid.{path}")
        factors.append([[(path, v)] for v in values])
    for i, group in enumerate(file.zip):
        lengths = {len(v) for v in group.values()}
        if len(lengths) != 1 or 0 in lengths:
            detail = ", ".join(f"{p}: {len(v)}" for p, v in group.items())
            raise InputError(
                f"zip lists must have one equal, nonzero length ({detail})", path=f"zip[{i}]"
            )
        factors.append(
            [list(zip(group, row, strict=True)) for row in zip(*group.values(), strict=True)]
        )
    count = math.prod(len(f) for f in factors) * file.replicates.train * file.replicates.eval
    if max_jobs is not None and count > max_jobs:
        raise InputError(
            f"the grid expands to {count} jobs, over the limit of {max_jobs}; "
            "pass --yes to run it anyway, or shrink grid, zip and replicates"
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
    """Line numbers of the keys of a composed YAML document, by dotted path.

    Walking the document also refuses duplicate keys (YAML would keep the last silently) and
    documents whose aliases expand to more than MAX_VALUES values.
    """

    def __init__(self, root: yaml.Node | None, file: str) -> None:
        self.lines: dict[str, int] = {}
        self.file, self.budget = file, MAX_VALUES
        if root is not None:
            self._walk(root, "")

    def _walk(self, node: yaml.Node, prefix: str) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise InputError(
                f"the document holds over {MAX_VALUES} values once its aliases (*name) are "
                "expanded; write the values out or use grid",
                file=self.file,
            )
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                line = key.start_mark.line + 1
                if path in self.lines:
                    raise InputError(
                        f"duplicate key (first on line {self.lines[path]}); keep one",
                        file=self.file,
                        line=line,
                        path=path,
                    )
                self.lines[path] = line
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
        if isinstance(node, dict) and loc not in node and any(node.get(k) == loc for k in TAGS):
            continue  # a union tag, not a field
        parts.append(f"[{loc}]" if isinstance(loc, int) else str(loc))
        node = node[loc] if isinstance(node, dict | list) and _has(node, loc) else None
    return ".".join(parts).replace(".[", "[")


def _has(node: dict[str, Any] | list[Any], loc: Any) -> bool:
    return loc in node if isinstance(node, dict) else isinstance(loc, int) and loc < len(node)


def explain(error: Any, data: Any) -> tuple[str, str]:
    """The reason and dotted field path of a pydantic error, phrased to say the fix."""
    where = error_path(error, data)
    reason = error["msg"]
    if error["type"] == "value_error":
        reason = str(error["ctx"]["error"])
    elif error["type"] == "unknown_key":
        where = f"{where}.{error['ctx']['key']}" if where else error["ctx"]["key"]
    elif error["type"] == "unknown_choice":
        given = error["input"]
        if isinstance(given, dict):
            tags = [f"{k}: {given[k]!r}" for k in TAGS if k in given]
            reason += f" (got {', '.join(tags) or 'none'})"
        else:
            reason += f" (got {given!r}, not a mapping)"
    return reason, where


def read_text(path: Path) -> str:
    """The file's text, or a InputError that says why it cannot be read."""
    if not path.exists():
        raise InputError("no such file", file=str(path))
    if path.is_dir():
        raise InputError("is a directory, not a space file", file=str(path))
    if not path.is_file():
        raise InputError("not a regular file (a pipe or device?); give a YAML file", file=str(path))
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", file=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=str(path)) from None


def parse_yaml(text: str, file: str) -> tuple[Any, _LineIndex]:
    """The document (plain YAML only: tags that build Python objects are errors) and its lines."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines = _LineIndex(root, file)
        return (None if root is None else loader.construct_document(root)), lines
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        context, problem = getattr(e, "context", None), getattr(e, "problem", None)
        reason = ", ".join(filter(None, [context, problem])) or str(e).splitlines()[0]
        if isinstance(e, yaml.constructor.ConstructorError) and "tag" in reason:
            reason += "; a space holds plain mappings, lists, strings and numbers: drop the tag"
        elif "'\\t'" in reason:
            reason += "; indent with spaces, not tabs"
        raise InputError(f"invalid YAML: {reason}", file=file, line=line) from None
    except RecursionError:
        raise InputError("invalid YAML: nested too deeply", file=file) from None
    finally:
        loader.dispose()


def missing_inputs(node: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(field path, value) of every input file or folder a job names that does not exist."""
    if isinstance(node, Choice):
        for field in node.input_paths:
            value = getattr(node, field)
            if value is not None and not Path(value).expanduser().exists():
                yield f"{prefix}{field}", value
    for field in type(node).model_fields:
        value = getattr(node, field)
        for i, child in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(child, BaseModel):
                where = f"{prefix}{field}[{i}]." if isinstance(value, list) else f"{prefix}{field}."
                yield from missing_inputs(child, where)


def load_space(
    path: str | Path,
    max_jobs: int | None = MAX_JOBS,
    overrides: dict[str, Any] | None = None,
    check_inputs: bool = False,
    plugins: Sequence[str] = (),
) -> Space:
    """Parse, expand and validate a space file; every problem is a InputError naming the spot.

    Grids over ``max_jobs`` jobs (None: no limit) are refused before they are expanded.
    ``overrides`` maps dotted paths to values set in every job (``--data`` sets ``data.path``).
    ``check_inputs``: the data sets, network pickles and weights the jobs name must exist.
    ``plugins`` (``--plugin``) are loaded with those the file names, before its jobs validate.
    """
    path = Path(path)
    text = read_text(path)
    raw, lines = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise InputError("a space must be a mapping with name, base, grid", file=str(path))
    try:
        file = SpaceFile.model_validate(raw)
    except ValidationError as e:
        reason, where = explain(e.errors()[0], raw)
        raise InputError(reason, file=str(path), line=lines.find(where), path=where) from None
    load_plugins(plugins, path.parent, path="--plugin")
    try:
        load_plugins(file.plugins, path.parent, file=str(path))
    except InputError as e:
        raise InputError(e.reason, file=str(path), line=lines.find(e.path), path=e.path) from None
    try:
        configs = expand(file, max_jobs)
    except InputError as e:
        line = lines.find(e.path, *_sources(e.path, file)) if e.path else None
        raise InputError(e.reason, file=str(path), line=line, path=e.path) from None
    jobs: dict[str, JobSpec] = {}
    for i, config in enumerate(configs):
        for key, value in (overrides or {}).items():
            set_path(config, key, value)
        try:
            job = JobSpec.model_validate(config)
        except ValidationError as e:
            reason, where = explain(e.errors()[0], config)
            line = lines.find(*_sources(where, file))
            raise InputError(f"{reason} (job {i})", file=str(path), line=line, path=where) from None
        missing = next(missing_inputs(job), None) if check_inputs else None
        if missing is not None:
            where, value = missing
            raise InputError(
                f"{value!r} does not exist (relative paths start at {Path.cwd()}); fix the path"
                + (" or pass --data PATH" if where == "data.path" else ""),
                file=str(path),
                line=lines.find(*_sources(where, file)),
                path=where,
            )
        problem = _check_replicates(job, file.replicates)
        if problem is not None:
            where, reason = problem
            raise InputError(
                f"{reason} (job {i})", file=str(path), line=lines.find(where), path=where
            )
        for r_train in range(file.replicates.train):
            for r_eval in range(file.replicates.eval):
                copy_ = replicate(job, r_train, r_eval)
                jobs.setdefault(copy_.job_id, copy_)
    unique = list(jobs.values())
    return Space(
        name=file.name,
        source=str(path),
        file=file,
        jobs=unique,
        replicates=replicate_indices(unique),
        digest=content_hash(text),
    )


def _sources(where: str, file: SpaceFile) -> list[str]:
    """Candidate YAML paths for a job field: the grid or zip key that sets it, else base."""
    candidates = [f"grid.{key}" for key in file.grid if _related(key, where)]
    candidates += [
        f"zip[{i}].{key}"
        for i, group in enumerate(file.zip)
        for key in group
        if _related(key, where)
    ]
    return [*candidates, f"base.{where}"]


def _related(key: str, where: str) -> bool:
    """Whether setting ``key`` can cause an error at ``where`` (one is a prefix of the other)."""
    return where.startswith(key) or key.startswith(where)
