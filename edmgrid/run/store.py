"""The results store: one Parquet file per job (written atomically), DuckDB views over them.

Layout under the results directory::

    runs/<job_id>.parquet      one row per evaluation job (done or failed); replaced on retry
    train/<key>.parquet        one row per training (keyed by the training config's hash)
    spaces/<space>.json        which jobs a space expanded to
    logs/<id>.txt              the traceback of a failed job or training
    claims/<id>.claim          which run is executing a job right now (see run/claims.py)
    cache/                     checkpoints, reference solutions, statistics
    edmgrid.duckdb             views ``runs``, ``trainings`` and ``space_jobs`` (read with duckdb)

Every file is written by ``atomic_write`` (a ``*.tmp`` sibling renamed over it), so a killed
process leaves at most a ``*.tmp`` file, which the next run removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edmgrid.errors import EdmgridError, SpecError

#: Statement types ``edmgrid sql`` runs (SELECT covers DESCRIBE, SHOW and SUMMARIZE);
#: everything else may write (COPY, ATTACH, PRAGMA settings, EXPLAIN ANALYZE runs its query).
READ_STATEMENTS = {"SELECT", "EXPLAIN"}

#: Space names become file names under ``spaces/``: no separators, no leading dot.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
NAME_RULE = "1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"


def check_space_name(name: str) -> str:
    """``name`` if it is a valid space name, else a ValueError that states the rule."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{name!r} is not a space name: use {NAME_RULE}")
    return name


def atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)``, fsync, rename over ``path``: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def space_fingerprint(text: bytes) -> str:
    """Hash of a space file's bytes and of edmgrid's own source code.

    Equal fingerprints expand to equal jobs, so a re-run can tell that it has nothing to do
    without expanding the space (which imports torch).
    """
    digest = hashlib.sha256(text)
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _checked(key: str) -> str:
    """A job id or training key: 16 hex digits (so it can never escape its folder)."""
    if not re.fullmatch(r"[0-9a-f]{16}", key):
        raise SpecError(f"not a job id or training key: {key!r}")
    return key


def _status(path: Path) -> str | None:
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    return str(pq.read_table(path, columns=["status"]).column(0)[0])


def _read_row(path: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    return dict(pq.read_table(path).to_pylist()[0])


def _write_row(path: Path, row: dict[str, Any]) -> None:
    import pandas as pd

    frame = pd.DataFrame([row])
    atomic_write(path, lambda tmp: frame.to_parquet(tmp))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Store:
    """A results directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.train = self.root / "train"
        self.cache = self.root / "cache"
        self.logs = self.root / "logs"
        self.db_path = self.root / "edmgrid.duckdb"

    def result_path(self, job_id: str) -> Path:
        return self.runs / f"{_checked(job_id)}.parquet"

    def training_path(self, key: str) -> Path:
        return self.train / f"{_checked(key)}.parquet"

    def status(self, job_id: str) -> str | None:
        """'done', 'failed', or None when the job has no result yet."""
        return _status(self.result_path(job_id))

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        """{job id: 'done' | 'failed'} for the jobs that have a row (one DuckDB scan)."""
        import duckdb

        paths = [p.as_posix() for p in map(self.result_path, job_ids) if p.exists()]
        if not paths:
            return {}
        with duckdb.connect() as con:
            rows = con.execute(
                "SELECT job_id, status FROM read_parquet(?, union_by_name = true)", [paths]
            ).fetchall()
        return {str(job): str(status) for job, status in rows}

    def training_status(self, key: str) -> str | None:
        """'done', 'failed', or None when the training has no row yet."""
        return _status(self.training_path(key))

    def row(self, job_id: str) -> dict[str, Any] | None:
        """The job's row, or None."""
        return _read_row(self.result_path(job_id))

    def training_row(self, key: str) -> dict[str, Any] | None:
        """The training's row, or None."""
        return _read_row(self.training_path(key))

    def job_ids(self) -> list[str]:
        """The ids of every job with a stored row."""
        return sorted(p.stem for p in self.runs.glob("*.parquet"))

    def config(self, job_id: str) -> dict[str, Any]:
        """The resolved job config stored in a job's row (to re-create the job)."""
        import pyarrow.parquet as pq

        path = self.result_path(job_id)
        if not path.exists():
            raise SpecError(f"no result for job {job_id} in {self.root}")
        return dict(json.loads(pq.read_table(path, columns=["config_json"]).column(0)[0].as_py()))

    def write(self, row: dict[str, Any]) -> None:
        """Write an evaluation row (``job_id`` names the file)."""
        _write_row(self.result_path(row["job_id"]), row)

    def write_training(self, row: dict[str, Any]) -> None:
        """Write a training row (``training_key`` names the file)."""
        _write_row(self.training_path(row["training_key"]), row)

    def space_path(self, name: str) -> Path:
        """Where a space's job list is recorded; names that could leave the store are refused."""
        try:
            check_space_name(name)
        except ValueError as e:
            raise SpecError(str(e), path="space") from None
        return self.root / "spaces" / f"{name}.json"

    def record_space(
        self, name: str, source: str, job_ids: list[str], fingerprint: str | None = None
    ) -> None:
        """Which jobs the space expanded to (``fingerprint``: see ``space_fingerprint``)."""
        record = {"space": name, "source": source, "jobs": job_ids, "fingerprint": fingerprint}
        body = json.dumps(record, indent=1)
        atomic_write(self.space_path(name), lambda tmp: tmp.write_text(body))

    def finished(self, name: str, fingerprint: str) -> list[str] | None:
        """The job ids of space ``name`` when it was recorded with ``fingerprint`` and every
        one of them is done; else None. Needs neither torch nor the space's expansion."""
        try:
            record = json.loads(self.space_path(name).read_text())
        except (SpecError, OSError, ValueError):
            return None
        if record.get("fingerprint") != fingerprint:
            return None
        jobs: list[str] = record["jobs"]
        statuses = self.statuses(jobs)
        return jobs if all(statuses.get(job) == "done" for job in jobs) else None

    def _views(self, temp: bool) -> list[str]:
        kind = "TEMP VIEW" if temp else "VIEW"
        runs = (self.runs / "*.parquet").resolve().as_posix()
        train = (self.train / "*.parquet").resolve().as_posix()
        spaces = (self.root / "spaces" / "*.json").resolve().as_posix()
        stmts = [
            f"CREATE OR REPLACE {kind} runs AS "
            f"SELECT * FROM read_parquet('{runs}', union_by_name = true)"
        ]
        if list(self.train.glob("*.parquet")):
            stmts.append(
                f"CREATE OR REPLACE {kind} trainings AS "
                f"SELECT * FROM read_parquet('{train}', union_by_name = true)"
            )
        if list((self.root / "spaces").glob("*.json")):
            stmts.append(
                f"CREATE OR REPLACE {kind} space_jobs AS SELECT space, unnest(jobs) AS job_id "
                f"FROM read_json('{spaces}', format = 'auto')"
            )
        return stmts

    def refresh_db(self) -> None:
        """(Re)write the DuckDB file's views; only driver processes call this.

        The views glob the Parquet files, so they stay current as rows are added; when another
        process has the file open, this refresh is skipped rather than waited for.
        """
        import duckdb

        if not list(self.runs.glob("*.parquet")):
            return
        with (
            file_lock(self.root / ".db.lock"),
            contextlib.suppress(duckdb.IOException),
            duckdb.connect(str(self.db_path)) as con,
        ):
            for stmt in self._views(temp=False):
                con.execute(stmt)

    def query(self, sql: str) -> Any:
        """Run a read-only query; returns a pandas DataFrame."""
        import duckdb

        if not list(self.runs.glob("*.parquet")):
            raise EdmgridError(f"no results in {self.root}: run `edmgrid run SPACE` first")
        database = str(self.db_path) if self.db_path.exists() else ":memory:"
        with duckdb.connect(database, read_only=database != ":memory:") as con:
            for stmt in self._views(temp=True):
                con.execute(stmt)
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as e:
                raise SpecError(f"SQL error: {e}") from None
            for statement in statements:
                kind = str(statement.type).rsplit(".", 1)[-1]
                if kind == "EXPLAIN" and re.search(r"\bANALY[SZ]E\b", statement.query, re.I):
                    kind = "EXPLAIN ANALYZE"
                if kind not in READ_STATEMENTS:
                    raise SpecError(
                        f"edmgrid sql is read-only: {kind} statements are refused "
                        "(query with SELECT; the store is written by `edmgrid run`)"
                    )
            try:
                return con.sql(sql).df()
            except duckdb.Error as e:
                raise SpecError(f"SQL error: {e}") from None
