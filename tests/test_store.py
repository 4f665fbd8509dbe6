"""The results store: Parquet rows through DuckDB views, names that cannot leave the store,
read-only SQL, and checkpoints that load without running code (issues #2 and #8)."""

from __future__ import annotations

import ast
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from edmgrid.engine.evaluate import cached_tensor
from edmgrid.errors import EdmgridError, InputError
from edmgrid.run.compare import load_runs
from edmgrid.run.store import Store

PACKAGE = Path(__file__).resolve().parents[1] / "edmgrid"


def row(job_id: str, status: str = "done", **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "space": "s",
        "status": status,
        "solver": "heun",
        "timesteps_num_steps": 18,
        "ode_error": 0.25,
        "created_at": datetime(2024, 1, 2, tzinfo=UTC),
        **extra,
    }


def make_store(root: Path, db: bool = True) -> Store:
    """Two rows (one done, one failed) of space 's'; with or without the DuckDB file."""
    store = Store(root)
    store.write(row("0123456789abcdef"))
    store.write(row("fedcba9876543210", status="failed", ode_error=None, error="boom"))
    store.record_space("s", "s.yaml", ["0123456789abcdef", "fedcba9876543210"])
    if db:
        store.refresh_db()
    return store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A store a test may change."""
    return make_store(tmp_path / "results")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Store]:
    """Stores that tests only read: 'db' has the DuckDB file, 'no-db' only the Parquet rows."""
    root = tmp_path_factory.mktemp("stores")
    return {"db": make_store(root / "db"), "no-db": make_store(root / "no-db", db=False)}


@pytest.fixture
def shared(stores: dict[str, Store]) -> Store:
    return stores["db"]


def test_rows_round_trip_through_the_duckdb_views(shared: Store) -> None:
    frame = shared.query("SELECT * FROM runs ORDER BY job_id")
    assert frame["job_id"].tolist() == ["0123456789abcdef", "fedcba9876543210"]
    assert frame["status"].tolist() == ["done", "failed"]
    assert frame["ode_error"].iloc[0] == 0.25
    assert frame["timesteps_num_steps"].tolist() == [18, 18]
    assert frame["error"].iloc[1] == "boom"  # columns of any row are in the view
    jobs = shared.query("SELECT job_id FROM space_jobs WHERE space = 's' ORDER BY job_id")
    assert jobs["job_id"].tolist() == frame["job_id"].tolist()


def test_the_database_file_holds_views_other_duckdb_clients_can_read_after_a_move(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import duckdb

    moved = tmp_path / "elsewhere" / "copied results"
    moved.parent.mkdir()
    store.root.rename(moved)
    monkeypatch.chdir(moved)  # the README's recipe: open it from the results directory
    with duckdb.connect("edmgrid.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM space_jobs").fetchone() == (2,)
    monkeypatch.chdir(tmp_path)  # or from anywhere, with the folder as file_search_path
    with duckdb.connect(str(moved / "edmgrid.duckdb"), read_only=True) as con:
        con.execute("SET file_search_path = ?", [str(moved)])
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    assert Store(moved).query("SELECT count(*) AS n FROM runs")["n"].item() == 2


def test_views_have_their_documented_columns_before_any_row_sets_them(shared: Store) -> None:
    # no row of the store is a Table 2 job or has a training: the columns and views exist
    frame = shared.query("SELECT family, config, fd, nfe, suspect FROM runs ORDER BY job_id")
    assert len(frame) == 2 and frame.isna().all().all()
    assert shared.query("SELECT count(*) AS n FROM trainings")["n"].item() == 0
    assert list(shared.query("SELECT * FROM trainings").columns) == [
        "training_key",
        "space",
        "status",
    ]


def test_status_is_done_failed_or_none(shared: Store) -> None:
    assert shared.status("0123456789abcdef") == "done"
    assert shared.status("fedcba9876543210") == "failed"
    assert shared.status("00000000000000aa") is None


def test_a_rewritten_row_replaces_the_old_one(store: Store) -> None:
    store.write(row("fedcba9876543210", status="done"))
    assert store.status("fedcba9876543210") == "done"
    assert store.query("SELECT count(*) AS n FROM runs")["n"].item() == 2


def test_writes_leave_no_temporary_files(shared: Store) -> None:
    assert sorted(p.name for p in shared.runs.iterdir()) == [
        "0123456789abcdef.parquet",
        "fedcba9876543210.parquet",
    ]


@pytest.mark.parametrize(
    "job_id", ["../../etc/passwd", "/tmp/x", "0123456789ABCDEF", "0123", "0123456789abcdeg", ""]
)
def test_result_paths_take_only_job_ids(shared: Store, job_id: str) -> None:
    with pytest.raises(InputError, match="not a job id"):
        shared.result_path(job_id)


@pytest.mark.parametrize(
    "name", ["../x", "..", ".hidden", "/abs", "a/b", "a\\b", "x'y", "", "a" * 101]
)
def test_space_names_cannot_leave_the_store(shared: Store, name: str) -> None:
    with pytest.raises(InputError, match="not a space name"):
        shared.record_space(name, "x.yaml", [])
    with pytest.raises(InputError, match="not a space name"):
        load_runs(shared, name)


def test_compare_of_an_unknown_space_lists_the_recorded_ones(shared: Store) -> None:
    with pytest.raises(InputError, match="recorded: s"):
        load_runs(shared, "other")


def test_sql_runs_selects(shared: Store) -> None:
    frame = shared.query("SELECT solver, count(*) AS n FROM runs GROUP BY solver")
    assert frame.to_dict("records") == [{"solver": "heun", "n": 2}]
    assert "job_id" in shared.query("DESCRIBE runs")["column_name"].tolist()


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO runs VALUES (1)",
        "COPY (SELECT 1) TO '{out}'",
        "ATTACH '{out}' AS other",
        "DROP VIEW runs",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}'",
        "SELECT 1; COPY (SELECT 1) TO '{out}'",
        "PRAGMA enable_profiling",
        "SET threads = 1",
        "INSTALL httpfs",
        "EXPORT DATABASE '{out}'",
    ],
)
@pytest.mark.parametrize("kind", ["db", "no-db"])
def test_sql_refuses_statements_that_may_write(
    stores: dict[str, Store], tmp_path: Path, sql: str, kind: str
) -> None:
    store = stores[kind]
    before = store.db_path.read_bytes() if store.db_path.exists() else None
    out = tmp_path / "written"
    with pytest.raises(InputError, match="read-only"):
        store.query(sql.format(out=out))
    assert not out.exists()
    assert (store.db_path.read_bytes() if store.db_path.exists() else None) == before


def test_sql_error_is_a_spec_error(shared: Store) -> None:
    with pytest.raises(InputError, match="SQL error"):
        shared.query("SELECT nope FROM runs")


def test_sql_on_an_empty_store_says_to_run_first(tmp_path: Path) -> None:
    with pytest.raises(EdmgridError, match="edmgrid run"):
        Store(tmp_path / "empty").query("SELECT 1")


class _Payload:
    """A pickle that would create a file if it were ever unpickled with ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_cached_tensor_load_without_running_code(tmp_path: Path) -> None:
    key, cache = {"k": 1}, tmp_path / "cache"
    fresh = cached_tensor(cache, key, lambda: torch.arange(3.0))
    assert cached_tensor(cache, key, lambda: torch.zeros(3)).tolist() == fresh.tolist()
    (path,) = (cache / "tensors").glob("*.pt")
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), path)  # a tampered cache file: refused, quarantined, made again
    assert cached_tensor(cache, key, lambda: torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    assert not marker.exists()
    assert (tmp_path / "quarantine" / "cache" / "tensors" / path.name).exists()


def _calls(tree: ast.AST, module: str, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
    ]


def test_every_torch_load_is_weights_only_and_pickle_is_read_only_where_the_user_names_it() -> None:
    # Unrestricted pickle.load reads only files the user named: the NVlabs Inception detector
    # (fid.py) and official EDM network pickles (models.py); CIFAR-10 batches go through a
    # restricted Unpickler.
    allowed_pickle = {"engine/fid.py", "engine/models.py"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        where = path.relative_to(PACKAGE).as_posix()
        for call in _calls(tree, "torch", "load"):
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant), where
            assert flags["weights_only"].value is True, where
        for name in ("load", "loads"):
            if _calls(tree, "pickle", name):
                assert where in allowed_pickle, f"{where} calls pickle.{name}"


@pytest.mark.parametrize("mask", [0o022, 0o002], ids=["022", "002"])
def test_every_file_and_folder_of_a_store_follows_the_umask(tmp_path: Path, mask: int) -> None:
    """022: colleagues can read the store; 002: the group can also write (and run) in it."""
    from edmgrid.files import file_lock
    from edmgrid.run.claims import Claims, active_run

    old = os.umask(mask)
    try:
        store = make_store(tmp_path / "results")  # rows, a space record, the DuckDB file
        cached_tensor(store.cache, {"k": 1}, lambda: torch.arange(3.0))  # torch.save + lock
        with active_run(store.root), Claims(store.root) as claims:
            assert claims.acquire("0123456789abcdef")
            with file_lock(store.root / "some.lock"):
                modes = {
                    p.relative_to(store.root).as_posix(): (p.is_dir(), p.stat().st_mode & 0o777)
                    for p in store.root.rglob("*")
                }
    finally:
        os.umask(old)
    assert set(modes) >= {
        "edmgrid.duckdb",
        "runs/0123456789abcdef.parquet",
        "spaces/s.json",
        "cache/tensors",
        "claims/0123456789abcdef.claim",
        ".active",
        "some.lock",
    }
    wanted = {
        name: (folder, (0o777 if folder else 0o666) & ~mask) for name, (folder, _) in modes.items()
    }
    assert modes == wanted


def test_space_jobs_view_carries_replicate_indices_and_old_records_read_as_null(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path / "r", db=False)
    ids = ["0123456789abcdef", "fedcba9876543210"]
    store.record_space("rep", "rep.yaml", ids, replicates={ids[1]: (2, 1)})
    old = json.dumps({"space": "old", "jobs": [ids[0]]})  # written before replicates existed
    (store.root / "spaces" / "old.json").write_text(old)
    frame = store.query(
        "SELECT space, job_id, replicate_train, replicate_eval FROM space_jobs "
        "WHERE space IN ('rep', 'old') ORDER BY space, job_id"
    )
    cells = frame.astype(object).where(frame.notna(), None).values.tolist()
    assert cells == [["old", ids[0], None, None], ["rep", ids[0], 0, 0], ["rep", ids[1], 2, 1]]


def test_a_space_name_recorded_from_another_file_with_other_content_is_refused(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    store.record_space("s", str(tmp_path / "a.yaml"), [], digest="1" * 16)
    store.record_space("s", str(tmp_path / "a.yaml"), [], digest="2" * 16)  # the file edited
    store.record_space("s", str(tmp_path / "copy.yaml"), [], digest="2" * 16)  # a copy
    with pytest.raises(InputError, match=r"'s' is already recorded .* from .*copy\.yaml") as e:
        store.record_space("s", str(tmp_path / "b.yaml"), [], digest="3" * 16)
    assert "b.yaml" in str(e.value)
    assert store.space_record("s")["digest"] == "2" * 16  # type: ignore[index]


def test_a_run_records_the_replicate_indices_of_its_jobs(tmp_path: Path) -> None:
    from edmgrid.config.space import load_space
    from edmgrid.run.runner import run_space

    space_file = tmp_path / "rep.yaml"
    space_file.write_text(
        "name: rep\nbase:\n  data: {name: toy2d, n: 16}\n  metrics: [{name: fd_raw}]\n"
        "  sampler: {timesteps: {name: edm, num_steps: 2}}\n  seeds: 0-3\n"
        "replicates: {eval: 2}\n"
    )
    store = Store(tmp_path / "r")
    assert run_space(load_space(space_file), store).ok
    frame = store.query(
        "SELECT seeds, replicate_eval FROM runs JOIN space_jobs USING (job_id) ORDER BY seeds"
    )
    assert frame.values.tolist() == [["0-3", 0], ["4-7", 1]]
