"""`edmgrid run` from the command line: exit status and summary, the no-op fast path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_training import ROOT, edmgrid_run, toy_space

from edmgrid.run.store import Store


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_the_cli_exits_1_with_a_summary_when_a_job_fails(tmp_path: Path, executor: str) -> None:
    # a job whose sampler overflows fails (instead of storing a NaN metric); the other is done
    space = toy_space(tmp_path, "f", {"sampler.timesteps.sigma_max": [80.0, 1e300]}, seeds="0-3")
    proc = edmgrid_run(Path(space.source), tmp_path / "r", "-x", executor)
    out, _ = proc.communicate(timeout=120)
    text = out.decode()
    assert proc.returncode == 1, text
    assert "failed" in text and "traceback:" in text
    rows = Store(tmp_path / "r").query(
        "SELECT status, error, fd_raw IS NULL AS no_metric FROM runs ORDER BY status"
    )
    assert list(rows["status"]) == ["done", "failed"]
    assert list(rows["no_metric"]) == [False, True]
    assert rows["error"][1] == "sampler produced non-finite values in 4 of 4 samples"


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
