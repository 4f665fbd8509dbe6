"""Killing `edmgrid run` (SIGKILL, SIGTERM) mid-grid loses nothing and leaves nothing partial."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

from fake_training import edmgrid_run, toy_space

from edmgrid.run.store import Store

GRID = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": list(range(2, 18))}


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


def test_sigkill_and_sigterm_mid_grid_then_rerun_gives_one_row_per_job(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "kill", GRID, seeds="0-31")
    path = Path(space.source)
    results = tmp_path / "results"
    for executor in (["-x", "local", "-w", "2"], ["-x", "serial"]):
        proc = edmgrid_run(path, results, *executor)
        kill_mid_grid(proc, results, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
    proc = edmgrid_run(path, results, "-x", "local", "-w", "2")
    kill_mid_grid(proc, results, signal.SIGTERM)
    if proc.returncode != 0:  # it may have finished first
        assert proc.returncode == 130
        assert not list((results / "claims").glob("*.claim")), "SIGTERM must release claims"
    assert rows_written(results) < len(space.jobs) or proc.returncode == 0

    final = edmgrid_run(path, results, "-x", "serial")
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0, out.decode()
    rows = Store(results).query("SELECT job_id, status FROM runs")
    assert sorted(rows["job_id"]) == sorted(j.job_id for j in space.jobs)
    assert set(rows["status"]) == {"done"}
    assert not list(results.rglob("*.tmp"))
    assert not list((results / "claims").glob("*.claim"))
