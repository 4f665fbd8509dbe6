"""The job graph and the driver loop (in-process: serial executor, fake training)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from fake_training import FakeTrainer, toy_space

import edmgrid.engine.evaluate
import edmgrid.engine.fid
from edmgrid.engine.data import load_data
from edmgrid.run.executors import SerialExecutor
from edmgrid.run.jobs import Task
from edmgrid.run.runner import Summary, plan, run_space
from edmgrid.run.scheduler import Picker, model_key
from edmgrid.run.store import Store

MIXTURES = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": [2, 3]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def trainer(tmp_path: Path) -> FakeTrainer:
    return FakeTrainer(log=str(tmp_path / "trainings.log"))


def run(space: Any, store: Store, trainer: FakeTrainer | None = None, **kw: Any) -> Summary:
    return run_space(space, store, executor=SerialExecutor(), trainer=trainer, **kw)


def test_each_training_config_becomes_one_train_task_that_its_evaluations_wait_for(
    tmp_path: Path, trainer: FakeTrainer
) -> None:
    space = toy_space(tmp_path, "a", MIXTURES)
    graph = plan(space, Store(tmp_path / "r"), trainer)
    assert len(graph.evaluations) == 4
    assert len(graph.trains) == 2
    assert {t.training_key for t in graph.evaluations} == {t.key for t in graph.trains}


def test_a_training_is_run_once_and_reused_by_another_space(
    tmp_path: Path, trainer: FakeTrainer
) -> None:
    store = Store(tmp_path / "r")
    first = run(toy_space(tmp_path, "a", MIXTURES), store, trainer)
    assert first.ok and first.counts["done"] == 2 + 4
    second = toy_space(tmp_path, "b", MIXTURES, seeds="100-115")
    assert plan(second, store, trainer).trains == []
    summary = run(second, store, trainer)
    assert summary.ok and summary.counts["done"] == 4
    assert len(trainer.trainings()) == 2
    trainings = store.query("SELECT * FROM trainings")
    assert sorted(trainings["training_key"]) == sorted(set(trainer.trainings()))
    assert set(trainings["status"]) == {"done"}
    runs = store.query("SELECT training_key FROM runs")
    assert len(runs) == 8 and set(runs["training_key"]) == set(trainer.trainings())


def test_evaluations_start_only_after_their_training_finished(
    tmp_path: Path, trainer: FakeTrainer
) -> None:
    store = Store(tmp_path / "r")
    run(toy_space(tmp_path, "a", MIXTURES), store, trainer)
    joined = store.query(
        "SELECT r.started_at AS s, t.created_at AS t "
        "FROM runs r JOIN trainings t USING (training_key)"
    )
    assert len(joined) == 4
    assert (joined["s"] >= joined["t"]).all()


def test_a_failed_training_fails_its_evaluations_and_the_rest_of_the_grid_finishes(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "r")
    space = toy_space(tmp_path, "a", MIXTURES)
    broken = FakeTrainer(log=str(tmp_path / "log"), fail="grid25")
    summary = run(space, store, broken)
    assert not summary.ok
    assert summary.counts["done"] == 1 + 2  # ring8: its training and its two evaluations
    assert summary.counts["failed"] == 1 + 2
    rows = store.query("SELECT data_mixture AS mixture, status, error_type, error FROM runs")
    failed = rows[rows["mixture"] == "grid25"]
    assert set(failed["status"]) == {"failed"} and set(failed["error_type"]) == {"TrainingFailed"}
    assert failed["error"].str.contains("loss diverged").all()
    assert set(rows[rows["mixture"] == "ring8"]["status"]) == {"done"}
    # the next run retries the failed training and then its evaluations, nothing else
    fixed = FakeTrainer(log=str(tmp_path / "log"))
    again = run(space, store, fixed)
    assert again.ok and again.counts["done"] == 1 + 2 and again.counts["skipped"] == 2
    assert len(fixed.trainings()) == 3


def test_without_retry_a_failed_training_is_not_rerun(tmp_path: Path) -> None:
    store = Store(tmp_path / "r")
    space = toy_space(tmp_path, "a", {"data.mixture": ["grid25"]})
    broken = FakeTrainer(log=str(tmp_path / "log"), fail="grid25")
    run(space, store, broken)
    bigger = toy_space(tmp_path, "a", {"data.mixture": ["grid25"]}, seeds="0-7")
    summary = run(bigger, store, broken, retry_failed=False)
    assert len(broken.trainings()) == 1
    assert summary.counts["failed"] == 1  # the new job fails at once with the training's error
    assert store.row(bigger.jobs[0].job_id)["error_type"] == "TrainingFailed"  # type: ignore[index]


def test_a_job_that_raises_leaves_a_failed_row_and_the_others_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2, 3, 4]})
    bad = space.jobs[1].job_id
    real = edmgrid.engine.evaluate.evaluate

    def flaky(job: Any, cache_dir: Path, progress: Any = None) -> dict[str, Any]:
        if job.job_id == bad:
            raise ZeroDivisionError("boom")
        return real(job, cache_dir, progress)

    monkeypatch.setattr(edmgrid.engine.evaluate, "evaluate", flaky)
    store = Store(tmp_path / "r")
    summary = run(space, store)
    assert summary.counts["done"] == 2 and summary.counts["failed"] == 1
    row = store.row(bad)
    assert (
        row is not None and row["status"] == "failed" and row["error_type"] == "ZeroDivisionError"
    )
    assert "ZeroDivisionError: boom" in Path(row["traceback_path"]).read_text()
    monkeypatch.setattr(edmgrid.engine.evaluate, "evaluate", real)
    again = run(space, store)
    assert again.executed == [bad] and again.ok


def test_a_metric_that_is_not_finite_fails_its_job_instead_of_storing_nan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edmgrid.engine.fid, "frechet_distance", lambda *a: float("nan"))
    store = Store(tmp_path / "r")
    summary = run(toy_space(tmp_path, "a", {}), store)
    assert summary.counts["failed"] == 1
    (job,) = store.job_ids()
    row = store.row(job)  # the stored row itself (the runs view has an fd_raw column, NULL)
    assert row is not None
    assert row["error"] == "metric fd_raw is not finite (nan)" and "fd_raw" not in row


def test_two_concurrent_runs_on_one_store_split_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = edmgrid.engine.evaluate.evaluate
    active: list[str] = []
    overlap = threading.Event()

    def slow(job: Any, cache_dir: Path, progress: Any = None) -> dict[str, Any]:
        active.append(job.job_id)
        if len(active) > 1:
            overlap.set()
        try:
            overlap.wait(0.05)
            return real(job, cache_dir, progress)
        finally:
            active.remove(job.job_id)

    monkeypatch.setattr(edmgrid.engine.evaluate, "evaluate", slow)
    trainer = FakeTrainer(log=str(tmp_path / "log"), seconds=0.3)
    space = toy_space(tmp_path, "a", {**MIXTURES, "sampler.timesteps.num_steps": [2, 3, 4, 5]})
    store = Store(tmp_path / "r")
    summaries: list[Summary] = []
    threads = [
        threading.Thread(target=lambda: summaries.append(run(space, store, trainer)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a, b = summaries
    assert overlap.is_set()
    assert not set(a.executed) & set(b.executed)
    assert len(a.executed) + len(b.executed) == 2 + 8
    assert sorted(trainer.trainings()) == sorted(set(trainer.trainings()))  # each trained once
    assert a.ok and b.ok
    assert not list((store.root / "claims").glob("*.claim"))


def test_force_reruns_evaluations_but_keeps_checkpoints(
    tmp_path: Path, trainer: FakeTrainer
) -> None:
    store = Store(tmp_path / "r")
    space = toy_space(tmp_path, "a", MIXTURES)
    run(space, store, trainer)
    summary = run(space, store, trainer, force=True)
    assert summary.counts["done"] == 4 and len(trainer.trainings()) == 2


def _task(kind: str, key: str, steps: int, mixture: str = "ring8", **grid: list[Any]) -> Task:
    folder = Path(tempfile.mkdtemp())
    space = toy_space(
        folder,
        "p",
        {"data.mixture": [mixture], "sampler.timesteps.num_steps": [steps], **grid},
        metrics=[{"name": "ode_error"}],
    )
    job = space.jobs[0]
    return Task(kind, key, job, "p", training_key=key if kind == "train" else None)  # type: ignore[arg-type]


def test_pick_prefers_trainings_then_the_workers_model_then_the_least_similar_job() -> None:
    picker = Picker()
    a, b = _task("evaluate", "a" * 16, 2), _task("evaluate", "b" * 16, 3, "grid25")
    train = _task("train", "c" * 16, 2)
    assert picker.pick([a, b, train], None, [], set()) == 2
    assert picker.pick([a, b], None, [], set()) == 0  # nothing to tell apart: grid order
    assert picker.pick([a, b], model_key(b), [], set()) == 1
    near = _task("evaluate", "d" * 16, 3)  # same data as the running job, other steps
    far = _task("evaluate", "e" * 16, 4, "grid25")
    assert picker.pick([near, far], None, [a], set()) == 1


def test_pick_avoids_jobs_that_would_wait_for_shared_work_a_running_job_is_doing() -> None:
    picker = Picker()
    running = _task("evaluate", "a" * 16, 8, **{"sampler.timesteps.name": ["vp"]})
    heun = {"sampler.solver": [{"name": "heun", "S_churn": 1.0}]}
    same_ref = _task("evaluate", "b" * 16, 16, **heun, **{"sampler.timesteps.name": ["vp"]})
    other_ref = _task("evaluate", "c" * 16, 8, **{"sampler.timesteps.name": ["edm"]})
    assert picker.shared_work(running) != picker.shared_work(other_ref)
    busy = set(picker.shared_work(running))
    assert picker.pick([same_ref, other_ref], None, [running], busy) == 1
    # once the shared work is done, similarity decides again (other solver, churn and steps)
    assert picker.pick([same_ref, other_ref], None, [running], set()) == 0


def test_the_ode_reference_is_shared_across_step_counts_but_not_time_steps_or_seeds() -> None:
    def key(**grid: list[Any]) -> str | None:
        folder = Path(tempfile.mkdtemp())
        job = toy_space(folder, "k", grid, metrics=[{"name": "ode_error"}]).jobs[0]
        return job.metrics[0].shared_work(job)

    assert key(**{"sampler.timesteps.num_steps": [8]}) == key(
        **{"sampler.timesteps.num_steps": [16]}
    )
    assert key(**{"sampler.timesteps.name": ["vp"]}) != key(**{"sampler.timesteps.name": ["ve"]})
    assert key(seeds=["0-7"]) != key(seeds=["8-15"])


def test_a_recorded_space_is_finished_only_with_its_fingerprint_and_every_job_done(
    tmp_path: Path,
) -> None:
    from edmgrid.run.store import space_fingerprint

    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2, 3]})
    text = Path(space.source).read_bytes()
    fingerprint = space_fingerprint(text)
    assert space_fingerprint(text + b"# a comment\n") != fingerprint
    store = Store(tmp_path / "r")
    run_space(space, store, executor=SerialExecutor(), fingerprint=fingerprint)
    assert store.finished("a", fingerprint) == [j.job_id for j in space.jobs]
    assert store.finished("a", "0" * 16) is None
    assert store.finished("../a", fingerprint) is None
    store.result_path(space.jobs[0].job_id).unlink()
    assert store.finished("a", fingerprint) is None


def test_a_worker_builds_the_denoiser_once_for_consecutive_jobs_of_one_model(
    tmp_path: Path,
) -> None:
    from edmgrid.engine.evaluate import load_denoiser

    space = toy_space(tmp_path, "a", MIXTURES)
    ring = [j for j in space.jobs if j.data.mixture == "ring8"]  # type: ignore[attr-defined]
    grid = [j for j in space.jobs if j.data.mixture == "grid25"]  # type: ignore[attr-defined]
    first = load_denoiser(ring[0], load_data(ring[0].data), tmp_path)
    assert load_denoiser(ring[1], load_data(ring[1].data), tmp_path) is first
    assert load_denoiser(grid[0], load_data(grid[0].data), tmp_path) is not first
