"""Run a space: plan its job graph, claim and dispatch ready tasks to an executor, record.

The graph has two kinds of nodes: *train* tasks, one per distinct training config (keyed by its
content hash, shared by every space), and *evaluate* tasks, which wait for their training (or
for none: the analytic denoiser). A training is done once its checkpoint is whole and its row
written (``training_status``); a checkpoint alone, whoever made it, is read back, not trained
again. Jobs with a row are skipped (failed ones are retried unless ``retry_failed`` is off).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edmgrid.config.job import JobSpec
from edmgrid.config.job import model_key as job_model_key
from edmgrid.config.space import Space
from edmgrid.run.claims import Claims, active_run
from edmgrid.run.executors import Event, Executor, SerialExecutor
from edmgrid.run.jobs import EngineTrainer, Task, Trainer, flatten, record_failed
from edmgrid.run.provenance import code_fingerprint
from edmgrid.run.store import Store
from edmgrid.run.summary import Summary

#: How many ready tasks ``Picker.pick`` compares for each free worker.
PICK_WINDOW = 64
#: Seconds between checks on tasks another run holds.
FOREIGN_POLL_S = 1.0


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


def training_status(store: Store, trainer: Trainer, key: str) -> str | None:
    """'done' when training ``key``'s checkpoint is whole and its row says done; 'failed' when
    there is no checkpoint and its row says failed; else None: to run. (A checkpoint without a
    done row, as a run killed between writing the two leaves, makes a quick run: the trainer
    reads it back. A done row without a checkpoint, e.g. quarantined, trains again.)"""
    row = store.training_status(key)
    if store.has_checkpoint(trainer.checkpoint(store.cache, key)):
        return "done" if row == "done" else None
    return "failed" if row == "failed" else None


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


def model_key(task: Task) -> str:
    """Tasks with one model key share a denoiser (a worker that loaded it can reuse it)."""
    return task.training_key or job_model_key(task.job)


class Picker:
    """Chooses the ready task a free worker takes next; caches what it derives from tasks.

    In order of preference: a training (it unblocks evaluations); a task that needs no shared
    work (``Metric.shared_work``: a reference solution, a classifier) that a running task is
    doing right now, since it would wait for it; a task of the model the worker last ran (one
    model load per worker); the task that differs most from the running ones in its config
    columns. Ties keep the grid order.
    """

    def __init__(self) -> None:
        self.columns: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, frozenset[str]] = {}

    def config(self, task: Task) -> dict[str, Any]:
        if task.name not in self.columns:
            self.columns[task.name] = flatten(task.job.resolved())
        return self.columns[task.name]

    def shared_work(self, task: Task) -> frozenset[str]:
        """What cached work an evaluation shares with others (a training: none)."""
        if task.kind == "train":
            return frozenset()
        if task.name not in self.shared:
            keys = [m.shared_work(task.job) for m in task.job.metrics]
            self.shared[task.name] = frozenset(k for k in keys if k is not None)
        return self.shared[task.name]

    def pick(
        self, ready: list[Task], last_model: str | None, running: list[Task], busy: set[str]
    ) -> int:
        """Index in ``ready`` of the task to take; ``busy``: shared work being done now."""
        others = [self.config(t) for t in running]

        def score(task: Task) -> tuple[bool, bool, bool, int]:
            mine = self.config(task)
            distance = min(
                (sum(mine.get(k) != o.get(k) for k in mine.keys() | o.keys()) for o in others),
                default=0,
            )
            free = not self.shared_work(task) & busy
            return task.kind == "train", free, model_key(task) == last_model, distance

        window = ready[:PICK_WINDOW]
        return max(range(len(window)), key=lambda i: (score(window[i]), -i))


class _Display:
    """The rich progress display: overall jobs with ETA, one line per busy worker."""

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

    def advance(self) -> None:
        self.bar.advance(self.overall)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the driver, so it cleans up as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _Scheduler:
    """The driver loop of one run."""

    def __init__(
        self,
        the_plan: Plan,
        store: Store,
        executor: Executor,
        claims: Claims,
        force: bool,
        rerun_stale: bool = False,
    ) -> None:
        self.store, self.executor, self.claims, self.force = store, executor, claims, force
        self.rerun_stale = rerun_stale
        self.summary = Summary(counts=Counter(skipped=the_plan.skipped))
        self.ready: list[Task] = list(the_plan.trains)
        self.waiting: dict[str, list[Task]] = {t.key: [] for t in the_plan.trains}
        self.failed_trainings = dict(the_plan.failed_trainings)
        self.running: dict[str, Task] = {}
        self.foreign: dict[str, Task] = {}
        self.last_model: dict[int, str] = {}
        self.picker = Picker()
        self.done_work: set[str] = set()  # shared work some finished task has done
        self.display: _Display | None = None
        for task in the_plan.evaluations:  # wait for a planned training, else ready now
            self.waiting.get(task.training_key or "", self.ready).append(task)

    @property
    def busy(self) -> bool:
        return bool(self.ready or self.running or self.foreign)

    def status(self, task: Task) -> str | None:
        """The task's status in the store now (of a training: ``training_status``)."""
        if task.kind == "train":
            return training_status(self.store, task.trainer, task.key)
        status = self.store.status(task.key)
        if status == "done" and self.rerun_stale:  # a stale row is to be redone, not kept
            return None if self.store.stale([task.key], code_fingerprint()) else status
        return status

    def dispatch(self) -> None:
        # free() is read after every submit: a task may take more than its worker
        while self.ready and (free := self.executor.free()):
            worker = free[0]
            while self.ready and not self.start(self.take(worker), worker):
                pass

    def take(self, worker: int) -> Task:
        running = list(self.running.values())
        busy = {k for t in running for k in self.picker.shared_work(t)} - self.done_work
        i = self.picker.pick(self.ready, self.last_model.get(worker), running, busy)
        return self.ready.pop(i)

    def start(self, task: Task, worker: int) -> bool:
        """Claim and submit ``task``; False when it needs no worker after all."""
        if not self.claims.acquire(task.name):
            self.foreign[task.name] = task
            return False
        if not self.force and self.status(task) == "done":  # another run just finished it
            self.claims.release(task.name)
            self.skip(task)
            return False
        cause = self.failed_trainings.get(task.training_key or "")
        if cause is not None:
            message = f"training {task.training_key} failed: {cause['error']}"
            row = record_failed(
                task, self.store, message, "TrainingFailed", cause["traceback_path"]
            )
            self.claims.release(task.name)
            self.record(task, row)
            return False
        self.running[task.name] = task
        self.last_model[worker] = model_key(task)
        self.executor.submit(task, worker)
        return True

    def skip(self, task: Task) -> None:
        self.summary.counts["skipped"] += 1
        if task.kind == "train":
            self.ready.extend(self.waiting.pop(task.key))
        elif self.display:
            self.display.advance()

    def record(self, task: Task, row: dict[str, Any]) -> None:
        """Count a finished task; a training releases its evaluations (to run or to fail)."""
        self.summary.add(row, task.name)
        if row["status"] == "done":
            self.done_work |= self.picker.shared_work(task)
        if task.kind == "train":
            if row["status"] != "done":
                self.failed_trainings[task.key] = row
            self.ready.extend(self.waiting.pop(task.key))
        elif self.display:
            self.display.advance()

    def on_event(self, event: Event) -> None:
        task = self.running.get(event.task)
        if task is None:
            return
        if self.display:
            self.display.show(event, task.label)
        if event.kind == "finished":
            assert event.row is not None
            del self.running[event.task]
            self.claims.release(task.name)
            self.record(task, event.row)

    def check_foreign(self) -> None:
        """Tasks another run held: once it lets go, count its result or take them back."""
        for name, task in list(self.foreign.items()):
            if self.claims.taken(name):
                continue
            del self.foreign[name]
            status = self.status(task)
            if status == "done":
                self.skip(task)
            elif status == "failed":
                read = self.store.training_row if task.kind == "train" else self.store.row
                row = read(task.key)
                assert row is not None
                self.record(task, row)
            else:  # the other run died before finishing it
                self.ready.append(task)

    def loop(self) -> None:
        last_check = 0.0
        while self.busy:
            self.dispatch()
            self.executor.poll(0.1 if self.running else FOREIGN_POLL_S / 4)
            if self.foreign and time.monotonic() - last_check > FOREIGN_POLL_S:
                last_check = time.monotonic()
                self.check_foreign()


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
    work; an interrupted run (Ctrl-C, SIGTERM) stops its workers and releases its claims.
    ``fingerprint`` (of the space file, ``store.space_fingerprint``) is recorded with the
    space so that a later run can tell it has nothing to do without expanding it.
    """
    start = time.perf_counter()
    executor = executor or SerialExecutor()
    trainer = trainer or EngineTrainer()
    show = sys.stdout.isatty() if show_progress is None else show_progress
    with active_run(store.root), Claims(store.root) as claims, _sigterm_interrupts():
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
        scheduler = _Scheduler(the_plan, store, executor, claims, force, rerun_stale)
        total = len(space.jobs) - the_plan.skipped
        if scheduler.busy:
            executor.open(store.root.resolve(), scheduler.on_event)
            try:
                with _Display(space.name, total, show) as scheduler.display:
                    scheduler.loop()
            except BaseException:
                executor.close(wait=False)
                raise
            executor.close()
    summary = scheduler.summary
    if summary.executed or not store.db_path.exists():
        store.refresh_db()
    summary.wall = time.perf_counter() - start
    return summary
