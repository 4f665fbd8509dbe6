"""The results store: one Parquet file per job (written atomically), DuckDB views over them.

Layout under the results directory::

    runs/<job_id>.parquet      one row per job (done or failed); replaced atomically on retry
    spaces/<space>.json        which jobs a space expanded to
    logs/<job_id>.txt          the traceback of a failed job
    cache/                     checkpoints, reference solutions, statistics
    edmgrid.duckdb             views ``runs`` and ``space_jobs`` (read it with duckdb)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
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


class Store:
    """A results directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.cache = self.root / "cache"
        self.logs = self.root / "logs"
        self.db_path = self.root / "edmgrid.duckdb"

    def result_path(self, job_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16}", job_id):
            raise SpecError(f"not a job id: {job_id!r}")
        return self.runs / f"{job_id}.parquet"

    def status(self, job_id: str) -> str | None:
        """'done', 'failed', or None when the job has no result yet."""
        import pyarrow.parquet as pq

        path = self.result_path(job_id)
        if not path.exists():
            return None
        return str(pq.read_table(path, columns=["status"]).column(0)[0])

    def row(self, job_id: str) -> dict[str, Any] | None:
        """The stored row of a job, or None when it has no result yet."""
        import pandas as pd

        path = self.result_path(job_id)
        if not path.exists():
            return None
        return {str(k): v for k, v in pd.read_parquet(path).iloc[0].items()}

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
        import pandas as pd

        frame = pd.DataFrame([row])
        atomic_write(self.result_path(row["job_id"]), lambda tmp: frame.to_parquet(tmp))

    def space_path(self, name: str) -> Path:
        """Where a space's job list is recorded; names that could leave the store are refused."""
        try:
            check_space_name(name)
        except ValueError as e:
            raise SpecError(str(e), path="space") from None
        return self.root / "spaces" / f"{name}.json"

    def record_space(self, name: str, source: str, job_ids: list[str]) -> None:
        body = json.dumps({"space": name, "source": source, "jobs": job_ids}, indent=1)
        atomic_write(self.space_path(name), lambda tmp: tmp.write_text(body))

    def _views(self, temp: bool) -> list[str]:
        kind = "TEMP VIEW" if temp else "VIEW"
        runs = (self.runs / "*.parquet").resolve().as_posix()
        spaces = (self.root / "spaces" / "*.json").resolve().as_posix()
        stmts = [
            f"CREATE OR REPLACE {kind} runs AS "
            f"SELECT * FROM read_parquet('{runs}', union_by_name = true)"
        ]
        if list((self.root / "spaces").glob("*.json")):
            stmts.append(
                f"CREATE OR REPLACE {kind} space_jobs AS SELECT space, unnest(jobs) AS job_id "
                f"FROM read_json('{spaces}', format = 'auto')"
            )
        return stmts

    def refresh_db(self) -> None:
        """(Re)write the DuckDB file's views; only the driver process calls this."""
        import duckdb

        if not list(self.runs.glob("*.parquet")):
            return
        with duckdb.connect(str(self.db_path)) as con:
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
