"""Unreadable files in the store (truncated, overwritten with garbage) are detected when read,
moved to ``quarantine/`` with a one-line warning, and are then missing: their jobs and
trainings run again and no later command fails on them (issue #8)."""

from __future__ import annotations

import random
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch
from fake_training import FakeTrainer, toy_space

from edmgrid.config.job import JobSpec
from edmgrid.engine.data import load_data
from edmgrid.engine.train import checkpoint_path, load_trained, training_key
from edmgrid.files import quarantine
from edmgrid.run.executors import SerialExecutor
from edmgrid.run.runner import run_space
from edmgrid.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = [f"{i:016x}" for i in range(3)]


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garbage(data: bytes) -> bytes:
    return random.Random(0).randbytes(len(data))


def empty(data: bytes) -> bytes:
    return b""


def bad_page(data: bytes) -> bytes:
    """The first column's data page overwritten: header and footer intact."""
    return data[:4] + random.Random(0).randbytes(26) + data[30:]


def damage(path: Path, how: Callable[[bytes], bytes]) -> None:
    path.write_bytes(how(path.read_bytes()))


def three_rows(root: Path) -> Store:
    store = Store(root)
    for job in IDS:
        store.write({"job_id": job, "status": "done", "x": 1.0, "created_at": datetime.now(UTC)})
    store.record_space("s", "s.yaml", IDS)
    store.refresh_db()
    return store


def quarantined(root: Path) -> set[str]:
    """The files under ``root/quarantine``, by their path there."""
    folder = root / "quarantine"
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("how", [truncated, garbage, empty, bad_page])
def test_an_unreadable_row_is_quarantined_and_the_others_are_queried(
    tmp_path: Path, how: Callable[[bytes], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    store = three_rows(tmp_path)
    bad = store.result_path(IDS[1])
    damage(bad, how)
    assert store.query("SELECT job_id FROM runs ORDER BY 1")["job_id"].tolist() == [
        IDS[0],
        IDS[2],
    ]
    assert quarantined(tmp_path) == {f"runs/{bad.name}", "quarantine.log"}
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: quarantined {bad}: ")
    assert warning.endswith(f"(moved to {tmp_path / 'quarantine' / 'runs' / bad.name})")
    assert (tmp_path / "quarantine" / "quarantine.log").read_text().count("quarantined") == 1
    assert store.status(IDS[1]) is None  # missing now: its job runs again


@pytest.mark.parametrize("how", [truncated, garbage, empty])
def test_status_reads_quarantine_a_row_they_cannot_read(
    tmp_path: Path, how: Callable[[bytes], bytes]
) -> None:
    store = three_rows(tmp_path)
    damage(store.result_path(IDS[0]), how)
    damage(store.result_path(IDS[1]), how)
    assert store.statuses(IDS) == {IDS[2]: "done"}
    assert store.row(IDS[0]) is None and store.status(IDS[1]) is None
    assert quarantined(tmp_path) == {*(f"runs/{i}.parquet" for i in IDS[:2]), "quarantine.log"}


def test_a_training_row_and_a_space_record_that_cannot_be_read_are_quarantined(
    tmp_path: Path,
) -> None:
    store = three_rows(tmp_path)
    key = "00000000000000aa"
    store.write_training({"training_key": key, "status": "done"})
    damage(store.training_path(key), garbage)
    damage(store.space_path("s"), truncated)
    assert store.query("SELECT count(*) AS n FROM runs")["n"].item() == 3
    assert quarantined(tmp_path) == {"quarantine.log", "spaces/s.json", f"train/{key}.parquet"}
    assert store.training_status(key) is None and store.space_record("s") is None


def test_a_damaged_database_file_is_rebuilt_and_sql_never_needs_it(tmp_path: Path) -> None:
    store = three_rows(tmp_path)
    damage(store.db_path, truncated)
    assert store.query("SELECT count(*) AS n FROM runs")["n"].item() == 3
    store.refresh_db()
    with duckdb.connect(str(store.db_path), read_only=True) as con:
        con.execute("SET file_search_path = ?", [str(store.root)])  # its paths are relative
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (3,)


def test_a_file_replaced_since_it_was_read_is_not_quarantined(tmp_path: Path) -> None:
    store = three_rows(tmp_path)
    path = store.result_path(IDS[0])
    seen = path.stat()
    store.write({"job_id": IDS[0], "status": "failed"})  # a concurrent rewrite
    quarantine(path, tmp_path, "unreadable", seen)
    assert path.exists() and store.status(IDS[0]) == "failed"
    assert not (tmp_path / "quarantine").exists()


def test_a_file_quarantined_twice_keeps_both_copies(tmp_path: Path) -> None:
    store = three_rows(tmp_path)
    for _ in range(2):
        store.write({"job_id": IDS[0], "status": "done"})
        damage(store.result_path(IDS[0]), garbage)
        assert store.status(IDS[0]) is None
    assert quarantined(tmp_path) == {
        f"runs/{IDS[0]}.parquet",
        f"runs/{IDS[0]}.parquet.1",
        "quarantine.log",
    }


def test_damaged_rows_are_reported_rerun_and_sql_and_compare_work(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    space = toy_space(tmp_path, "q", {"sampler.timesteps.num_steps": [2, 3, 4]}, seeds="0-7")
    results = tmp_path / "results"
    run = ["run", space.source, "-r", results, "-x", "serial"]
    assert cli(*run).code == 0
    first, second = (Store(results).result_path(j.job_id) for j in space.jobs[:2])
    damage(first, truncated)
    again = cli(*run)  # the no-op check reads the statuses and finds the damaged row
    assert again.code == 0 and f"warning: quarantined {first}" in again.err
    assert "│ 1    │ 2       │ 0" in again.out  # done, skipped, failed
    damage(second, garbage)
    sql = cli("sql", "SELECT count(*) AS n FROM runs", "-r", results, "--format", "csv")
    assert sql.code == 0 and sql.out == "n\n2\n" and f"quarantined {second}" in sql.err
    compare = cli("compare", "-r", results, "--space", "q", "--value", "fd_raw", "--format", "csv")
    assert compare.code == 0 and compare.out.count("\n") == 3  # header and two steps
    assert "│ 1    │ 2       │ 0" in cli(*run).out
    assert cli("sql", "SELECT count(*) AS n FROM runs", "-r", results).code == 0
    assert len(quarantined(results)) == 3  # two rows and the log


def test_a_truncated_checkpoint_is_quarantined_and_trained_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, trainer = Store(tmp_path / "r"), FakeTrainer(log=str(tmp_path / "log"))
    space = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2, 3]})
    run_space(space, store, executor=SerialExecutor(), trainer=trainer)
    (key,) = trainer.trainings()
    checkpoint = trainer.checkpoint(store.cache, key)
    damage(checkpoint, truncated)
    more = toy_space(tmp_path, "a", {"sampler.timesteps.num_steps": [2, 3, 4]})
    summary = run_space(more, store, executor=SerialExecutor(), trainer=trainer)
    assert summary.ok and summary.counts["done"] == 1 + 1 and trainer.trainings() == [key, key]
    assert f"quarantined {checkpoint}: BadZipFile" in capsys.readouterr().err
    assert quarantined(store.root) == {f"cache/checkpoints/{key}.pt", "quarantine.log"}
    assert torch.load(checkpoint, weights_only=True)["weights"].shape == (4,)


def test_a_checkpoint_that_fails_to_load_is_quarantined_and_trained_again(
    tmp_path: Path,
) -> None:
    model = {
        "kind": "trained",
        "network": {"arch": "mlp", "hidden": 8, "depth": 1},
        "training": {"duration_kimg": 0.032, "batch_size": 16},
    }
    job = JobSpec.model_validate(
        {"data": {"name": "toy2d", "n": 64}, "model": model, "metrics": [{"name": "fd_raw"}]}
    )
    cache = tmp_path / "cache"
    key = training_key(job)
    assert key is not None
    path = checkpoint_path(cache, key)
    load_trained(job, load_data(job.data), cache)  # trains it
    good = torch.load(path, weights_only=True)["ema"]
    with zipfile.ZipFile(path) as archive:  # overwrite the pickle: the zip stays whole
        (pickle,) = [i for i in archive.infolist() if i.filename.endswith("data.pkl")]
    start = pickle.header_offset + 30 + len(pickle.filename.encode()) + len(pickle.extra)
    data = bytearray(path.read_bytes())
    data[start : start + pickle.compress_size] = bytes(pickle.compress_size)
    path.write_bytes(bytes(data))
    assert Store(tmp_path).has_checkpoint(path)  # the cheap check cannot tell
    assert load_trained(job, load_data(job.data), cache) is not None
    assert quarantined(tmp_path) == {f"cache/checkpoints/{key}.pt", "quarantine.log"}
    again = torch.load(path, weights_only=True)["ema"]  # trained again, deterministically
    assert all(torch.equal(good[k], again[k]) for k in good)
