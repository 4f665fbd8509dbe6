"""SIGINT/SIGTERM at any moment of ``edmgrid run`` (issue 15): from edmgrid's first line through
imports, fork-server and worker start-up to the jobs, the run stops its workers, keeps what
finished, releases its claims and says so on one line, exit 130; a re-run completes the grid
with the rows an uninterrupted run gives."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_training import ROOT, toy_space

from edmgrid.config.space import Space
from edmgrid.run.executors import SerialExecutor
from edmgrid.run.runner import run_space
from edmgrid.run.store import Store

LINE = re.compile(r"^interrupted: (\d+) done, (\d+) left; re-run to continue$", re.M)
EXECUTORS = (["-x", "serial"], ["-x", "local", "-w", "2"])


def start(space: Space, results: Path, executor: list[str]) -> subprocess.Popen[bytes]:
    """``python -m edmgrid run`` (the console script's entry) in its own process group, as a
    terminal starts it; returns once edmgrid's first line has installed its handlers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "edmgrid", "run", space.source, "-r", results, *executor]
    proc = subprocess.Popen(
        list(map(str, args)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not handles_sigterm(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)
    return proc


def handles_sigterm(pid: int) -> bool:
    """Whether process ``pid`` catches SIGTERM (Python leaves it at the default: edmgrid's
    handlers are in place)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)[1], 16)  # type: ignore[index]
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def interrupt(proc: subprocess.Popen[bytes], sig: int, group: bool) -> tuple[int, str, str]:
    """Send ``sig`` (to the whole process group, as Ctrl-C does, or to the run alone)."""
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.decode(), err.decode()


def interrupt_at_random_moments(folder: Path, moments: list[float], seed: int) -> int:
    """Runs of one space, each sent SIGINT or SIGTERM ``moments[k]`` seconds after edmgrid's
    first line; checks each stopped cleanly, and a last run gives the rows of an
    uninterrupted one. Returns how many signals landed mid-run."""
    rng = random.Random(seed)
    space = toy_space(folder, "intr", {"sampler.timesteps.num_steps": list(range(2, 14))})
    results = folder / "results"
    landed = 0
    for k, moment in enumerate(moments):
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        group = sig == signal.SIGINT and rng.random() < 0.5
        proc = start(space, results, EXECUTORS[k % 2])
        time.sleep(moment)
        code, out, err = interrupt(proc, sig, group)
        where = (
            f"seed {seed}, run {k}: {sig.name} {'to the group ' if group else ''}at {moment:.2f} s"
        )
        assert "Traceback" not in err + out and "Fatal" not in err, f"{where}\n{err}"
        assert not list((results / "claims").glob("*.claim")), where
        if code == 0:  # it had finished: nothing to say
            assert not LINE.search(err), where
            continue
        landed += 1
        assert code == 130, f"{where}: exit {code}\n{err}"
        (line,) = LINE.findall(err)
        assert err.strip().splitlines()[-1].startswith("interrupted:"), err
        store = Store(results)
        done = sum(store.status(j.job_id) == "done" for j in space.jobs)
        assert (int(line[0]), int(line[1])) == (done, len(space.jobs) - done), where
    final = subprocess.run(
        [sys.executable, "-m", "edmgrid", "run", space.source, "-r", str(results), "-x", "serial"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr.decode()
    reference = Store(folder / "reference")
    run_space(space, reference, executor=SerialExecutor())
    rows = Store(results).query("SELECT job_id, status, fd_raw FROM runs ORDER BY job_id")
    expected = reference.query("SELECT job_id, status, fd_raw FROM runs ORDER BY job_id")
    assert rows.to_dict("records") == expected.to_dict("records")
    return landed


def test_signals_at_four_moments_from_start_up_to_the_jobs_stop_the_run_cleanly(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    moments = [0.0, random.uniform(0.0, 1.0), random.uniform(1.0, 3.0), random.uniform(0.0, 3.0)]
    landed = interrupt_at_random_moments(tmp_path, moments, seed)
    print(f"{landed} of 4 signals landed mid-run (seed {seed})")
    assert landed >= 2, f"seed {seed}: the runs finished before their signals"


@pytest.mark.slow
def test_signals_at_ten_random_moments_including_start_up_stop_the_run_cleanly(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    moments = [
        0.0,
        *(rng.uniform(0.0, 0.5) for _ in range(3)),
        *(rng.uniform(0, 4) for _ in range(6)),
    ]
    landed = interrupt_at_random_moments(tmp_path, moments, seed)
    print(f"{landed} of 10 signals landed mid-run (seed {seed})")
    assert landed >= 6, f"seed {seed}: only {landed} of 10 signals landed mid-run"
