"""The commands of ``edmgrid`` as library functions, with the command line's parameters (its
options, by their Python names, with the same defaults); ``cli.py`` parses the command line, calls
them, prints what they return and turns it into an exit code. Errors are ``EdmgridError``s
(``InputError``: bad input); warnings go to ``warn`` (default: a line on stderr).

Each function imports what it needs inside itself, so that importing this module (``edmgrid
--help``) costs nothing, and ``show``, ``axes`` and a ``run`` with nothing to do load neither torch
nor pandas; an import that loads torch is marked ``# torch, lazily``.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edmgrid.errors import InputError
from edmgrid.run import interrupts

if TYPE_CHECKING:
    from pandas import DataFrame

    from edmgrid.config.space import Space
    from edmgrid.run.churn.driver import Report
    from edmgrid.run.compare import Comparison
    from edmgrid.run.executors import Executor
    from edmgrid.run.status import SpaceStatus
    from edmgrid.run.store import Store
    from edmgrid.run.summary import Summary

RESULTS = Path("results")
#: Seconds between two looks at the store while ``status(wait=True)`` follows detached runs.
POLL = 2.0


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def split(text: str) -> list[str]:
    """The names of a comma-separated list (``--rows``, ``--cols``, ``--devices``)."""
    return [c.strip() for c in text.split(",") if c.strip()]


def use_pythonpath(folders: Sequence[Path]) -> None:
    """Prepend ``folders`` to this process's import path and to workers' ``PYTHONPATH``."""
    from edmgrid.config.plugins import prepend_import_paths

    prepend_import_paths(folders)


def make_executor(name: str, devices: str | None, **options: Any) -> Executor:
    """The executor of ``--executor`` and its options (None: not given; ``devices``:
    comma-separated GPU ids)."""
    from edmgrid.run.executors import make_executor as make

    chosen = split(devices) if devices is not None else None
    return make(name, devices=chosen, **options)


@dataclass(frozen=True)
class Detached:
    """A ``run(detach=True)``: the Slurm job that runs the space, to follow with ``status``."""

    job: str
    space: str
    results: Path


def run(
    space: Path,
    results: Path = RESULTS,
    force: bool = False,
    retry_failed: bool = True,
    rerun_stale: bool = False,
    executor: str = "local",
    workers: int | None = None,
    devices: str | None = None,
    gpus: int | None = None,
    address: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    time_limit: str | None = None,
    train_gpus: int = 1,
    detach: bool = False,
    yes: bool = False,
    data: Path | None = None,
    inception: Path | None = None,
    pythonpath: Sequence[Path] = (),
    plugin: Sequence[str] = (),
    warn: Callable[[str], None] = _stderr,
) -> Summary | Detached:
    """Expand ``space`` into jobs, run the ones without a result, and store one row per job
    (``run.runner.run_space``); a space whose every job is recorded done returns at once.
    With ``detach``, the run is submitted as a Slurm job instead, whose driver runs ``edmgrid
    run`` with these options."""
    options = dict(locals())  # the parameters, for a detached run's command line
    from edmgrid.run.store import Store, space_fingerprint

    start = time.perf_counter()
    if results.exists() and not results.is_dir():
        raise InputError("is not a directory; name a results directory", file=str(results))
    store = Store(results)
    overrides = {"data.path": str(data.expanduser().resolve())} if data is not None else None
    try:
        text: bytes | None = space.read_bytes() if space.is_file() else None
    except OSError:
        text = None  # load_space says why
    fingerprint = (
        space_fingerprint(text + json.dumps(overrides).encode()) if text is not None else None
    )
    if text is not None and fingerprint is not None and not force and not plugin:
        finished = _finished_jobs(text, store, fingerprint)
        if finished is not None:
            from edmgrid.run.claims import active_run
            from edmgrid.run.summary import Summary

            # alone, it removes what a killed run left (claims, *.tmp), and makes the database
            # of a run killed before it wrote one
            with active_run(store.root):
                if not store.db_path.exists():
                    store.refresh_db()
            interrupts.set_tally(lambda: (finished, 0))
            summary = Summary(counts=Counter(skipped=finished))
            summary.wall = time.perf_counter() - start
            return summary

    from edmgrid.config.space import MAX_JOBS, load_space
    from edmgrid.run.runner import run_space

    use_pythonpath(pythonpath)
    if inception is not None:
        from edmgrid.engine.fid import ENV_VAR  # torch, lazily

        os.environ[ENV_VAR] = str(inception.expanduser().resolve())
    loaded = load_space(
        space,
        max_jobs=None if yes else MAX_JOBS,
        overrides=overrides,
        check_inputs=True,
        plugins=list(plugin),
    )
    warn_extreme_sigma(loaded, warn)
    if not force:
        warn_stale(loaded, store, rerun_stale, warn)
    slurm: dict[str, Any] = {"partition": partition, "account": account, "time": time_limit}
    if detach:
        if executor != "slurm":
            raise InputError("--detach needs --executor slurm (the run becomes a Slurm job)")
        from edmgrid.run.executors.slurm import detach as submit

        job = submit(run_argv(options), store.root, loaded.name, loaded.file.slurm, **slurm)
        return Detached(job, loaded.name, store.root)
    if executor == "slurm":
        slurm["settings"] = loaded.file.slurm
    chosen = make_executor(executor, devices, workers=workers, gpus=gpus, address=address, **slurm)
    summary = run_space(
        loaded,
        store,
        executor=chosen,
        force=force,
        retry_failed=retry_failed,
        rerun_stale=rerun_stale,
        train_gpus=train_gpus,
        fingerprint=fingerprint,
    )
    summary.wall = time.perf_counter() - start
    return summary


#: Parameters of ``run`` whose flag is not ``--`` and their name in kebab case.
FLAGS = {"time_limit": "--time"}


def run_argv(options: dict[str, Any]) -> list[str]:
    """The ``edmgrid run`` arguments of ``options`` (``run``'s parameters) but ``detach``:
    defaults left out, a boolean as its flag (``--no-…`` for False), a list as repeated flags."""
    parameters = inspect.signature(run).parameters
    argv = ["run", str(options["space"])]
    for name, value in options.items():
        if name in ("space", "detach", "warn") or value == parameters[name].default:
            continue
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list | tuple):
            argv += [arg for v in value for arg in (flag, str(v))]
        else:
            argv += [flag, str(value)]
    return argv


def warn_stale(
    space: Space, store: Store, rerun: bool, warn: Callable[[str], None] = _stderr
) -> None:
    """Say how many of the space's done rows other code computed (``run/provenance.py``)."""
    from edmgrid.run.provenance import code_fingerprint

    stale = store.stale([j.job_id for j in space.jobs], code_fingerprint())
    if not stale:
        return
    what = f"{len(stale)} of {len(space.jobs)} rows of space {space.name}"
    if rerun:
        warn(f"re-running {what}: other code computed them")
    else:
        warn(
            f"warning: {what} were computed by other code (their code_fingerprint is not "
            f"{code_fingerprint()}); kept as they are, --rerun-stale evaluates them again"
        )


def _finished_jobs(text: bytes, store: Store, fingerprint: str) -> int | None:
    """The number of jobs of a space whose every job is done (as recorded), else None.

    The fast path of a no-op re-run: it reads the space's name and the store, and neither
    imports nor validates the space schemas. Not with plugins: an edited plugin changes the
    ids of its jobs, which only validating the space finds.
    """
    from importlib import metadata

    import yaml

    from edmgrid.registry import ENTRY_POINTS

    try:
        doc = yaml.safe_load(text)
        name = doc["name"]
    except Exception:  # not a valid space: load_space reports it
        return None
    if doc.get("plugins") or metadata.entry_points(group=ENTRY_POINTS):
        return None
    jobs = store.finished(str(name), fingerprint)
    return None if jobs is None else len(jobs)


def status(
    results: Path = RESULTS,
    space: str | None = None,
    wait: bool = False,
    watch: Callable[[list[SpaceStatus]], None] | None = None,
) -> list[SpaceStatus]:
    """How far each space of the results is (``run.status.grid_status``); with ``wait``, once
    every detached run has ended, ``watch`` told the spaces at every look before."""
    from edmgrid.run.status import grid_status
    from edmgrid.run.store import Store

    store = Store(results)
    spaces = grid_status(store, space)
    while wait and any(s.attached for s in spaces):
        if watch is not None:
            watch(spaces)
        time.sleep(POLL)
        spaces = grid_status(store, space)
    return spaces


def show(
    space: Path,
    yes: bool = False,
    plugin: Sequence[str] = (),
    warn: Callable[[str], None] = _stderr,
) -> Space:
    """The expanded, fully resolved jobs of ``space`` (a dry run)."""
    from edmgrid.config.space import MAX_JOBS, load_space

    loaded = load_space(space, max_jobs=None if yes else MAX_JOBS, plugins=list(plugin))
    warn_extreme_sigma(loaded, warn)
    return loaded


def varying_settings(space: Space) -> list[tuple[str, str]]:
    """Per job, its id and the settings that vary among the space's jobs ("name=value …")."""
    from edmgrid.run.jobs import flatten

    configs = [flatten(j.resolved()) for j in space.jobs]
    names = dict.fromkeys(name for config in configs for name in config)  # in order of appearance
    # a setting varies if its set values differ (unset: a parameter of another choice, or None)
    varying = [n for n in names if len({str(c[n]) for c in configs if c.get(n) is not None}) > 1]
    return [
        (job.job_id, "  ".join(f"{n}={config.get(n)}" for n in varying))
        for job, config in zip(space.jobs, configs, strict=True)
    ]


def warn_extreme_sigma(space: Space, warn: Callable[[str], None] = _stderr) -> None:
    """Name the jobs whose default σ_max is extreme (``SamplerSpec.extreme_default_sigma_max``)
    and the fix, one line per time steps, schedule and σ_max."""
    from edmgrid.config.sampler import EXTREME_SIGMA_MAX

    groups: dict[tuple[str, str, float], list[str]] = {}
    for job in space.jobs:
        sigma_max = job.sampler.extreme_default_sigma_max()
        if sigma_max is not None:
            key = (job.sampler.timesteps.name, job.sampler.schedule.name, sigma_max)
            groups.setdefault(key, []).append(job.job_id)
    for (steps, schedule, sigma_max), ids in groups.items():
        named = ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")
        warn(
            f"warning: {len(ids)} job(s) of {space.name} ({named}): {steps} time steps on the "
            f"{schedule} schedule default to σ_max = {sigma_max:.6g}, over {EXTREME_SIGMA_MAX:g} "
            "(Table 1 uses 80 to 152); set sampler.timesteps.sigma_max (e.g. 80) or use edm "
            "time steps"
        )


def axes(plugin: Sequence[str] = ()) -> dict[str, dict[str, dict[str, Any]]]:
    """Every design axis, its choices (plugins' too) and their parameter defaults."""
    from edmgrid.config.axes import all_registries
    from edmgrid.config.plugins import load_plugins

    load_plugins(list(plugin), Path.cwd(), path="--plugin")
    return {name: reg.describe() for name, reg in all_registries().items()}


def schema(space: Path | None = None, plugin: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON Schema of a space file, with the choices of ``plugin`` and of ``space``'s
    ``plugins:`` (docs/extending.md)."""
    from edmgrid.config.plugins import load_plugins
    from edmgrid.config.schema import space_schema

    folder = space.parent if space is not None else Path.cwd()
    load_plugins(list(plugin), folder, path="--plugin")
    if space is not None:
        from edmgrid.config.space import parse_yaml, read_text

        raw, _ = parse_yaml(read_text(space), str(space))
        named = raw.get("plugins", []) if isinstance(raw, dict) else []
        load_plugins(named if isinstance(named, list) else [named], folder, file=str(space))
    return space_schema()


def compare(
    results: Path = RESULTS,
    space: str | None = None,
    all_spaces: bool = False,
    rows: str = "",
    cols: str = "",
    value: str = "ode_error",
    stat: str = "mean",
    aggregate: str | None = None,
    include_trials: bool = False,
    plot: Path | None = None,
    allow_mixed: bool = False,
) -> tuple[Comparison, str | None]:
    """ROWS × COLS → VALUE (comma-separated columns; ``run.compare.compare``), and with
    ``plot``, the kind of figure drawn there (``run.plots.plot_comparison``)."""
    from edmgrid.run.compare import compare as run_compare
    from edmgrid.run.store import Store

    result = run_compare(
        Store(results),
        space,
        split(rows),
        split(cols),
        value,
        stat=stat,  # type: ignore[arg-type]
        aggregate=aggregate,  # type: ignore[arg-type]
        all_spaces=all_spaces,
        include_trials=include_trials,
        allow_mixed=allow_mixed,
    )
    kind = None
    if plot is not None:
        from edmgrid.run.plots import plot_comparison  # torch, lazily

        kind = plot_comparison(result, plot, title=result.space or str(results))
    return result, kind


def samples(
    job_id: str,
    results: Path = RESULTS,
    out: Path = Path("samples.png"),
    n: int = 64,
    pythonpath: Sequence[Path] = (),
) -> int:
    """Re-create a stored job and save a grid of its first ``n`` samples to ``out``
    (deterministic: its seeds); how many it drew."""
    from edmgrid.config.job import JobSpec
    from edmgrid.config.plugins import load_plugins, recorded_plugins
    from edmgrid.engine.evaluate import draw_samples  # torch, lazily
    from edmgrid.run.plots import save_samples
    from edmgrid.run.store import Store

    use_pythonpath(pythonpath)
    store = Store(results)
    config = store.config(job_id)
    load_plugins(recorded_plugins(config), Path.cwd())
    job = JobSpec.model_validate(config)
    dataset, drawn = draw_samples(job, store.cache, n)
    save_samples(drawn, dataset, out, title=f"{job_id}: seeds {job.seeds} (first {len(drawn)})")
    return len(drawn)


def sql(query: str, results: Path = RESULTS) -> DataFrame:
    """A read-only SQL query over the results (DuckDB)."""
    from edmgrid.run.store import Store

    return Store(results).query(query)


def optuna_churn(
    space: Path | None = None,
    job: str | None = None,
    study: str | None = None,
    trials: int = 20,
    sampler: str = "tpe",
    seed: int = 0,
    metric: str | None = None,
    num_samples: int = 256,
    final_samples: int = 1024,
    top_k: int = 3,
    s_churn: tuple[float, float] | None = None,
    s_min: tuple[float, float] | None = None,
    s_max: tuple[float, float] | None = None,
    s_noise: tuple[float, float] | None = None,
    executor: str = "local",
    workers: int | None = None,
    devices: str | None = None,
    gpus: int | None = None,
    address: str | None = None,
    results: Path = RESULTS,
    log: Callable[[str], None] = print,
) -> Report:
    """Search the stochastic sampler's S_churn, S_min, S_max, S_noise with Optuna (EDM Table 5;
    ``run.churn``), ``log`` told each trial."""
    from edmgrid.config.space import load_space
    from edmgrid.run.churn.driver import Options, pick_job, run_churn
    from edmgrid.run.churn.search import default_metric
    from edmgrid.run.churn.study import Settings
    from edmgrid.run.store import Store

    store = Store(results)
    ranges = {"S_churn": s_churn, "S_min": s_min, "S_max": s_max, "S_noise": s_noise}
    overrides = {k: v for k, v in ranges.items() if v is not None}
    loaded = load_space(space, max_jobs=None) if space is not None else None
    settings = None
    if loaded is not None or job is not None or study is None:
        base = pick_job(store, loaded, job)
        settings = Settings(base, metric or default_metric(base), num_samples)
    options = Options(trials, sampler, seed, final_samples, top_k)
    chosen = make_executor(executor, devices, workers=workers, gpus=gpus, address=address)
    return run_churn(
        store,
        settings,
        options,
        section=loaded.file.search if loaded else None,
        overrides=overrides,
        source=loaded.source if loaded else None,
        study_name=study,
        executor=chosen,
        log=log,
    )
