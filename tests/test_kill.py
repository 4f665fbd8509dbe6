"""Killing `edmgrid run` (SIGKILL, SIGTERM) mid-grid loses nothing and leaves nothing partial."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_training import toy_space

from edmgrid.run.store import Store

ROOT = Path(__file__).resolve().parents[1]
GRID = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": list(range(2, 18))}


def edmgrid_run(space: Path, results: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "from edmgrid.cli import main; main()"
    args = ["run", str(space), "-r", str(results), *extra]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def rows_written(results: Path) -> int:
    return len(list((results / "runs").glob("*.parquet")))


def kill_mid_grid(proc: subprocess.Popen[bytes], results: Path, sig: int) -> None:
    """Send ``sig`` once the run holds claims (it is dispatching jobs), after a random delay."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and not any(
        json.loads(p.read_text() or "{}").get("pid") == proc.pid
        for p in (results / "claims").glob("*.claim")
    ):
        assert time.monotonic() < deadline, "the run never started a job"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(sig)
    proc.wait(30)


@pytest.mark.slow
def test_sigkill_and_sigterm_mid_grid_then_rerun_gives_one_row_per_job(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "kill", GRID, seeds="0-31")
    path = Path(space.source)
    results = tmp_path / "results"
    for executor in ("local", "serial", "local"):
        proc = edmgrid_run(path, results, "-x", executor, "-w", "2")
        kill_mid_grid(proc, results, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
    proc = edmgrid_run(path, results, "-x", "local", "-w", "2")
    kill_mid_grid(proc, results, signal.SIGTERM)
    if proc.returncode != 0:  # it may have finished first
        assert proc.returncode == 130
        assert not list((results / "claims").glob("*.claim")), "SIGTERM must release claims"
    assert rows_written(results) < len(space.jobs) or proc.returncode == 0

    final = edmgrid_run(path, results, "-x", "local", "-w", "2")
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0, out.decode()
    rows = Store(results).query("SELECT job_id, status FROM runs")
    assert sorted(rows["job_id"]) == sorted(j.job_id for j in space.jobs)
    assert set(rows["status"]) == {"done"}
    assert not list(results.rglob("*.tmp"))
    assert not list((results / "claims").glob("*.claim"))


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_the_cli_exits_1_with_a_summary_when_a_job_fails(tmp_path: Path, executor: str) -> None:
    # a job whose metric is not finite fails; the other one is done
    space = toy_space(tmp_path, "f", {"sampler.timesteps.sigma_max": [80.0, 1e300]}, seeds="0-3")
    proc = edmgrid_run(Path(space.source), tmp_path / "r", "-x", executor)
    out, _ = proc.communicate(timeout=120)
    text = out.decode()
    assert proc.returncode == 1, text
    assert "failed" in text and "traceback:" in text
    rows = Store(tmp_path / "r").query("SELECT status FROM runs ORDER BY status")
    assert list(rows["status"]) == ["done", "failed"]


def test_a_no_op_rerun_of_an_unchanged_space_does_not_import_torch(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "n", {"sampler.timesteps.num_steps": [2, 3]}, seeds="0-3")
    results = tmp_path / "r"
    first = edmgrid_run(Path(space.source), results, "-x", "serial")
    assert first.wait(120) == 0
    code = (
        "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules)); "
        "from edmgrid.cli import main; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    again = subprocess.run(
        [sys.executable, "-c", code, "run", space.source, "-r", str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().endswith("False")
    assert "│ 0    │ 2       │ 0" in again.stdout  # done, skipped, failed
