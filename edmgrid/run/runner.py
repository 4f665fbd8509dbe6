"""Run a space: plan its job graph and run it on the scheduler (``run/scheduler.py``).

The graph has two kinds of nodes: *train* tasks, one per distinct training config (keyed by its
content hash, shared by every space), and *evaluate* tasks, which wait for their training (or
for none: the analytic denoiser). A training is done once its checkpoint is whole and its row
written (``training_status``); a checkpoint alone, whoever made it, is read back, not trained
again. Jobs with a row are skipped (failed ones are retried unless ``retry_failed`` is off).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from edmgrid.config.job import JobSpec
from edmgrid.config.space import Space
from edmgrid.run import interrupts
from edmgrid.run.claims import Claims, active_run
from edmgrid.run.executors import Event, Executor, SerialExecutor
from edmgrid.run.jobs import EngineTrainer, Task, Trainer
from edmgrid.run.provenance import code_fingerprint
from edmgrid.run.scheduler import Scheduler, training_status
from edmgrid.run.store import Store
from edmgrid.run.summary import Summary


@dataclass
class Plan:
    """The pending part of a space's job graph."""

    trains: list[Task]
    evaluations: list[Task]
    skipped: int
    failed_trainings: dict[str, dict[str, Any]]  # not retried: their evaluations fail at once


def pending(
    space: Space, store: Store, force: bool, retry_failed: bool, rerun_stale: bool = False
) -> list[JobSpec]:
    """The jobs of a space that need evaluating (``rerun_stale``: also done ones that other
    code computed, ``Store.stale``)."""
    ids = [j.job_id for j in space.jobs]
    statuses = {} if force else store.statuses(ids)
    stale = set(store.stale(ids, code_fingerprint())) if rerun_stale and not force else set()
    todo = []
    for job in space.jobs:
        status = statuses.get(job.job_id)
        if status is None or (status == "failed" and retry_failed) or job.job_id in stale:
            todo.append(job)
    return todo


def plan(
    space: Space,
    store: Store,
    trainer: Trainer,
    *,
    force: bool = False,
    retry_failed: bool = True,
    rerun_stale: bool = False,
    train_gpus: int = 1,
) -> Plan:
    """Pending evaluations and the trainings they need that are not done."""
    jobs = pending(space, store, force, retry_failed, rerun_stale)
    evaluations = [Task.evaluation(j, space.name, trainer) for j in jobs]
    trains: dict[str, Task] = {}
    failed: dict[str, dict[str, Any]] = {}
    for task in evaluations:
        key = task.training_key
        if key is None or key in trains or key in failed:
            continue
        status = training_status(store, trainer, key)
        if status == "done":
            continue
        row = store.training_row(key) if status == "failed" and not retry_failed else None
        if row is not None:
            failed[key] = row
            continue
        trains[key] = Task("train", key, task.job, space.name, trainer=trainer, gpus=train_gpus)
    return Plan(list(trains.values()), evaluations, len(space.jobs) - len(jobs), failed)


class _Display:
    """The rich progress display (a ``Listener``): overall jobs with ETA, one line per busy
    worker."""

    def __init__(self, name: str, total: int, show: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        self.bar = Progress(*columns, disable=not show)
        self.overall = self.bar.add_task(name, total=total)
        self.workers: dict[int, Any] = {}
        self.labels: dict[int, str] = {}

    def __enter__(self) -> _Display:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def line(self, worker: int) -> Any:
        if worker not in self.workers:
            self.workers[worker] = self.bar.add_task("", total=None, visible=False)
        return self.workers[worker]

    def show(self, event: Event, label: str) -> None:
        line = self.line(event.worker)
        if event.kind == "started":
            self.labels[event.worker] = text = f"  [{event.worker}] {event.device} {label}"
            self.bar.update(line, description=text, completed=0, total=None, visible=True)
        elif event.kind == "progress":
            text = " ".join(filter(None, [self.labels.get(event.worker, ""), event.note]))
            self.bar.update(line, completed=event.done, total=event.total, description=text)
        else:
            self.bar.update(line, visible=False)

    def finished(self, task: Task, row: dict[str, Any] | None) -> None:
        if task.kind == "evaluate":
            self.bar.advance(self.overall)


def tally(space: Space, store: Store) -> tuple[int, int]:
    """The space's jobs with a done row in the store, and the others (left to run)."""
    statuses = store.statuses([j.job_id for j in space.jobs])
    done = sum(statuses.get(j.job_id) == "done" for j in space.jobs)
    return done, len(space.jobs) - done


def run_space(
    space: Space,
    store: Store,
    *,
    executor: Executor | None = None,
    trainer: Trainer | None = None,
    force: bool = False,
    retry_failed: bool = True,
    rerun_stale: bool = False,
    train_gpus: int = 1,
    show_progress: bool | None = None,
    fingerprint: str | None = None,
) -> Summary:
    """Run the space's pending trainings and evaluations on ``executor`` (default: serial).

    Every task is claimed first (``run/claims.py``), so concurrent runs on one store split the
    work. An interrupted run (SIGINT, SIGTERM: ``run/interrupts.py``) stops its workers,
    releases its claims and raises ``Interrupted``, saying how many jobs are done and left.
    ``fingerprint`` (of the space file, ``store.space_fingerprint``) is recorded with the
    space so that a later run can tell it has nothing to do without expanding it.
    """
    start = time.perf_counter()
    executor = executor or SerialExecutor()
    trainer = trainer or EngineTrainer()
    show = sys.stdout.isatty() if show_progress is None else show_progress
    scheduler: Scheduler | None = None
    with interrupts.deferred():
        interrupts.set_tally(lambda: tally(space, store))
        try:
            with active_run(store.root), Claims(store.root) as claims:
                job_ids = [j.job_id for j in space.jobs]
                store.record_space(
                    space.name, space.source, job_ids, fingerprint, space.replicates, space.digest
                )
                the_plan = plan(
                    space,
                    store,
                    trainer,
                    force=force,
                    retry_failed=retry_failed,
                    rerun_stale=rerun_stale,
                    train_gpus=train_gpus,
                )
                display = _Display(space.name, len(space.jobs) - the_plan.skipped, show)
                scheduler = Scheduler(
                    store, executor, claims, force=force, rerun_stale=rerun_stale, listener=display
                )
                scheduler.summary.counts["skipped"] = the_plan.skipped
                scheduler.failed_trainings.update(the_plan.failed_trainings)
                for task in [*the_plan.trains, *the_plan.evaluations]:
                    scheduler.add(task)
                interrupts.check()
                if scheduler.busy:
                    with scheduler, display:
                        scheduler.run()
            interrupts.check()
        except KeyboardInterrupt:
            if scheduler is not None and scheduler.summary.executed:
                store.refresh_db()
            raise interrupts.Interrupted.now() from None
    summary = scheduler.summary
    if summary.executed or not store.db_path.exists():
        store.refresh_db()
    summary.wall = time.perf_counter() - start
    return summary
