"""The scheduler of ``edmgrid run`` and ``optuna-churn``: claims tasks and dispatches them to an
executor's workers as they free up, evaluations only after their training.

Every task is claimed first (``run/claims.py``), so concurrent runs on one store split the
work: a task another run holds waits until it lets go, and then counts as done, failed, or
runs here. A task whose row says done meanwhile is skipped; an evaluation whose training failed
gets a failed row without running. What the run sees of it goes to a ``Listener``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from edmgrid.config.job import model_key as job_model_key
from edmgrid.run import interrupts
from edmgrid.run.claims import Claims
from edmgrid.run.executors import Event, Executor
from edmgrid.run.jobs import Task, Trainer, flatten, record_failed
from edmgrid.run.provenance import code_fingerprint
from edmgrid.run.store import Store
from edmgrid.run.summary import Summary

#: How many ready tasks ``Picker.pick`` compares for each free worker.
PICK_WINDOW = 64
#: Seconds between checks on tasks another run holds.
FOREIGN_POLL_S = 1.0


def training_status(store: Store, trainer: Trainer, key: str) -> str | None:
    """'done' when training ``key``'s checkpoint is whole and its row says done; 'failed' when
    there is no checkpoint and its row says failed; else None: to run. (A checkpoint without a
    done row, as a run killed between writing the two leaves, makes a quick run: the trainer
    reads it back. A done row without a checkpoint, e.g. quarantined, trains again.)"""
    row = store.training_status(key)
    if store.has_checkpoint(trainer.checkpoint(store.cache, key)):
        return "done" if row == "done" else None
    return "failed" if row == "failed" else None


def model_key(task: Task) -> str:
    """Tasks with one model key share a denoiser (a worker that loaded it can reuse it)."""
    return task.training_key or job_model_key(task.job)


class Picker:
    """Chooses the ready task a free worker takes next; caches what it derives from tasks.

    In order of preference: a training (it unblocks evaluations); a task that needs no shared
    work (``Metric.shared_work``: a reference solution, a classifier) that a running task is
    doing right now, since it would wait for it; a task of the model the worker last ran (one
    model load per worker); the task that differs most from the running ones in its config
    columns. Ties keep the order the tasks were added in.
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


class Listener(Protocol):
    """What a run is told of its tasks."""

    def show(self, event: Event, label: str) -> None:
        """A worker's event (started, progress, finished) of the running task ``label``."""
        ...

    def finished(self, task: Task, row: dict[str, Any] | None) -> None:
        """``task`` is over: its row, or None when it was skipped (another run did it)."""
        ...


class Silent:
    """A listener that ignores everything."""

    def show(self, event: Event, label: str) -> None:
        pass

    def finished(self, task: Task, row: dict[str, Any] | None) -> None:
        pass


class Scheduler:
    """Claims ``add``-ed tasks and dispatches them to ``executor``, one per free worker (chosen
    by ``Picker``), evaluations once their training is done; counts them in ``summary``.

    A context manager over the executor: it opens it, and closes it on the way out (at once,
    abandoning running tasks, on an exception). ``step`` does one round of dispatching and
    waiting; ``run`` steps until every task is over.
    """

    def __init__(
        self,
        store: Store,
        executor: Executor,
        claims: Claims,
        *,
        force: bool = False,
        rerun_stale: bool = False,
        listener: Listener | None = None,
    ) -> None:
        self.store, self.executor, self.claims, self.force = store, executor, claims, force
        self.rerun_stale = rerun_stale
        self.listener: Listener = listener or Silent()
        self.summary = Summary()
        self.ready: list[Task] = []
        self.waiting: dict[str, list[Task]] = {}  # by training key: evaluations that need it
        #: Trainings that failed (their row): their evaluations fail without running.
        self.failed_trainings: dict[str, dict[str, Any]] = {}
        self.running: dict[str, Task] = {}
        self.foreign: list[Task] = []  # held by another run (or by a task of this one)
        self.last_model: dict[int, str] = {}
        self.picker = Picker()
        self.done_work: set[str] = set()  # shared work some finished task has done
        self.last_check = 0.0
        self.slots = 0

    def __enter__(self) -> Scheduler:
        self.executor.open(self.store.root.resolve(), self.on_event)
        self.slots = len(self.executor.free())
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.executor.close(wait=kind is None)

    def add(self, task: Task) -> None:
        """Schedule ``task``; an evaluation whose training was added waits for it."""
        if task.kind == "train":
            self.waiting[task.key] = []
            self.ready.append(task)
        else:
            self.waiting.get(task.training_key or "", self.ready).append(task)

    @property
    def busy(self) -> bool:
        return bool(self.ready or self.running or self.foreign)

    def run(self) -> None:
        """Step until every task is over."""
        while self.busy:
            self.step()

    def step(self) -> None:
        """Dispatch ready tasks to free workers, deliver the executor's events (waiting a
        moment for one), and look at the tasks other runs held. Raises ``KeyboardInterrupt``
        once a stop is requested (``run/interrupts.py``)."""
        interrupts.check()
        self.dispatch()
        self.executor.poll(0.1 if self.running else FOREIGN_POLL_S / 4)
        if self.foreign and time.monotonic() - self.last_check > FOREIGN_POLL_S:
            self.last_check = time.monotonic()
            self.check_foreign()

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
        if task.name in self.running or not self.claims.acquire(task.name):
            self.foreign.append(task)
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
        self.listener.finished(task, None)

    def record(self, task: Task, row: dict[str, Any]) -> None:
        """Count a finished task; a training releases its evaluations (to run or to fail)."""
        self.summary.add(row, task.name)
        if row["status"] == "done":
            self.done_work |= self.picker.shared_work(task)
        if task.kind == "train":
            if row["status"] != "done":
                self.failed_trainings[task.key] = row
            self.ready.extend(self.waiting.pop(task.key))
        self.listener.finished(task, row)

    def on_event(self, event: Event) -> None:
        interrupts.check()  # a serial executor's job reports progress from inside the driver
        task = self.running.get(event.task)
        if task is None:
            return
        self.listener.show(event, task.label)
        if event.kind == "finished":
            assert event.row is not None
            del self.running[event.task]
            self.claims.release(task.name)
            self.record(task, event.row)

    def check_foreign(self) -> None:
        """Tasks another run held: once it lets go, count its result or take them back."""
        tasks, self.foreign = self.foreign, []
        for task in tasks:
            if task.name in self.running or self.claims.taken(task.name):
                self.foreign.append(task)
                continue
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
