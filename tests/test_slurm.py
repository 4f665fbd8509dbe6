"""``--executor slurm`` on a real single-node Slurm started for these tests (``slurm_cluster``);
skipped with the reason where Slurm cannot start. Its settings' parsing needs no Slurm."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import slurm_cluster
from fake_training import ROOT, FakeTrainer, edmgrid, edmgrid_run, toy_space

from edmgrid.config.slurm import SlurmSettings, minutes
from edmgrid.errors import InputError
from edmgrid.run.executors import make_executor
from edmgrid.run.runner import run_space
from edmgrid.run.store import Store

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30", 30), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440), ("1-02:30:00", 1590)],
)
def test_slurm_times_are_read_in_whole_minutes_rounded_up(text: str, expected: int) -> None:
    assert minutes(text) == expected


def test_flags_override_the_spaces_slurm_section_and_a_bad_time_is_an_input_error() -> None:
    settings = SlurmSettings(partition="cpu", account="a", time="10")
    executor: Any = make_executor("slurm", partition="gpu", time="02:00:00", settings=settings)
    assert (executor.settings.partition, executor.settings.account) == ("gpu", "a")
    assert minutes(executor.settings.time) == 120
    with pytest.raises(InputError, match="--time soon"):
        make_executor("slurm", time="soon")
    with pytest.raises(InputError, match="--devices cannot be used with --executor slurm"):
        make_executor("slurm", devices=["0"])


def test_detach_needs_the_slurm_executor(cli: Callable[..., Any], tmp_path: Path) -> None:
    result = cli("run", ROOT / "spaces" / "quickstart.yaml", "-r", tmp_path / "r", "--detach")
    assert result.code == 2 and "--detach needs --executor slurm" in result.err


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.Cluster]:
    """Slurm on localhost with 2 CPUs; its jobs import edmgrid and the test helpers."""
    folder = tmp_path_factory.mktemp("slurm")
    try:
        started = slurm_cluster.start(folder, cpus=min(2, os.cpu_count() or 1))
    except slurm_cluster.Unavailable as e:
        print(f"Slurm unavailable: {e}")
        pytest.skip(f"Slurm unavailable: {e}")
    print(f"Slurm started in {started.seconds:.2f} s")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    yield started
    started.stop()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def rows(results: Path) -> list[tuple[Any, ...]]:
    frame = Store(results).query("SELECT job_id, nfe, ode_error, fd_raw FROM runs ORDER BY 1")
    return list(frame.itertuples(index=False, name=None))


def test_quickstart_on_slurm_has_the_rows_of_local(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    space = ROOT / "spaces" / "quickstart.yaml"
    for name, executor in (("local", "local"), ("slurm", "slurm")):
        proc = edmgrid_run(space, tmp_path / name, "-x", executor)
        out, _ = proc.communicate(timeout=540)
        assert proc.returncode == 0, out.decode()
    local, slurm = rows(tmp_path / "local"), rows(tmp_path / "slurm")
    assert len(slurm) == 18
    assert [r[:2] for r in slurm] == [r[:2] for r in local]
    for mine, theirs in zip(slurm, local, strict=True):  # threads may reorder float sums
        assert mine[2:] == pytest.approx(theirs[2:], rel=1e-6)
    devices = Store(tmp_path / "slurm").query("SELECT DISTINCT device, host FROM runs")
    assert list(devices["device"]) == ["cpu"]


def test_a_job_that_dies_is_resubmitted_then_fails_its_task(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    grid = {"data.mixture": ["ring8", "grid25"], "sampler.timesteps.num_steps": [2]}
    space = toy_space(tmp_path, "dies", grid, seeds="0-3")
    store = Store(tmp_path / "r")
    trainer = FakeTrainer(log=str(tmp_path / "log"), die="grid25")
    executor: Any = make_executor("slurm", settings=SlurmSettings(max_retries=1))
    summary = run_space(space, store, executor=executor, trainer=trainer)
    assert summary.counts["done"] == 1 + 1 and summary.counts["failed"] == 1 + 1
    died = store.query("SELECT * FROM trainings WHERE status = 'failed'")
    assert list(died["error_type"]) == ["SlurmJobFailed"]
    assert "2 attempts" in died["error"][0]
    keys = trainer.trainings()
    assert len(keys) == 3 and len(set(keys)) == 2  # the dying training ran twice


def test_a_detached_run_is_followed_by_status_until_done(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    toy_space(tmp_path, "detached", {"sampler.timesteps.num_steps": [2, 3, 4]}, seeds="0-3")
    results = tmp_path / "r"
    proc = edmgrid_run(tmp_path / "detached.yaml", results, "-x", "slurm", "--detach")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert "as Slurm job" in out.decode()
    follow = edmgrid("status", "-r", results, "--wait")
    out, _ = follow.communicate(timeout=300)
    text = out.decode()
    assert follow.returncode == 0, text
    assert len(Store(results).query("SELECT * FROM runs WHERE status = 'done'")) == 3
    line = next(row for row in text.splitlines() if "detached" in row and "│" in row)
    cells = [c.strip() for c in line.split("│")[1:-1]]
    assert cells[:6] == ["detached", "3", "3", "0", "0", "0"], text
