"""The ``edmgrid`` command line, through its console entry point ``main()`` (issue #2, #8):
run and resume, show, axes, compare and read-only sql; usage errors are exit 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from edmgrid.config.space import load_space

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = """name: tiny
base:
  data: {name: toy2d, n: 16}
  metrics: [{name: ode_error, reference_steps: 4}]
  seeds: 0-1
  sampler: {timesteps: {name: edm}}
grid:
  sampler.solver.name: [euler, heun]
  sampler.timesteps.num_steps: [2, 3]
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny space and a results directory it has run into once."""
    from edmgrid.run.runner import run_space
    from edmgrid.run.store import Store

    root = tmp_path_factory.mktemp("ran")
    space = root / "tiny.yaml"
    space.write_text(TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    summary = run_space(load_space(space), Store(root / "results"), show_progress=False)
    torch.set_num_threads(threads)
    assert summary.counts["done"] == 4 and summary.ok
    return space, root / "results"


def test_run_stores_one_row_per_job_and_a_second_run_executes_nothing(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY)
    results = tmp_path / "results"
    first = cli("run", space, "--results", results)
    assert first.code == 0, first.err
    assert len(list((results / "runs").glob("*.parquet"))) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*.parquet")}

    second = cli("run", space, "--results", results)
    assert second.code == 0, second.err
    row = next(line for line in second.out.splitlines() if "│" in line and "0" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][:3] == [
        "0",
        "4",
        "0",
    ]  # done, skipped, failed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_show_json_lists_the_resolved_jobs_with_their_ids(
    ran: tuple[Path, Path], cli: Callable[..., Any]
) -> None:
    space, _ = ran
    result = cli("show", space, "--json")
    assert result.code == 0
    shown = json.loads(result.out)
    assert shown["space"] == "tiny"
    assert [j["job_id"] for j in shown["jobs"]] == [j.job_id for j in load_space(space).jobs]


def test_show_lists_only_the_settings_whose_set_values_differ(
    ran: tuple[Path, Path], cli: Callable[..., Any]
) -> None:
    space, _ = ran
    result = cli("show", space)
    assert result.code == 0
    rows = [line for line in result.out.splitlines() if "solver=" in line]
    assert [" ".join(row.split("│")[2].split()) for row in rows] == [
        "solver=euler timesteps_num_steps=2",
        "solver=euler timesteps_num_steps=3",
        "solver=heun timesteps_num_steps=2",
        "solver=heun timesteps_num_steps=3",
    ]  # not solver_alpha: euler has none, so heun's 1.0 is the only value set


def test_axes_json_lists_every_registry(cli: Callable[..., Any]) -> None:
    result = cli("axes", "--json")
    assert result.code == 0
    axes = json.loads(result.out)
    assert {"solver", "timesteps", "schedule", "scaling", "data", "model", "metric"} <= set(axes)
    assert axes["solver"]["heun"]["params"]["S_noise"] == 1.0


def test_compare_pivots_the_space(ran: tuple[Path, Path], cli: Callable[..., Any]) -> None:
    _, results = ran
    args = ["--rows", "timesteps_num_steps", "--cols", "solver", "--format"]
    result = cli("compare", "--results", results, "--space", "tiny", *args, "markdown")
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert lines[0] == "| timesteps_num_steps | euler | heun |"
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| 2", "| 3"]
    cells = cli("compare", "--results", results, *args, "csv").out.strip().splitlines()
    assert cells[0].startswith("timesteps_num_steps,solver,mean,n,lo,hi")  # the last space run
    keys = [c.split(",")[:2] for c in cells[1:]]
    assert keys == [[s, v] for s in "23" for v in ("euler", "heun")]


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/tmp/x", "x' OR '1'='1"])
def test_compare_refuses_space_names_that_leave_the_store(
    ran: tuple[Path, Path], cli: Callable[..., Any], name: str
) -> None:
    _, results = ran
    result = cli("compare", "--results", results, "--space", name)
    assert result.code == 2
    assert "not a space name" in result.err
    assert "Traceback" not in result.err


def test_sql_select_prints_rows(ran: tuple[Path, Path], cli: Callable[..., Any]) -> None:
    _, results = ran
    sql = "SELECT count(*) AS n FROM runs WHERE status = 'done'"
    result = cli("sql", sql, "--results", results, "--format", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == [{"n": 4}]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO runs SELECT * FROM runs",
        "COPY runs TO 'copied.csv'",
        "ATTACH 'other.duckdb'",
        "DROP VIEW runs",
    ],
)
def test_sql_rejects_writes_with_exit_2_and_leaves_the_store_as_it_was(
    ran: tuple[Path, Path], cli: Callable[..., Any], sql: str
) -> None:
    _, results = ran
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    result = cli("sql", sql, "--results", results)
    assert result.code == 2
    assert "edmgrid sql is read-only" in result.err
    assert "SELECT" in result.err  # the fix
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


def test_unknown_output_format_is_bad_input(
    ran: tuple[Path, Path], cli: Callable[..., Any]
) -> None:
    _, results = ran
    result = cli("sql", "SELECT 1", "--results", results, "--format", "xml")
    assert result.code == 2
    assert "valid: table, csv, markdown, latex, json" in result.err


@pytest.mark.parametrize(
    "args", [["run"], ["run", "a.yaml", "--nope"], ["frobnicate"], ["compare", "--format"]]
)
def test_usage_errors_exit_2_without_traceback(cli: Callable[..., Any], args: list[str]) -> None:
    result = cli(*args)
    assert result.code == 2
    assert "Traceback" not in result.out + result.err
