"""Run a space: skip finished jobs, execute the rest, record the space, refresh the views."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edmgrid.run.jobs import run_job
from edmgrid.run.store import Store
from edmgrid.spec.space import Space


@dataclass
class Summary:
    """Counts of a run: done, skipped (already in the store), failed; seconds per kind."""

    counts: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def pending(space: Space, store: Store, force: bool, retry_failed: bool) -> list[Any]:
    """The jobs of a space that need running."""
    todo = []
    for job in space.jobs:
        status = None if force else store.status(job.job_id)
        if status is None or (status == "failed" and retry_failed):
            todo.append(job)
    return todo


def run_space(
    space: Space,
    store: Store,
    *,
    force: bool = False,
    retry_failed: bool = True,
    show_progress: bool | None = None,
) -> Summary:
    """Execute the space's pending jobs in this process, one by one."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    store.record_space(space.name, space.source, [j.job_id for j in space.jobs])
    todo = pending(space, store, force, retry_failed)
    summary = Summary()
    summary.counts["skipped"] = len(space.jobs) - len(todo)
    show = sys.stdout.isatty() if show_progress is None else show_progress
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show) as bar:
        overall = bar.add_task(f"{space.name}", total=len(todo))
        step = bar.add_task("", total=None, visible=False)
        for job in todo:
            bar.update(step, description=f"  {job.job_id}", completed=0, visible=True)

            def on_step(done: int, total: int) -> None:
                bar.update(step, completed=done, total=total)

            start = time.perf_counter()
            row = run_job(job, space.name, store, on_step)
            elapsed = time.perf_counter() - start
            summary.seconds[row["kind"]] = summary.seconds.get(row["kind"], 0.0) + elapsed
            summary.counts[row["status"]] += 1
            if row["status"] == "failed":
                summary.failures.append(row)
            bar.advance(overall)
    store.refresh_db()
    return summary
