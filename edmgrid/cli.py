"""The ``edmgrid`` command line (Typer + rich). Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from edmgrid.errors import EdmgridError, InputError
from edmgrid.run import interrupts

app = typer.Typer(
    name="edmgrid",
    help="Declarative design-space experiments for diffusion models (EDM, Karras et al. 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RESULTS = typer.Option(Path("results"), "--results", "-r", help="Results directory.")
YES = typer.Option(False, "--yes", help="Allow grids above the job limit.")
FORMAT_HELP = "Output format: table, csv, markdown, latex or json."
PYTHONPATH = typer.Option(
    [],
    "--pythonpath",
    help="Folder to import model code from (e.g. a NVlabs/edm checkout for its pickles); "
    "repeatable, also passed to worker processes.",
)


PLUGIN = typer.Option(
    [],
    "--plugin",
    help="Module that registers design choices (docs/extending.md), importable from the "
    "space's folder (else the current one) or the Python path; repeatable.",
)


def _json(obj: Any) -> str:
    """Strict JSON (RFC 8259) of ``obj``: NaN becomes null and ±∞ the strings "inf" and
    "-inf" (which edmgrid's schemas read back as numbers), never the tokens NaN or Infinity."""
    return json.dumps(_finite(obj), indent=1, allow_nan=False, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _console() -> Any:
    from rich.console import Console

    return Console()


def _print_frame(frame: Any, fmt: str, title: str | None = None) -> None:
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt == "json":  # ±∞ as in _json (pandas would write null, as for NaN)
        infinite = frame.select_dtypes("number").isin([math.inf, -math.inf]).any()
        for column in infinite[infinite].index:
            frame = frame.assign(**{column: frame[column].astype(object).map(_finite)})
        sys.stdout.write(frame.to_json(orient="records", indent=1) + "\n")
    elif fmt == "markdown":
        sys.stdout.write(_markdown(frame) + "\n")
    elif fmt == "latex":
        sys.stdout.write(_latex(frame) + "\n")
    elif fmt == "table":
        _print_table(list(map(str, frame.columns)), frame.itertuples(index=False), title)
    else:
        raise InputError(
            f"unknown format {fmt!r}; valid: table, csv, markdown, latex, json", path="--format"
        )


def _print_table(columns: list[str], rows: Iterable[Iterable[Any]], title: str | None) -> None:
    """A rich table of ``rows`` (cells formatted by ``_cell``) on stdout."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    _console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "__len__") and not isinstance(value, str):  # fid_runs, fid_seeds
        return ", ".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def _markdown(frame: Any) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([head, rule, *rows])


_LATEX_ESCAPES = str.maketrans(
    {c: rf"\{c}" for c in "&%$#_{}"}
    | {"~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}
)


def _latex(frame: Any) -> str:
    """A booktabs ``tabular`` of the frame, cells escaped for LaTeX."""

    def row(cells: Any) -> str:
        return " & ".join(str(c).translate(_LATEX_ESCAPES) for c in cells) + r" \\"

    align = "".join("r" if frame[c].dtype.kind in "iuf" else "l" for c in frame.columns)
    lines = [
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        row(frame.columns),
        r"\midrule",
        *(row(_cell(v) for v in values) for values in frame.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines)


def _use_pythonpath(folders: list[Path]) -> None:
    """Prepend ``folders`` to this process's import path and to workers' ``PYTHONPATH``."""
    from edmgrid.config.plugins import prepend_import_paths

    prepend_import_paths(folders)


EXECUTOR = typer.Option(
    "local",
    "--executor",
    "-x",
    help="Where jobs run: local (worker processes), serial, ray, slurm (one job per task).",
)
WORKERS = typer.Option(
    None,
    "--workers",
    "-w",
    help="Local workers (default: one per GPU, else one per core up to 4); "
    "Slurm: jobs queued at once (default: slurm.max_jobs).",
)
DEVICES = typer.Option(None, "--devices", help="Local: only these GPU ids, e.g. 0,2.")
GPUS = typer.Option(
    None, "--gpus", help="Ray: GPUs to declare for a local Ray (logical on a CPU machine)."
)
ADDRESS = typer.Option(
    None, "--address", help="Ray: join this cluster ('auto' finds a running one)."
)
PARTITION = typer.Option(None, "--partition", help="Slurm: partition (over slurm.partition).")
ACCOUNT = typer.Option(None, "--account", help="Slurm: account (over slurm.account).")
TIME = typer.Option(None, "--time", help="Slurm: time limit per job, e.g. 30 or 02:00:00.")


def _executor(name: str, devices: str | None, **options: Any) -> Any:
    """The executor of ``--executor`` and its options (None: not given)."""
    from edmgrid.run.executors import make_executor

    chosen = _split(devices) if devices is not None else None
    return make_executor(name, devices=chosen, **options)


@app.command()
def run(
    space: Path = typer.Argument(..., help="Space file (YAML)."),
    results: Path = RESULTS,
    force: bool = typer.Option(
        False, "--force", help="Re-run evaluations that already have results (checkpoints stay)."
    ),
    retry_failed: bool = typer.Option(
        True, "--retry-failed/--no-retry-failed", help="Re-run jobs whose last result is a failure."
    ),
    rerun_stale: bool = typer.Option(
        False, "--rerun-stale", help="Re-run jobs whose row other code computed (its fingerprint)."
    ),
    executor: str = EXECUTOR,
    workers: int | None = WORKERS,
    devices: str | None = DEVICES,
    gpus: int | None = GPUS,
    address: str | None = ADDRESS,
    partition: str | None = PARTITION,
    account: str | None = ACCOUNT,
    time_limit: str | None = TIME,
    train_gpus: int = typer.Option(
        1, "--train-gpus", help="Devices per training (GPUs; on CPU, workers' cores)."
    ),
    detach: bool = typer.Option(
        False, "--detach", help="Slurm: submit the run as a job and return (see `status`)."
    ),
    yes: bool = YES,
    data: Path | None = typer.Option(
        None, "--data", help="Path of the data set file or folder (sets data.path in every job)."
    ),
    inception: Path | None = typer.Option(
        None,
        "--inception",
        help="Inception-v3 weights for FID (sets EDMGRID_INCEPTION; a path in the space wins).",
    ),
    pythonpath: list[Path] = PYTHONPATH,
    plugin: list[str] = PLUGIN,
) -> None:
    """Expand SPACE into jobs, run the ones without a result, and store one row per job."""
    import os
    import time

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
            _print_summary(summary)
            return

    from edmgrid.config.space import MAX_JOBS, load_space
    from edmgrid.run.runner import run_space

    _use_pythonpath(pythonpath)
    if inception is not None:
        from edmgrid.engine.fid import ENV_VAR

        os.environ[ENV_VAR] = str(inception.expanduser().resolve())
    loaded = load_space(
        space,
        max_jobs=None if yes else MAX_JOBS,
        overrides=overrides,
        check_inputs=True,
        plugins=plugin,
    )
    _warn_extreme_sigma(loaded)
    if not force:
        _warn_stale(loaded, store, rerun_stale)
    slurm: dict[str, Any] = {"partition": partition, "account": account, "time": time_limit}
    if detach:
        _detach(executor, loaded, store, slurm)
        return
    if executor == "slurm":
        slurm["settings"] = loaded.file.slurm
    options = {"workers": workers, "gpus": gpus, "address": address, **slurm}
    chosen = _executor(executor, devices, **options)
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
    _print_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


def _warn_stale(space: Any, store: Any, rerun: bool) -> None:
    """Say how many of the space's done rows other code computed (``run/provenance.py``)."""
    from edmgrid.run.provenance import code_fingerprint

    stale = store.stale([j.job_id for j in space.jobs], code_fingerprint())
    if not stale:
        return
    what = f"{len(stale)} of {len(space.jobs)} rows of space {space.name}"
    if rerun:
        sys.stderr.write(f"re-running {what}: other code computed them\n")
    else:
        sys.stderr.write(
            f"warning: {what} were computed by other code (their code_fingerprint is not "
            f"{code_fingerprint()}); kept as they are, --rerun-stale evaluates them again\n"
        )


def _detach(executor: str, loaded: Any, store: Any, flags: dict[str, Any]) -> None:
    """``run --detach``: this command line, without ``--detach``, as a Slurm job."""
    from edmgrid.run.executors.slurm import detach

    if executor != "slurm":
        raise InputError("--detach needs --executor slurm (the run becomes a Slurm job)")
    argv = [arg for arg in sys.argv[1:] if arg != "--detach"]
    job = detach(argv, store.root, loaded.name, loaded.file.slurm, **flags)
    _console().print(
        f"submitted the run of {loaded.name} as Slurm job {job}; "
        f"follow it with: edmgrid status -r {store.root} --wait",
        highlight=False,
    )


def _finished_jobs(text: bytes, store: Any, fingerprint: str) -> int | None:
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


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    table = Table(title="edmgrid run")
    for column in ("done", "skipped", "failed", "job seconds", "wall"):
        table.add_column(column)
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items()) or "-"
    counts = (str(summary.counts.get(k, 0)) for k in ("done", "skipped", "failed"))
    table.add_row(*counts, secs, f"{summary.wall:.1f}s")
    console = _console()
    console.print(table)
    for row in summary.failures:
        console.print(
            f"[red]failed[/red] {row['job_id']}: {row['error']} "
            f"(traceback: {row['traceback_path']})"
        )
    for row in summary.suspects:
        console.print(f"[yellow]suspect[/yellow] {row['job_id']}: {row['suspect']}")


@app.command()
def status(
    results: Path = RESULTS,
    space: str | None = typer.Option(None, "--space", help="Only this space."),
    wait: bool = typer.Option(
        False, "--wait", help="Re-attach: follow the detached runs until they end."
    ),
) -> None:
    """How far each space of the results is: rows done/failed, running, and Slurm's queue."""
    import time

    from edmgrid.run.status import grid_status
    from edmgrid.run.store import Store

    store = Store(results)
    spaces = grid_status(store, space)
    if wait and any(s.attached for s in spaces):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()) as bar:
            lines = {s.space: bar.add_task(s.space, total=s.jobs) for s in spaces}
            while any(s.attached for s in spaces):
                for s in spaces:
                    queued = ", ".join(f"{n} {k.lower()}" for k, n in sorted(s.queue.items()))
                    text = f"{s.space} (driver {s.driver.lower()}; jobs: {queued or 'none'})"
                    done = s.done + s.failed
                    bar.update(lines[s.space], completed=done, total=s.jobs, description=text)
                time.sleep(2.0)
                spaces = grid_status(store, space)
    rows = (
        (
            s.space,
            s.jobs,
            s.done,
            s.failed,
            s.running,
            s.todo,
            s.driver or "-",
            ", ".join(f"{n} {k.lower()}" for k, n in sorted(s.queue.items())) or "-",
        )
        for s in spaces
    )
    columns = ["space", "jobs", "done", "failed", "running", "to do", "driver", "slurm jobs"]
    _print_table(columns, rows, f"edmgrid status: {results}")
    for s in spaces:
        if s.driver and not s.attached and s.todo:
            _console().print(f"driver of {s.space} ended {s.driver}: see {s.log}", highlight=False)
    if any(s.failed for s in spaces) or (wait and any(s.todo for s in spaces)):
        raise typer.Exit(1)


@app.command()
def show(
    space: Path = typer.Argument(..., help="Space file (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved jobs as JSON."),
    yes: bool = YES,
    plugin: list[str] = PLUGIN,
) -> None:
    """Print the expanded, fully resolved jobs of SPACE (a dry run)."""
    from edmgrid.config.space import MAX_JOBS, load_space
    from edmgrid.run.jobs import flatten

    loaded = load_space(space, max_jobs=None if yes else MAX_JOBS, plugins=plugin)
    _warn_extreme_sigma(loaded)
    if as_json:
        jobs = [{"job_id": j.job_id, **j.resolved()} for j in loaded.jobs]
        sys.stdout.write(_json({"space": loaded.name, "jobs": jobs}) + "\n")
        return
    configs = [flatten(j.resolved()) for j in loaded.jobs]
    names = dict.fromkeys(name for config in configs for name in config)  # in order of appearance
    # a setting varies if its set values differ (unset: a parameter of another choice, or None)
    varying = [n for n in names if len({str(c[n]) for c in configs if c.get(n) is not None}) > 1]
    rows = (
        (job.job_id, "  ".join(f"{n}={config.get(n)}" for n in varying))
        for job, config in zip(loaded.jobs, configs, strict=True)
    )
    _print_table(["job_id", "varying settings"], rows, f"{loaded.name}: {len(loaded.jobs)} jobs")


def _warn_extreme_sigma(space: Any) -> None:
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
        sys.stderr.write(
            f"warning: {len(ids)} job(s) of {space.name} ({named}): {steps} time steps on the "
            f"{schedule} schedule default to σ_max = {sigma_max:.6g}, over {EXTREME_SIGMA_MAX:g} "
            "(Table 1 uses 80 to 152); set sampler.timesteps.sigma_max (e.g. 80) or use edm "
            "time steps\n"
        )


@app.command()
def axes(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    plugin: list[str] = PLUGIN,
) -> None:
    """List every design axis, its choices (plugins' too) and their parameter defaults."""
    from edmgrid.config.axes import all_registries
    from edmgrid.config.plugins import load_plugins

    load_plugins(plugin, Path.cwd(), path="--plugin")
    described = {name: reg.describe() for name, reg in all_registries().items()}
    if as_json:
        sys.stdout.write(_json(described) + "\n")
        return
    from rich.table import Table

    table = Table(title="edmgrid axes")
    for column in ("axis", "choice", "parameters (defaults)", "description"):
        table.add_column(column)
    for axis, choices in described.items():
        for choice, info in choices.items():
            params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
            origin = f" (plugin {info['plugin']})" if "plugin" in info else ""
            table.add_row(axis, choice, params, info["doc"] + origin)
    _console().print(table)


@app.command()
def schema(
    space: Path | None = typer.Argument(None, help="Space file whose plugins to include."),
    plugin: list[str] = PLUGIN,
) -> None:
    """Print the JSON Schema of a space file, for editor completion (docs/extending.md)."""
    from edmgrid.config.plugins import load_plugins
    from edmgrid.config.schema import space_schema

    folder = space.parent if space is not None else Path.cwd()
    load_plugins(plugin, folder, path="--plugin")
    if space is not None:
        from edmgrid.config.space import parse_yaml, read_text

        raw, _ = parse_yaml(read_text(space), str(space))
        named = raw.get("plugins", []) if isinstance(raw, dict) else []
        load_plugins(named if isinstance(named, list) else [named], folder, file=str(space))
    sys.stdout.write(_json(space_schema()) + "\n")


@app.command()
def compare(
    results: Path = RESULTS,
    space: str | None = typer.Option(
        None, "--space", help="Only jobs of this space (default: the space run last)."
    ),
    all_spaces: bool = typer.Option(False, "--all", help="Every row of the store, any space."),
    rows: str = typer.Option(
        "", "--rows", help="Comma-separated row columns (default: the settings that vary)."
    ),
    cols: str = typer.Option("", "--cols", help="Comma-separated column columns."),
    value: str = typer.Option("ode_error", "--value", help="Metric to show in the cells."),
    stat: str = typer.Option(
        "mean", "--stat", help="mean, or min: also the paper's min over the replicates."
    ),
    aggregate: str | None = typer.Option(
        None,
        "--aggregate",
        help="mean|min: combine different configurations that share a cell (else refused).",
    ),
    include_trials: bool = typer.Option(
        False, "--include-trials", help="Keep optuna-churn trial rows (study, trial, stage)."
    ),
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw VALUE with its intervals to this PNG: against NFE, one line per sampler "
        "(Fig. 2), or grouped bars (ROWS groups, COLS bars).",
    ),
    allow_mixed: bool = typer.Option(
        False, "--allow-mixed", help="Allow FIDs with different n or extractor side by side."
    ),
) -> None:
    """ROWS × COLS → VALUE: per cell the mean over replicates, n and a 95% interval.

    csv and json give one record per cell (its keys, mean, n, lo, hi, min, nfe, marks); table,
    markdown and latex the ROWS × COLS table with the legend under it.
    """
    from edmgrid.run.compare import compare as run_compare
    from edmgrid.run.store import Store

    result = run_compare(
        Store(results),
        space,
        _split(rows),
        _split(cols),
        value,
        stat=stat,  # type: ignore[arg-type]
        aggregate=aggregate,  # type: ignore[arg-type]
        all_spaces=all_spaces,
        include_trials=include_trials,
        allow_mixed=allow_mixed,
    )
    if fmt in ("csv", "json"):
        _print_frame(result.cells, fmt)
    else:
        _print_frame(result.table, fmt, title=value)
        prefix = "% " if fmt == "latex" else ""
        sys.stdout.write("".join(f"{prefix}{note}\n" for note in result.notes))
    if plot is not None:
        from edmgrid.run.plots import plot_comparison

        kind = plot_comparison(result, plot, title=result.space or str(results))
        sys.stderr.write(f"wrote {plot} ({kind})\n")


def _split(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


@app.command()
def samples(
    job_id: str = typer.Argument(..., help="Job id (see `edmgrid sql` or the runs/ folder)."),
    results: Path = RESULTS,
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG to write."),
    n: int = typer.Option(64, "--n", min=1, help="Samples: the job's first N seeds."),
    pythonpath: list[Path] = PYTHONPATH,
) -> None:
    """Re-create a stored job and save a grid of its samples (deterministic: its seeds)."""
    from edmgrid.config.job import JobSpec
    from edmgrid.config.plugins import load_plugins, recorded_plugins
    from edmgrid.engine.evaluate import draw_samples
    from edmgrid.run.plots import save_samples
    from edmgrid.run.store import Store

    _use_pythonpath(pythonpath)
    store = Store(results)
    config = store.config(job_id)
    load_plugins(recorded_plugins(config), Path.cwd())
    job = JobSpec.model_validate(config)
    dataset, drawn = draw_samples(job, store.cache, n)
    save_samples(drawn, dataset, out, title=f"{job_id}: seeds {job.seeds} (first {len(drawn)})")
    sys.stderr.write(f"wrote {out} ({len(drawn)} samples)\n")


@app.command()
def sql(
    query: str = typer.Argument(..., help="A SELECT over the views runs and space_jobs."),
    results: Path = RESULTS,
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """Run a read-only SQL query over the results (DuckDB)."""
    from edmgrid.run.store import Store

    _print_frame(Store(results).query(query), fmt)


RANGE_HELP = "MIN MAX search range (overrides the space's search: section)."


@app.command("optuna-churn")
def optuna_churn(
    space: Path | None = typer.Option(None, "--space", help="Space file (YAML) of the base job."),
    job: str | None = typer.Option(
        None, "--job", help="Job id or prefix: one of the space's jobs, else a stored job."
    ),
    study: str | None = typer.Option(
        None, "--study", help="Study name (default churn-JOB-METRIC-nN); alone, continue it."
    ),
    trials: int = typer.Option(20, "--trials", help="Total trials of the study."),
    sampler: str = typer.Option("tpe", "--sampler", help="Optuna sampler: tpe, random, gp, cmaes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Optuna sampler."),
    metric: str | None = typer.Option(
        None, "--metric", help="Objective (lower is better); default: the job's first metric."
    ),
    num_samples: int = typer.Option(256, "--num-samples", help="Samples per search trial."),
    final_samples: int = typer.Option(
        1024, "--final-samples", help="Samples to re-evaluate the best trials (0: skip)."
    ),
    top_k: int = typer.Option(3, "--top-k", help="Trials re-evaluated at --final-samples."),
    s_churn: tuple[float, float] | None = typer.Option(None, "--S_churn", help=RANGE_HELP),
    s_min: tuple[float, float] | None = typer.Option(None, "--S_min", help=RANGE_HELP),
    s_max: tuple[float, float] | None = typer.Option(None, "--S_max", help=RANGE_HELP),
    s_noise: tuple[float, float] | None = typer.Option(None, "--S_noise", help=RANGE_HELP),
    executor: str = EXECUTOR,
    workers: int | None = WORKERS,
    devices: str | None = DEVICES,
    gpus: int | None = GPUS,
    address: str | None = ADDRESS,
    results: Path = RESULTS,
) -> None:
    """Search the stochastic sampler's S_churn, S_min, S_max, S_noise with Optuna (EDM Table 5).

    Trial 0 is the paper's setting, trial 1 the deterministic sampler; rerunning continues the
    study (results/optuna/journal.log); every trial is also a row of the store. Trials run on
    the executors of `run`, one per worker at a time, asked and told by this process.
    """
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
    chosen = _executor(executor, devices, workers=workers, gpus=gpus, address=address)
    console = _console()
    report = run_churn(
        store,
        settings,
        options,
        section=loaded.file.search if loaded else None,
        overrides=overrides,
        source=loaded.source if loaded else None,
        study_name=study,
        executor=chosen,
        log=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
    _print_churn(report)


def _print_churn(report: Any) -> None:
    from rich.table import Table

    from edmgrid.run.churn.search import PARAMS

    console = _console()
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if not report.candidates:
        console.print(f"study {report.study}: no completed trial ({report.failed} failed)")
        raise typer.Exit(1)
    table = Table(title=f"{report.study}: {report.trials} trials, {report.failed} failed")
    for column in ("trial", "role", *PARAMS, f"{report.metric} search", "final", "nfe"):
        table.add_column(column)
    for c in report.candidates:
        params = [_cell(float(c.params[k])) for k in PARAMS]
        table.add_row(
            str(c.trial), ", ".join(c.roles), *params, _cell(c.search), _cell(c.final), _cell(c.nfe)
        )
    console.print(table)
    best = report.best
    console.print(
        f"best: trial {best.trial}  "
        + "  ".join(f"{k}={float(best.params[k]):.4g}" for k in PARAMS),
        highlight=False,
    )
    for role, label in (("deterministic", "deterministic (S_churn=0)"), ("paper", report.paper)):
        other = report.role(role)
        if other is not None:
            change = (best.value - other.value) / other.value
            console.print(
                f"  {report.metric} {best.value:.5g} vs {other.value:.5g} of {label}: "
                f"{change:+.1%}",
                highlight=False,
            )
    console.print(f"paper setting {report.paper}: {report.paper_reason}", highlight=False)
    for path in report.plots:
        console.print(f"wrote {path}", highlight=False)


def main() -> None:
    """Console entry point: EdmgridErrors become one-line messages and exit codes; SIGINT and
    SIGTERM stop the command where it can stop cleanly (``run/interrupts.py``), exit 130."""
    with interrupts.deferred():
        sys.exit(_main())


def _main() -> int:
    try:
        code = app(standalone_mode=False)
        interrupts.check()  # a signal as the command ended
    except KeyboardInterrupt:
        return _fail(interrupts.Interrupted.now())
    except EdmgridError as e:
        return _fail(e)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return 1
    except typer.TyperException as e:  # usage errors: typer's own (vendored) click exceptions
        if hasattr(e, "show"):
            e.show()
        else:
            sys.stderr.write(f"error: {e.format_message()}\n")
        return e.exit_code
    return code if isinstance(code, int) else 0


def _fail(e: EdmgridError) -> int:
    """Say ``e`` on one line of stderr ("interrupted: …" as it is, others as "error: …")."""
    if isinstance(e, interrupts.Interrupted):
        sys.stderr.write(f"{e}\n")
        return e.exit_code
    from rich.console import Console
    from rich.markup import escape

    # stderr, unwrapped, and escaped: a file name like "a[/b].yaml" is text, not markup
    Console(stderr=True, soft_wrap=True, highlight=False).print(
        f"[red]error:[/red] {escape(str(e))}"
    )
    return e.exit_code
