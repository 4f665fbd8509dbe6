"""Killing `edmgrid run` (SIGKILL at random moments, SIGTERM) mid-grid loses nothing, leaves
nothing partial and trains nothing twice; the next run finishes the grid (issue #8)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch
from fake_training import FakeTrainer, claims_of, edmgrid_run, toy_space

from edmgrid.config.space import Space
from edmgrid.run.store import Store

#: Two trainings (one per mixture) and 16 evaluations that wait for them.
GRID = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": list(range(2, 10))}
#: Seconds each fake training takes: kills land in trainings as well as in evaluations.
TRAIN_S = 0.5
EXECUTORS = (["-x", "local", "-w", "2"], ["-x", "serial"])


def kill_at_random(
    proc: subprocess.Popen[bytes], results: Path, rng: random.Random, sig: int, within: float
) -> bool:
    """Send ``sig`` at a random moment within ``within`` seconds after the run first holds a
    claim (it is dispatching tasks); whether it was still running then."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and not claims_of(results, proc.pid):
        assert time.monotonic() < deadline, "the run never started a task"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, within))
    running = proc.poll() is None
    proc.send_signal(sig)
    proc.wait(30)
    return running


def finish(space: Space, results: Path, trainer: FakeTrainer) -> None:
    """Run the space to the end, then check that the store is whole: one done row per job, a
    loadable checkpoint and a done row per training, no training completed twice, nothing
    partial or claimed left, and the DuckDB file's views open."""
    final = edmgrid_run(Path(space.source), results, "-x", "serial", fake=Path(trainer.log))
    out, _ = final.communicate(timeout=180)
    assert final.returncode == 0, out.decode()
    store = Store(results)
    rows = store.query("SELECT job_id, status, training_key FROM runs")
    assert sorted(rows["job_id"]) == sorted(j.job_id for j in space.jobs)
    assert set(rows["status"]) == {"done"}
    keys = set(rows["training_key"])
    assert len(keys) == 2 and set(trainer.trainings()) == keys
    completed = Counter(trainer.completed())
    assert all(n == 1 for n in completed.values()), f"a training was completed twice: {completed}"
    for key in keys:
        assert store.training_status(key) == "done"
        assert torch.load(trainer.checkpoint(store.cache, key), weights_only=True)["weights"].shape
    assert not list(results.rglob("*.tmp")) and not list(results.rglob("*.tmp.wal"))
    assert not list((results / "claims").glob("*.claim"))
    assert not (results / "quarantine").exists()
    with duckdb.connect(str(store.db_path), read_only=True) as con:
        con.execute("SET file_search_path = ?", [str(results)])  # its paths are relative
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (len(space.jobs),)
        assert con.execute("SELECT count(*) FROM trainings").fetchone() == (2,)


def kill_repeatedly(
    folder: Path, signals: list[int], rng: random.Random, within: float = 1.0
) -> int:
    """Runs of one space, each killed with the next of ``signals`` at a random moment
    (``kill_at_random``; alternately with local workers and serial), then a run to the end;
    returns how many signals landed mid-run."""
    folder.mkdir(exist_ok=True)
    space = toy_space(folder, "kill", GRID, seeds="0-31")
    results, trainer = folder / "results", FakeTrainer(log=str(folder / "trainings.log"))
    landed = 0
    for k, sig in enumerate(signals):
        executor = EXECUTORS[k % 2]
        proc = edmgrid_run(
            Path(space.source), results, *executor, fake=Path(trainer.log), seconds=TRAIN_S
        )
        landed += kill_at_random(proc, results, rng, sig, within)
        if sig == signal.SIGTERM:  # interrupts like Ctrl-C: stops its workers, lets go
            assert proc.returncode == 130
            assert not list((results / "claims").glob("*.claim")), "SIGTERM must release claims"
        else:
            assert proc.returncode in (-signal.SIGKILL, 0)
    finish(space, results, trainer)
    return landed


def test_sigkill_and_sigterm_at_random_moments_then_rerun_gives_one_row_per_job(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    signals = [signal.SIGTERM] + [signal.SIGKILL] * 3  # a fresh grid: SIGTERM lands mid-run
    landed = kill_repeatedly(tmp_path, signals, random.Random(seed))
    print(f"{landed} of 4 signals landed mid-run (seed {seed})")
    assert landed >= 1, f"seed {seed}: every run finished before its signal"


@pytest.mark.slow
def test_twenty_sigkills_at_random_moments_in_five_stores(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kills = [signal.SIGKILL] * 4  # spread over 3 s: some land late, as the run ends
    landed = sum(kill_repeatedly(tmp_path / str(n), kills, rng, 3.0) for n in range(5))
    print(f"{landed} of 20 kills landed mid-run (seed {seed})")
    assert landed >= 10, f"seed {seed}: only {landed} of 20 kills landed mid-run"


def test_a_no_op_run_after_a_kill_removes_its_leftovers_and_makes_the_database(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    space = toy_space(tmp_path, "n", {"sampler.timesteps.num_steps": [2, 3]}, seeds="0-3")
    results = tmp_path / "results"
    run = ["run", space.source, "-r", results, "-x", "serial"]
    assert cli(*run).code == 0
    # what a run killed after its last row leaves: its claim, a temporary file, no database
    (results / "claims" / f"{space.jobs[0].job_id}.claim").write_text('{"pid": 1, "host": "h"}')
    (results / "runs" / ".x.parquet.abc.tmp").write_bytes(b"partial")
    Store(results).db_path.unlink()
    again = cli(*run)
    assert again.code == 0 and "│ 0    │ 2       │ 0" in again.out  # the no-op path
    assert not list(results.rglob("*.tmp")) and not list((results / "claims").glob("*.claim"))
    with duckdb.connect(str(Store(results).db_path), read_only=True) as con:
        con.execute("SET file_search_path = ?", [str(results)])
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)
