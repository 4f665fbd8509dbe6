"""Concurrent `edmgrid run` processes on one store: every task executes once and all finish; a
run SIGKILLed beside them leaves claims that a live run takes over (issue #8)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

from fake_training import FakeTrainer, claims_of, edmgrid_run, toy_space

from edmgrid.config.space import Space
from edmgrid.run.store import Store

#: Two trainings (one per mixture) and 12 evaluations that wait for them.
GRID = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": list(range(2, 8))}
#: Seconds each fake training takes: long enough for the runs to meet.
TRAIN_S = 2.0


def executed(log: Path) -> Counter[str]:
    """How often each task finished (``fake_training.install`` logs them)."""
    path = Path(f"{log}.tasks")
    return Counter(line.split()[0] for line in path.read_text().splitlines())


def executors(log: Path) -> set[str]:
    """The pids of the runs that finished tasks."""
    return {line.split()[1] for line in Path(f"{log}.tasks").read_text().splitlines()}


def tasks(space: Space, trainer: FakeTrainer) -> set[str]:
    """The names of every task of the space: its trainings and its evaluations."""
    return {f"train-{trainer.key(j)}" for j in space.jobs} | {j.job_id for j in space.jobs}


def check_rows(space: Space, results: Path) -> None:
    rows = Store(results).query("SELECT job_id, status FROM runs")
    assert sorted(rows["job_id"]) == sorted(j.job_id for j in space.jobs)
    assert set(rows["status"]) == {"done"}
    assert not list((results / "claims").glob("*.claim"))


def test_three_concurrent_runs_execute_every_task_once_and_all_finish(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "c", GRID, seeds="0-63")
    results, log = tmp_path / "results", tmp_path / "trainings.log"
    trainer = FakeTrainer(log=str(log))
    runs = [
        edmgrid_run(Path(space.source), results, "-x", "serial", fake=log, seconds=TRAIN_S)
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=300)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    counts = executed(log)
    assert set(counts) == tasks(space, trainer)
    assert set(counts.values()) == {1}, f"tasks executed twice: {counts.most_common(3)}"
    assert sorted(trainer.completed()) == sorted(set(trainer.trainings()))
    assert len(executors(log)) >= 2, "one run did everything: the runs never met"
    check_rows(space, results)


def test_a_run_beside_a_sigkilled_one_takes_over_its_claims_and_finishes(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "k", GRID, seeds="0-63")
    results, log = tmp_path / "results", tmp_path / "trainings.log"
    trainer = FakeTrainer(log=str(log))
    victim, survivor = (
        edmgrid_run(Path(space.source), results, "-x", "serial", fake=log, seconds=TRAIN_S)
        for _ in range(2)
    )
    deadline = time.monotonic() + 120
    while not any(name.startswith("train-") for name in claims_of(results, victim.pid)):
        assert victim.poll() is None and time.monotonic() < deadline, "the victim never trained"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert claims_of(results, victim.pid), "the victim died holding no claim"
    out, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, out.decode()
    counts = executed(log)
    assert set(counts) == tasks(space, trainer)  # the victim's training was finished
    assert set(counts.values()) == {1}, f"tasks executed twice: {counts.most_common(3)}"
    check_rows(space, results)
