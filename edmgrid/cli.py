"""The ``edmgrid`` command line (Typer + rich). Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from edmgrid import api
from edmgrid.errors import EdmgridError, InputError
from edmgrid.run import interrupts

app = typer.Typer(
    name="edmgrid",
    help="Declarative design-space experiments for diffusion models (EDM, Karras et al. 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RESULTS = typer.Option(api.RESULTS, "--results", "-r", help="Results directory.")
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
    result = api.run(
        space,
        results,
        force=force,
        retry_failed=retry_failed,
        rerun_stale=rerun_stale,
        executor=executor,
        workers=workers,
        devices=devices,
        gpus=gpus,
        address=address,
        partition=partition,
        account=account,
        time_limit=time_limit,
        train_gpus=train_gpus,
        detach=detach,
        yes=yes,
        data=data,
        inception=inception,
        pythonpath=pythonpath,
        plugin=plugin,
    )
    if isinstance(result, api.Detached):
        _console().print(
            f"submitted the run of {result.space} as Slurm job {result.job}; "
            f"follow it with: edmgrid status -r {result.results} --wait",
            highlight=False,
        )
        return
    _print_summary(result)
    if not result.ok:
        raise typer.Exit(1)


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
    with _StatusBars() as bars:
        spaces = api.status(results, space, wait, watch=bars.update)
    rows = (
        (
            s.space,
            s.jobs,
            s.done,
            s.failed,
            s.running,
            s.todo,
            s.driver or "-",
            _queue(s) or "-",
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


def _queue(space: Any) -> str:
    """A space's Slurm jobs by state ("2 running, 1 pending")."""
    return ", ".join(f"{n} {k.lower()}" for k, n in sorted(space.queue.items()))


class _StatusBars:
    """``status --wait``'s progress bars, one per space, opened at the first look."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.lines: dict[str, Any] = {}

    def update(self, spaces: list[Any]) -> None:
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
            )
            self.progress.start()
            self.lines = {s.space: self.progress.add_task(s.space, total=s.jobs) for s in spaces}
        for s in spaces:
            text = f"{s.space} (driver {s.driver.lower()}; jobs: {_queue(s) or 'none'})"
            done = s.done + s.failed
            self.progress.update(
                self.lines[s.space], completed=done, total=s.jobs, description=text
            )

    def __enter__(self) -> _StatusBars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


@app.command()
def show(
    space: Path = typer.Argument(..., help="Space file (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved jobs as JSON."),
    yes: bool = YES,
    plugin: list[str] = PLUGIN,
) -> None:
    """Print the expanded, fully resolved jobs of SPACE (a dry run)."""
    loaded = api.show(space, yes, plugin)
    if as_json:
        jobs = [{"job_id": j.job_id, **j.resolved()} for j in loaded.jobs]
        sys.stdout.write(_json({"space": loaded.name, "jobs": jobs}) + "\n")
        return
    rows = api.varying_settings(loaded)
    _print_table(["job_id", "varying settings"], rows, f"{loaded.name}: {len(loaded.jobs)} jobs")


@app.command()
def axes(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    plugin: list[str] = PLUGIN,
) -> None:
    """List every design axis, its choices (plugins' too) and their parameter defaults."""
    described = api.axes(plugin)
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
    sys.stdout.write(_json(api.schema(space, plugin)) + "\n")


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
    result, kind = api.compare(
        results,
        space,
        all_spaces=all_spaces,
        rows=rows,
        cols=cols,
        value=value,
        stat=stat,
        aggregate=aggregate,
        include_trials=include_trials,
        plot=plot,
        allow_mixed=allow_mixed,
    )
    if fmt in ("csv", "json"):
        _print_frame(result.cells, fmt)
    else:
        _print_frame(result.table, fmt, title=value)
        prefix = "% " if fmt == "latex" else ""
        sys.stdout.write("".join(f"{prefix}{note}\n" for note in result.notes))
    if plot is not None:
        sys.stderr.write(f"wrote {plot} ({kind})\n")


@app.command()
def samples(
    job_id: str = typer.Argument(..., help="Job id (see `edmgrid sql` or the runs/ folder)."),
    results: Path = RESULTS,
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG to write."),
    n: int = typer.Option(64, "--n", min=1, help="Samples: the job's first N seeds."),
    pythonpath: list[Path] = PYTHONPATH,
) -> None:
    """Re-create a stored job and save a grid of its samples (deterministic: its seeds)."""
    drawn = api.samples(job_id, results, out=out, n=n, pythonpath=pythonpath)
    sys.stderr.write(f"wrote {out} ({drawn} samples)\n")


@app.command()
def sql(
    query: str = typer.Argument(..., help="A SELECT over the views runs and space_jobs."),
    results: Path = RESULTS,
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """Run a read-only SQL query over the results (DuckDB)."""
    _print_frame(api.sql(query, results), fmt)


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
    console = _console()
    report = api.optuna_churn(
        space,
        job,
        study,
        trials=trials,
        sampler=sampler,
        seed=seed,
        metric=metric,
        num_samples=num_samples,
        final_samples=final_samples,
        top_k=top_k,
        s_churn=s_churn,
        s_min=s_min,
        s_max=s_max,
        s_noise=s_noise,
        executor=executor,
        workers=workers,
        devices=devices,
        gpus=gpus,
        address=address,
        results=results,
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
