"""The executor interface and its registry: where tasks run.

An executor is one class in one module of this package, registered by its ``name`` (the
``--executor NAME`` of the command line) when the module is imported; ``make_executor``
imports every module here, so a new executor is one new file. The driver (``run/runner.py``)
owns the job graph and the claims; an executor only runs the tasks it is given:

- ``free()`` lists the workers that can take a task now; the driver submits one task to one of
  them with ``submit(task, worker)`` and reads ``free()`` again before the next;
- every worker calls ``execute`` (``run_job``: the task writes its own row) and the executor
  reports ``Event``s back through ``emit``, delivered during ``poll``: ``started`` (with the
  device), ``progress`` and ``finished`` (with the row, also when the worker died: then the
  executor writes a failed row with ``record_failed``);
- ``cancel`` stops one task without a row (it runs again next time), ``close`` stops them all;
- ``resources()`` says what it offers: tasks at once, devices one training may hold.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from edmgrid.errors import InputError

if TYPE_CHECKING:
    from edmgrid.run.jobs import Task

#: Seconds between two progress events of one worker (the last step is always sent).
PROGRESS_EVERY_S = 0.2


@dataclass(frozen=True)
class Event:
    """What a worker tells the driver; ``row`` comes with ``finished``, ``device`` with
    ``started`` (``ready``: a local worker has started up and waits for tasks)."""

    worker: int
    task: str
    kind: Literal["ready", "started", "progress", "finished"]
    done: int = 0
    total: int = 0
    device: str = ""
    row: dict[str, Any] | None = None
    note: str = ""  # with ``progress``: the job's status, e.g. its running loss


Emit = Callable[[Event], None]


@dataclass(frozen=True)
class Resources:
    """What an executor offers: ``slots`` tasks at once, ``gpus`` whether they get GPUs, and
    ``train_devices``, the most devices one training may hold (``--train-gpus``: GPUs, or on a
    CPU-only executor the cores of that many workers)."""

    slots: int
    gpus: bool
    train_devices: int


#: Every executor class by its ``name`` (filled as their modules are imported).
EXECUTORS: dict[str, type[Executor]] = {}


class Executor(ABC):
    """Runs tasks on numbered workers; ``open`` is cheap, resources start when first needed.

    A subclass sets ``name`` (which registers it) and ``options``, the command-line options it
    takes (``--workers`` → ``workers``: each is a keyword of its constructor); an option of
    another executor is an error, never silently ignored.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is not None:
            if name in EXECUTORS:
                raise ValueError(f"executor {name!r} is registered twice")
            EXECUTORS[name] = cls

    def __init__(self) -> None:
        self.root = ""
        self.emit: Emit = lambda event: None

    def open(self, root: Path, emit: Emit) -> None:
        """Bind to a results directory; ``emit`` receives every event (in ``poll``)."""
        self.root, self.emit = str(root), emit

    @abstractmethod
    def free(self) -> list[int]:
        """The workers that can take a task now."""

    @abstractmethod
    def submit(self, task: Task, worker: int) -> None:
        """Start ``task`` on ``worker`` (one of ``free()``)."""

    @abstractmethod
    def poll(self, timeout: float) -> None:
        """Deliver pending events, waiting up to ``timeout`` seconds for one."""

    @abstractmethod
    def cancel(self, task: str) -> None:
        """Stop the running task named ``task``: no ``finished`` event and no row come."""

    @abstractmethod
    def close(self, wait: bool = True) -> None:
        """Stop the workers (``wait=False``: now, abandoning running tasks)."""

    @abstractmethod
    def resources(self) -> Resources:
        """What this executor offers (may start it)."""

    def check(self, task: Task) -> None:
        """Refuse a training that needs more devices than ``resources()`` offers."""
        most = self.resources().train_devices
        if task.kind == "train" and task.gpus > most:
            raise InputError(
                f"--train-gpus {task.gpus}: --executor {self.name} offers at most {most} "
                "devices to one training"
            )


class _Reporter:
    """A worker's ``Progress`` callback, throttled to one event per ``every`` seconds."""

    def __init__(self, send: Emit, worker: int, task: str, every: float) -> None:
        self.send, self.worker, self.task, self.every, self.last = send, worker, task, every, 0.0

    def __call__(self, done: int, total: int, note: str = "") -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= self.every:
            self.last = now
            self.send(Event(self.worker, self.task, "progress", done, total, note=note))


def execute(
    task: Task, root: str, worker: int, send: Emit, every: float = PROGRESS_EVERY_S
) -> dict[str, Any]:
    """Run one task in a worker: started event, the job with progress (one event per
    ``every`` seconds at most), its row."""
    from edmgrid.run.jobs import device_name, run_job
    from edmgrid.run.store import Store

    send(Event(worker, task.name, "started", device=device_name()))
    return run_job(task, Store(root), _Reporter(send, worker, task.name, every))


def make_executor(name: str, **options: Any) -> Executor:
    """The executor named on the command line (``--executor``) with its options (None: not
    given); options of another executor are errors rather than silently ignored."""
    _import_all()
    if name not in EXECUTORS:
        raise InputError(f"unknown executor {name!r}; valid: {', '.join(sorted(EXECUTORS))}")
    cls = EXECUTORS[name]
    stray = [k for k, v in options.items() if v is not None and k not in cls.options]
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") for k in stray)
        raise InputError(f"{flags} cannot be used with --executor {name}")
    return cls(**{k: v for k, v in options.items() if v is not None})


def _import_all() -> None:
    """Import every module of this package, which registers its executors."""
    import importlib
    import pkgutil

    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{module.name}")
