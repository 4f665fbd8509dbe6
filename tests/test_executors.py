"""Executors: device assignment, and local worker processes (pinned GPUs, crashes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_training import FakeTrainer, toy_space

from edmgrid.errors import InputError
from edmgrid.run.executors import (
    CPU_WORKERS,
    Event,
    LocalExecutor,
    WorkerSlot,
    assign_devices,
    make_executor,
)
from edmgrid.run.jobs import Task
from edmgrid.run.runner import _Display, run_space
from edmgrid.run.store import Store


def test_one_worker_per_gpu_with_the_cores_divided_among_them() -> None:
    slots = assign_devices(None, None, ["0", "1", "2", "3"], cpus=16)
    assert [s.cuda for s in slots] == ["0", "1", "2", "3"]
    assert {s.threads for s in slots} == {4}


def test_devices_restricts_the_gpus_used() -> None:
    slots = assign_devices(["0", "2"], None, ["0", "1", "2"], cpus=8)
    assert slots == [WorkerSlot(0, "0", 4), WorkerSlot(1, "2", 4)]
    assert [s.device for s in slots] == ["cuda:0", "cuda:2"]


def test_more_workers_than_gpus_share_them_round_robin() -> None:
    slots = assign_devices(None, 4, ["0", "1"], cpus=2)
    assert [s.cuda for s in slots] == ["0", "1", "0", "1"]
    assert {s.threads for s in slots} == {1}


def test_cpu_workers_divide_the_threads_and_default_to_one_per_core_up_to_four() -> None:
    assert assign_devices(None, None, [], cpus=2) == [
        WorkerSlot(0, None, 1),
        WorkerSlot(1, None, 1),
    ]
    assert assign_devices(None, None, [], cpus=1) == [WorkerSlot(0, None, 1)]
    assert [s.threads for s in assign_devices(None, None, [], cpus=16)] == [4, 4, 4, 4]
    assert assign_devices(None, 2, [], cpus=2) == [WorkerSlot(0, None, 1), WorkerSlot(1, None, 1)]
    assert assign_devices(None, 3, [], cpus=2, threads=2)[2].threads == 2


@pytest.mark.parametrize(
    ("devices", "workers", "gpus", "message"),
    [
        (["1"], None, [], "no GPU is visible"),
        (["5"], None, ["0", "1"], "no GPU 5; visible GPUs: 0, 1"),
        (None, 0, [], "at least 1"),
    ],
)
def test_impossible_device_requests_are_spec_errors(
    devices: list[str] | None, workers: int | None, gpus: list[str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        assign_devices(devices, workers, gpus, cpus=2)


def test_unknown_executor_is_a_spec_error() -> None:
    with pytest.raises(InputError, match="valid: local, ray, serial"):
        make_executor("threads")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("serial", {"workers": 2}, "--workers cannot be used with --executor serial"),
        ("local", {"gpus": 2}, "--gpus cannot be used with --executor local"),
        ("ray", {"devices": ["0"]}, "--devices cannot be used with --executor ray"),
        ("ray", {"gpus": 2, "address": "auto"}, "a cluster"),
    ],
)
def test_options_of_another_executor_are_spec_errors(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        make_executor(name, **options)  # type: ignore[arg-type]


def test_a_run_with_nothing_to_do_neither_counts_gpus_nor_starts_workers(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2, 3]}, seeds="0-3")
    store = Store(tmp_path / "r")
    assert run_space(space, store).counts["done"] == 2
    counted: list[int] = []
    executor = LocalExecutor(gpus=lambda: counted.append(1) or [])  # counting imports torch
    again = run_space(space, store, executor=executor)
    assert again.counts["skipped"] == 2 and not again.executed
    assert counted == [] and executor.workers == {}
    cpu_workers = min(os.cpu_count() or 1, CPU_WORKERS)
    assert executor.free() == list(range(cpu_workers)) and counted == [1]


def test_local_workers_each_see_only_their_simulated_gpu(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2, 3, 4, 5]})
    store = Store(tmp_path / "r")
    executor = LocalExecutor(workers=2, gpus=lambda: ["0", "1"])
    summary = run_space(space, store, executor=executor)
    assert summary.ok and summary.counts["done"] == 4
    devices = store.query("SELECT device FROM runs")["device"]
    assert set(devices) == {"cpu (simulated GPU 0)", "cpu (simulated GPU 1)"}


def test_a_worker_that_dies_fails_its_job_and_is_replaced(tmp_path: Path) -> None:
    grid = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": [2, 3]}
    space = toy_space(tmp_path, "a", grid)
    store = Store(tmp_path / "r")
    trainer = FakeTrainer(log=str(tmp_path / "log"), die="grid25")
    summary = run_space(space, store, executor=LocalExecutor(workers=1), trainer=trainer)
    assert summary.counts["done"] == 1 + 2 and summary.counts["failed"] == 1 + 2
    died = store.query("SELECT * FROM trainings WHERE status = 'failed'")
    assert list(died["error_type"]) == ["WorkerDied"]
    assert "exit code 9" in died["error"][0]
    blocked = store.query("SELECT error_type FROM runs WHERE status = 'failed'")
    assert set(blocked["error_type"]) == {"TrainingFailed"}


def test_workers_that_cannot_start_stop_the_run_instead_of_failing_every_job(
    tmp_path: Path,
) -> None:
    # a script without the `if __name__ == "__main__"` guard: each worker re-runs it and dies
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        "from fake_training import toy_space\n"
        "from edmgrid.run.executors import LocalExecutor\n"
        "from edmgrid.run.runner import _Display, run_space\n"
        "from edmgrid.run.store import Store\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "space = toy_space(folder, 'a', {'sampler.timesteps.num_steps': [2, 3]})\n"
        "run_space(space, Store(folder / 'r'), executor=LocalExecutor(workers=1))\n"
    )
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "worker 0 exited (code 1) before it could run a job" in proc.stderr
    assert not list((tmp_path / "r" / "runs").glob("*.parquet"))


def test_the_progress_display_shows_a_workers_job_and_its_running_loss():
    display = _Display("space", total=2, show=False)
    display.show(Event(1, "t", "started", device="cpu"), "vp-E train")
    display.show(Event(1, "t", "progress", 64, 256, note="loss 0.4321"), "vp-E train")
    line = display.bar.tasks[display.workers[1]]
    assert line.description == "  [1] cpu vp-E train loss 0.4321"
    assert (line.completed, line.total) == (64, 256)


def test_a_worker_caps_torch_and_numpy_blas_at_its_threads():
    """numpy's OpenBLAS takes a thread per core unless capped: 2 workers would share 4."""
    probe = (
        "import sys, threadpoolctl, torch; from edmgrid.run.executors.local import limit_threads; "
        "limit_threads(int(sys.argv[1])); "
        "pools = {p['num_threads'] for p in threadpoolctl.threadpool_info()}; "
        "print(torch.get_num_threads(), *pools)"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    for threads in (1, 2):
        out = subprocess.run(
            [sys.executable, "-c", probe, str(threads)], env=env, capture_output=True, text=True
        )
        assert out.stdout.split() == [str(threads), str(threads)], out.stderr


def test_a_training_of_train_gpus_k_holds_k_gpus_and_is_told_k(tmp_path: Path) -> None:
    grid = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": [2, 3]}
    space = toy_space(tmp_path, "a", grid)
    store = Store(tmp_path / "r")
    trainer = FakeTrainer(log=str(tmp_path / "log"))
    executor = LocalExecutor(workers=2, gpus=lambda: ["0", "1"])
    summary = run_space(space, store, executor=executor, trainer=trainer, train_gpus=2)
    assert summary.ok and summary.counts["done"] == 2 + 4
    trainings = store.query("SELECT device, devices, started_at, created_at FROM trainings")
    assert list(trainings["device"]) == ["cpu (simulated GPU 0,1)"] * 2  # conftest
    assert list(trainings["devices"]) == [2, 2]
    first, second = trainings.sort_values("started_at").itertuples()
    assert second.started_at >= first.created_at, "two 2-GPU trainings shared 2 GPUs"
    runs = set(store.query("SELECT device FROM runs")["device"])
    assert runs == {"cpu (simulated GPU 0)", "cpu (simulated GPU 1)"}


def test_on_cpu_a_training_of_k_devices_gets_the_threads_of_k_workers(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2, 3]})
    store = Store(tmp_path / "r")
    trainer = FakeTrainer(log=str(tmp_path / "log"))
    executor = LocalExecutor(workers=2, threads=1, gpus=lambda: [])
    summary = run_space(space, store, executor=executor, trainer=trainer, train_gpus=2)
    assert summary.ok
    trainings = store.query("SELECT device, devices, threads FROM trainings")
    assert trainings.iloc[0].tolist() == ["cpu", 2, 2]


def test_a_training_of_more_devices_than_the_workers_have_is_an_input_error(
    tmp_path: Path,
) -> None:
    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2]})
    trainer = FakeTrainer(log=str(tmp_path / "log"))
    executor = LocalExecutor(workers=2, gpus=lambda: ["0", "1"])
    with pytest.raises(InputError, match="--train-gpus 3: --executor local offers at most 2"):
        run_space(space, Store(tmp_path / "r"), executor=executor, trainer=trainer, train_gpus=3)


def test_cancel_stops_a_running_task_and_no_row_is_written(tmp_path: Path) -> None:
    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2]})
    trainer = FakeTrainer(log=str(tmp_path / "log"), seconds=60)
    job = space.jobs[0]
    task = Task("train", str(trainer.key(job)), job, "a", trainer=trainer)
    store = Store(tmp_path / "r")
    events: list[Event] = []
    executor = LocalExecutor(workers=1, gpus=lambda: [])
    executor.open(store.root.resolve(), events.append)
    executor.submit(task, 0)
    while not trainer.trainings():
        executor.poll(0.1)
    executor.cancel(task.name)
    assert executor.free() == [0]
    executor.poll(0.5)
    executor.close()
    assert [e.kind for e in events if e.kind == "finished"] == []
    assert store.training_status(task.key) is None
