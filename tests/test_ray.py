"""The Ray executor with declared (logical) GPUs on a CPU-only machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_training import FakeTrainer, toy_space

from edmgrid.run.executors import RayExecutor
from edmgrid.run.runner import run_space
from edmgrid.run.store import Store

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Ray with 2 CPUs and 2 fake GPUs; its workers import edmgrid and the test helpers."""
    path = os.pathsep.join([str(TESTS.parent), str(TESTS)])
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield ray
    ray.shutdown()


def test_two_trainings_run_at_once_on_distinct_gpus(cluster: Any, tmp_path: Path) -> None:
    grid = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": [2, 3]}
    space = toy_space(tmp_path, "a", grid)
    store = Store(tmp_path / "r")
    trainer = FakeTrainer(log=str(tmp_path / "log"), seconds=0.5, rendezvous=2)
    summary = run_space(space, store, executor=RayExecutor(), trainer=trainer)
    assert summary.ok and summary.counts["done"] == 2 + 4
    trainings = store.query("SELECT device, started_at, created_at FROM trainings")
    assert sorted(trainings["device"]) == ["cpu (simulated GPU 0)", "cpu (simulated GPU 1)"]
    first, second = trainings.sort_values("started_at").itertuples()
    assert second.started_at < first.created_at, "the trainings did not overlap"
    devices = store.query("SELECT device FROM runs")["device"]
    assert set(devices) <= {"cpu (simulated GPU 0)", "cpu (simulated GPU 1)"}


def test_a_failing_ray_job_leaves_a_failed_row_and_the_others_finish(
    cluster: Any, tmp_path: Path
) -> None:
    space = toy_space(tmp_path, "f", {"sampler.timesteps.sigma_max": [80.0, 1e300]}, seeds="0-3")
    store = Store(tmp_path / "r")
    summary = run_space(space, store, executor=RayExecutor())
    assert summary.counts["done"] == 1 and summary.counts["failed"] == 1
    failed = store.query("SELECT error_type FROM runs WHERE status = 'failed'")
    assert list(failed["error_type"]) == ["JobError"]
