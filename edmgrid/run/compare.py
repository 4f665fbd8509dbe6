"""Pivot tables over the store (``edmgrid compare``)."""

from __future__ import annotations

from typing import Any

from edmgrid.errors import SpecError
from edmgrid.run.store import Store


def load_runs(store: Store, space: str | None) -> Any:
    """The done rows, restricted to a space's jobs when ``space`` is given."""
    query = "SELECT * FROM runs WHERE status = 'done'"
    if space is not None:
        recorded = store.space_path(space)
        if not recorded.exists():
            known = ", ".join(sorted(p.stem for p in recorded.parent.glob("*.json")))
            raise SpecError(
                f"no space named {space!r} in {store.root}; recorded: {known or 'none'}"
            )
        query += f" AND job_id IN (SELECT job_id FROM space_jobs WHERE space = '{space}')"
    return store.query(query)


def pivot(store: Store, space: str | None, rows: list[str], cols: list[str], value: str) -> Any:
    """ROWS × COLS → VALUE (the mean if several jobs share a cell)."""
    frame = load_runs(store, space)
    missing = [c for c in [*rows, *cols, value] if c not in frame.columns]
    if missing:
        valid = ", ".join(sorted(frame.columns))
        raise SpecError(f"unknown column(s) {', '.join(missing)}; columns: {valid}")
    table = frame.pivot_table(index=rows, columns=cols, values=value, aggfunc="mean")
    table.columns = [
        "/".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns
    ]
    return table.reset_index()
