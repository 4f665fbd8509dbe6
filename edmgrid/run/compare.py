"""Pivot tables over the store (``edmgrid compare``)."""

from __future__ import annotations

from typing import Any

from edmgrid.errors import InputError
from edmgrid.run.store import Store

#: Columns that must agree for FIDs to sit side by side (issue #6): sample count and detector.
FID_PROTOCOL_COLUMNS = ("fid_n", "fid_extractor")


def load_runs(store: Store, space: str | None) -> Any:
    """The done rows, restricted to a space's jobs when ``space`` is given."""
    query = "SELECT * FROM runs WHERE status = 'done'"
    if space is not None:
        recorded = store.space_path(space)
        if not recorded.exists():
            known = ", ".join(sorted(p.stem for p in recorded.parent.glob("*.json")))
            raise InputError(
                f"no space named {space!r} in {store.root}; recorded: {known or 'none'}"
            )
        query += f" AND job_id IN (SELECT job_id FROM space_jobs WHERE space = '{space}')"
    return store.query(query)


def check_columns(frame: Any, columns: list[str]) -> None:
    """A InputError naming the columns ``frame`` lacks, and the ones it has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        valid = ", ".join(sorted(frame.columns))
        raise InputError(f"unknown column(s) {', '.join(missing)}; columns: {valid}")


def check_comparable(frame: Any, value: str) -> None:
    """Refuse FIDs taken with different n or feature extractors in one table or plot."""
    if value != "fid":
        return
    rows = frame[frame[value].notna()]
    for column in FID_PROTOCOL_COLUMNS:
        if column in rows.columns and rows[column].nunique() > 1:
            seen = ", ".join(sorted(map(str, rows[column].dropna().unique())))
            raise InputError(
                f"these rows hold FIDs with different {column} ({seen}), which are not "
                "comparable side by side; select like rows (e.g. --space) or pass --allow-mixed"
            )


def pivot(
    store: Store,
    space: str | None,
    rows: list[str],
    cols: list[str],
    value: str,
    allow_mixed: bool = False,
) -> Any:
    """ROWS × COLS → VALUE (the mean if several jobs share a cell).

    When every column has one NFE, it is appended as a last row ``NFE``, as in Table 2.
    """
    frame = load_runs(store, space)
    check_columns(frame, [*rows, *cols, value])
    if not allow_mixed:
        check_comparable(frame, value)
    keys = [*rows, *cols]
    frame[keys] = frame[keys].astype(object).where(frame[keys].notna(), "default")
    table = frame.pivot_table(index=rows, columns=cols, values=value, aggfunc="mean")
    if "nfe" in frame.columns and "nfe" not in [value, *rows, *cols] and len(rows) == 1:
        nfe = frame.pivot_table(index=rows, columns=cols, values="nfe", aggfunc=["min", "max"])
        lo, hi = nfe["min"].min(), nfe["max"].max()
        if (lo == hi).all():
            table.loc["NFE"] = lo
    table.columns = [
        "/".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns
    ]
    return table.reset_index()
