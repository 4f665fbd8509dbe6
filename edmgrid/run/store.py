"""The results store: one Parquet file per job (written atomically), DuckDB views over them.

Layout under the results directory::

    runs/<job_id>.parquet      one row per evaluation job (done or failed); replaced on retry
    train/<key>.parquet        one row per training (keyed by the training config's hash)
    spaces/<space>.json        which jobs a space expanded to, and their replicate indices
    logs/<id>.txt              the traceback of a failed job or training
    claims/<id>.claim          which run is executing a job right now (see run/claims.py)
    cache/                     checkpoints, snapshots, training logs (engine/train.py),
                               reference solutions, statistics
    quarantine/                unreadable files moved out of the way, and ``quarantine.log``
    edmgrid.duckdb             views ``runs``, ``trainings``, ``train_log`` (a training's ticks)
                               and ``space_jobs`` (space, job_id, replicate_train,
                               replicate_eval); read with duckdb

Every file is written by ``atomic_write`` (a ``*.tmp`` sibling renamed over it), so a killed
process leaves at most a ``*.tmp`` file, which the next run removes. A file that cannot be read
all the same (truncated or overwritten on disk) is moved to ``quarantine/`` with a one-line
warning when it is read, and is then missing: its job or training runs again.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from edmgrid.errors import EdmgridError, InputError
from edmgrid.files import atomic_write, check_space_name, read_or_quarantine
from edmgrid.run.provenance import PACKAGE, code_fingerprint, hash_sources

#: Columns each view has even before a row sets them (NULL there): the keys, and the columns
#: the README's queries name (Table 2 labels, NFE, metrics, ``suspect``), so that a query of
#: ``family`` works before ``spaces/table2.yaml`` has run.
VIEW_COLUMNS = {
    "runs": {
        "job_id": "VARCHAR",
        "space": "VARCHAR",
        "status": "VARCHAR",
        "family": "VARCHAR",
        "config": "VARCHAR",
        "budget": "VARCHAR",
        "nfe": "DOUBLE",
        "ode_error": "DOUBLE",
        "fd_raw": "DOUBLE",
        "fd": "DOUBLE",
        "fid": "DOUBLE",
        "suspect": "VARCHAR",
    },
    "trainings": {"training_key": "VARCHAR", "space": "VARCHAR", "status": "VARCHAR"},
    "train_log": {"step": "BIGINT", "kimg": "DOUBLE", "loss": "DOUBLE"},
    "space_jobs": {
        "space": "VARCHAR",
        "job_id": "VARCHAR",
        "replicate_train": "INTEGER",
        "replicate_eval": "INTEGER",
    },
}

#: Statement types ``edmgrid sql`` runs (SELECT covers DESCRIBE, SHOW and SUMMARIZE);
#: everything else may write (COPY, ATTACH, PRAGMA settings, EXPLAIN ANALYZE runs its query).
READ_STATEMENTS = {"SELECT", "EXPLAIN"}

#: The columns of a space record the ``space_jobs`` view reads (records written before
#: replicates existed lack the replicate lists: their indices are NULL).
SPACE_RECORD_COLUMNS = (
    "{space: 'VARCHAR', jobs: 'VARCHAR[]', "
    "replicate_train: 'INTEGER[]', replicate_eval: 'INTEGER[]'}"
)


def space_fingerprint(text: bytes) -> str:
    """Hash of a space file's bytes and of edmgrid's own source code.

    Equal fingerprints expand to equal jobs, so a re-run can tell that it has nothing to do
    without expanding the space (which validates every job).
    """
    digest = hash_sources(hashlib.sha256(text), PACKAGE.rglob("*.py"))
    return str(digest.hexdigest()[:16])


def _checked(key: str) -> str:
    """A job id or training key: 16 hex digits (so it can never escape its folder)."""
    if not re.fullmatch(r"[0-9a-f]{16}", key):
        raise InputError(f"not a job id or training key: {key!r}")
    return key


def _write_row(path: Path, row: dict[str, Any]) -> None:
    import pandas as pd

    frame = pd.DataFrame([row])
    atomic_write(path, lambda tmp: frame.to_parquet(tmp))


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

    def _read(self, path: Path, columns: list[str] | None = None) -> dict[str, Any] | None:
        """The one row of ``path`` (only ``columns``), or None: missing, or unreadable and then
        quarantined."""
        import pyarrow.parquet as pq

        def read(file: Path) -> dict[str, Any]:
            rows = pq.read_table(file, columns=columns).to_pylist()
            if len(rows) != 1:
                raise ValueError(f"{len(rows)} rows, not one")
            return dict(rows[0])

        return read_or_quarantine(path, read, self.root)

    def status(self, job_id: str) -> str | None:
        """'done', 'failed', or None when the job has no result yet."""
        row = self._read(self.result_path(job_id), ["status"])
        return None if row is None else str(row["status"])

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        """{job id: 'done' | 'failed'} for the jobs that have a row."""
        return {job: str(row["status"]) for job, row in self._scan(job_ids, ["status"]).items()}

    def stale(self, job_ids: list[str], fingerprint: str) -> list[str]:
        """The done jobs among ``job_ids`` whose row other code computed: its
        ``code_fingerprint`` (``run/provenance.py``) is not ``fingerprint``, or it has none."""
        rows = self._scan(job_ids, ["status", "code_fingerprint"])
        return [
            job
            for job, row in rows.items()
            if row["status"] == "done" and row["code_fingerprint"] != fingerprint
        ]

    def _scan(self, job_ids: list[str], columns: list[str]) -> dict[str, dict[str, Any]]:
        """{job id: {column: value}} for the jobs that have a row, a column no row holds being
        None (one DuckDB scan; if DuckDB cannot read a file, the rows are read one by one and
        the unreadable ones quarantined)."""
        import duckdb

        paths = [p for p in map(self.result_path, job_ids) if p.exists()]
        if not paths:
            return {}
        stub = ", ".join(f"NULL AS {c}" for c in columns)
        sql = (
            f"SELECT job_id, {', '.join(columns)} FROM (SELECT * FROM read_parquet(?, "
            f"union_by_name = true) UNION ALL BY NAME SELECT {stub} WHERE false)"
        )
        try:
            with duckdb.connect() as con:
                found = con.execute(sql, [[p.as_posix() for p in paths]]).fetchall()
        except duckdb.Error:
            read = {p.stem: self._read(p) for p in paths}
            return {
                job: {c: row.get(c) for c in columns}
                for job, row in read.items()
                if row is not None
            }
        return {str(job): dict(zip(columns, values, strict=True)) for job, *values in found}

    def training_status(self, key: str) -> str | None:
        """'done', 'failed', or None when the training has no row yet."""
        row = self._read(self.training_path(key), ["status"])
        return None if row is None else str(row["status"])

    def row(self, job_id: str) -> dict[str, Any] | None:
        """The job's row, or None."""
        return self._read(self.result_path(job_id))

    def training_row(self, key: str) -> dict[str, Any] | None:
        """The training's row, or None."""
        return self._read(self.training_path(key))

    def has_checkpoint(self, path: Path) -> bool:
        """Whether the checkpoint ``path`` exists and is a whole zip archive (``torch.save``'s
        format; only its directory is read). A damaged one is quarantined: it is trained again."""

        def whole(file: Path) -> bool:
            with zipfile.ZipFile(file):
                return True

        return read_or_quarantine(path, whole, self.root) is not None

    def job_ids(self) -> list[str]:
        """The ids of every job with a stored row."""
        return sorted(p.stem for p in self.runs.glob("*.parquet"))

    def config(self, job_id: str) -> dict[str, Any]:
        """The resolved job config stored in a job's row (to re-create the job)."""
        row = self._read(self.result_path(job_id), ["config_json"])
        if row is None:
            raise InputError(f"no result for job {job_id} in {self.root}")
        return dict(json.loads(row["config_json"]))

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
            raise InputError(str(e), path="space") from None
        return self.root / "spaces" / f"{name}.json"

    def record_space(
        self,
        name: str,
        source: str,
        job_ids: list[str],
        fingerprint: str | None = None,
        replicates: dict[str, tuple[int, int]] | None = None,
        digest: str | None = None,
    ) -> None:
        """Which jobs the space expanded to (``fingerprint``: see ``space_fingerprint``), with
        their (train, eval) replicate indices and the ``digest`` of the space file's text.

        A name is one space: recording it from another file with other content is an
        InputError naming both files (the same file edited, or a copy, records over it).
        """
        old = self.space_record(name) or {}
        moved = old and Path(old["source"]).resolve() != Path(source).resolve()
        if moved and digest is not None and old.get("digest") not in (None, digest):
            raise InputError(
                f"space name {name!r} is already recorded in {self.root} from "
                f"{old['source']}, with other content; rename one of them or use another "
                "--results",
                file=source,
                path="name",
            )
        indices = [(replicates or {}).get(job, (0, 0)) for job in job_ids]
        record = {
            "space": name,
            "source": source,
            "jobs": job_ids,
            "replicate_train": [train for train, _ in indices],
            "replicate_eval": [evaluation for _, evaluation in indices],
            "fingerprint": fingerprint,
            "digest": digest,
        }
        body = json.dumps(record, indent=1)
        atomic_write(self.space_path(name), lambda tmp: tmp.write_text(body))

    def space_record(self, name: str) -> dict[str, Any] | None:
        """What ``record_space`` recorded for space ``name``, or None (an unreadable record is
        quarantined)."""
        return read_or_quarantine(self.space_path(name), _space_record, self.root)

    def finished(self, name: str, fingerprint: str) -> list[str] | None:
        """The job ids of space ``name`` when it was recorded with ``fingerprint`` and every
        one of them is done by the current code (``Store.stale``); else None. Needs neither
        torch nor the space's expansion."""
        try:
            record = self.space_record(name)
        except InputError:
            return None
        if record is None or record.get("fingerprint") != fingerprint:
            return None
        jobs: list[str] = record["jobs"]
        rows = self._scan(jobs, ["status", "code_fingerprint"])
        current = {"status": "done", "code_fingerprint": code_fingerprint()}
        return jobs if all(rows.get(job) == current for job in jobs) else None

    def check_files(self) -> int:
        """Read every row and space record in full and quarantine the unreadable ones; returns
        how many were. (DuckDB reads a file when a query needs it, and one bad file fails the
        whole query, so this runs when a query over the files fails.)"""
        import pyarrow.parquet as pq

        bad = 0
        for path in [*self.runs.glob("*.parquet"), *self.train.glob("*.parquet")]:
            bad += self._read(path) is None
        for path in (self.cache / "train_log").glob("*.parquet"):  # many rows each
            bad += read_or_quarantine(path, pq.read_table, self.root) is None
        for path in (self.root / "spaces").glob("*.json"):
            bad += read_or_quarantine(path, _space_record, self.root) is None
        return bad

    def _views(self, temp: bool) -> list[str]:
        """The statements that make the views ``runs``, ``trainings``, ``train_log`` and
        ``space_jobs``.

        Each view has at least its ``VIEW_COLUMNS`` (NULL where no row sets them), and a view
        without files is empty. In the DuckDB file the files are named relative to the
        results directory (a reader opens it from there, or sets ``file_search_path``), so
        the folder can be moved; the temporary views of ``query`` name them absolutely.
        """
        kind = "TEMP VIEW" if temp else "VIEW"
        prefix = self.root.resolve().as_posix().replace("'", "''") + "/" if temp else ""
        sources = {
            "runs": ("runs", "*.parquet", "SELECT * FROM read_parquet('{}', union_by_name = true)"),
            "trainings": (
                "train",
                "*.parquet",
                "SELECT * FROM read_parquet('{}', union_by_name = true)",
            ),
            "train_log": (  # engine.train's rows, one per tick
                "cache/train_log",
                "*.parquet",
                "SELECT * FROM read_parquet('{}', union_by_name = true)",
            ),
            "space_jobs": (
                "spaces",
                "*.json",
                "SELECT space, unnest(jobs) AS job_id, unnest(replicate_train) AS replicate_train, "
                "unnest(replicate_eval) AS replicate_eval "
                f"FROM read_json('{{}}', columns = {SPACE_RECORD_COLUMNS})",
            ),
        }
        stmts = []
        for view, (folder, pattern, select) in sources.items():
            columns = ", ".join(f"NULL::{t} AS {c}" for c, t in VIEW_COLUMNS[view].items())
            empty = f"SELECT {columns} WHERE false"
            if list((self.root / folder).glob(pattern)):
                files = f"{prefix}{folder}/{pattern}"
                body = f"{select.replace('{}', files)} UNION ALL BY NAME {empty}"
            else:
                body = empty
            stmts.append(f"CREATE OR REPLACE {kind} {view} AS {body}")
        return stmts

    def _create_views(self, con: Any, temp: bool) -> None:
        """Create the views on connection ``con``; when DuckDB cannot read a file (it reads
        every footer here), the unreadable files are quarantined and the views made again."""
        import duckdb

        try:
            for stmt in self._views(temp):
                con.execute(stmt)
        except duckdb.Error:
            if not self.check_files():
                raise
            self._create_views(con, temp)

    def refresh_db(self) -> None:
        """(Re)build the DuckDB file's views; only driver processes call this.

        The database is built in a new file renamed over the old one: a reader, or a refresh
        killed midway, never sees a partial database, and a damaged file is simply replaced.
        The views glob the Parquet files, so they stay current as rows are added.
        """
        import duckdb

        if not list(self.runs.glob("*.parquet")):
            return

        def build(tmp: Path) -> None:
            tmp.unlink()  # DuckDB creates the file itself
            with duckdb.connect(str(tmp)) as con:  # views bind their relative paths here
                con.execute("SET file_search_path = ?", [self.root.resolve().as_posix()])
                self._create_views(con, temp=False)

        atomic_write(self.db_path, build)

    def query(self, sql: str) -> Any:
        """Run a read-only query; returns a pandas DataFrame.

        It runs on an in-memory database with views over the files (not on the DuckDB file,
        which another client may hold open); when a file fails the query, the unreadable files
        are quarantined and the query runs again.
        """
        import duckdb

        if not list(self.runs.glob("*.parquet")):
            raise EdmgridError(f"no results in {self.root}: run `edmgrid run SPACE` first")
        with duckdb.connect() as con:
            self._create_views(con, temp=True)
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as e:
                raise InputError(f"SQL error: {e}") from None
            for statement in statements:
                kind = str(statement.type).rsplit(".", 1)[-1]
                if kind == "EXPLAIN" and re.search(r"\bANALY[SZ]E\b", statement.query, re.I):
                    kind = "EXPLAIN ANALYZE"
                if kind not in READ_STATEMENTS:
                    raise InputError(
                        f"edmgrid sql is read-only: {kind} statements are refused "
                        "(query with SELECT; the store is written by `edmgrid run`)"
                    )
            try:
                return con.sql(sql).df()
            except (
                duckdb.ParserException,
                duckdb.BinderException,
                duckdb.CatalogException,
                duckdb.ConversionException,
            ) as e:  # the query's own fault: no file is read again
                hint = ""
                if isinstance(e, duckdb.BinderException) and "not found" in str(e):
                    hint = (
                        " (a view has the columns of its stored rows: list them with "
                        "DESCRIBE runs, DESCRIBE trainings)"
                    )
                said = " ".join(str(e).split())  # one line
                raise InputError(f"SQL error: {said}{hint}") from None
            except duckdb.Error as e:
                error = e
        if self.check_files():
            return self.query(sql)
        raise InputError(f"SQL error: {error}")


def _space_record(path: Path) -> dict[str, Any]:
    """A space record (``Store.record_space``): a JSON object with a list of job ids."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not isinstance(record.get("jobs"), list):
        raise ValueError("not a space record (an object with a 'jobs' list)")
    return record
