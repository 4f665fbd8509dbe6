"""Executors: where tasks run. One small interface, three implementations.

- ``SerialExecutor``: in this process, one task at a time (debugging).
- ``LocalExecutor``: one worker process per device, forked from a fork server that has
  imported torch and edmgrid once (``forkserver``); worker k sees only its GPU
  (``CUDA_VISIBLE_DEVICES``, set first thing in the worker, before anything initialises
  CUDA), or CPU workers that share the cores' threads.
- ``RayExecutor``: Ray Core tasks with ``num_gpus`` per task on a running cluster or a local Ray
  started for the run (optional extra ``edmgrid[ray]``); Ray sets each task's visible GPUs.

Every worker calls ``run_job``, which writes the task's row itself; executors report
``Event``s (started, progress, finished with the row) to the driver through ``emit``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edmgrid.errors import EdmgridError, InputError
from edmgrid.run import interrupts
from edmgrid.run.claims import pid_alive

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


class Executor(Protocol):
    """Runs tasks on numbered workers; ``open`` is cheap, resources start on first ``submit``."""

    def open(self, root: Path, emit: Emit) -> None:
        """Bind to a results directory; ``emit`` receives every event (in ``poll``)."""
        ...

    def free(self) -> list[int]:
        """The workers that can take a task now."""
        ...

    def submit(self, task: Task, worker: int) -> None: ...

    def poll(self, timeout: float) -> None:
        """Deliver pending events, waiting up to ``timeout`` seconds for one."""
        ...

    def close(self, wait: bool = True) -> None:
        """Stop the workers (``wait=False``: now, abandoning running tasks)."""
        ...


class _Reporter:
    """A worker's ``Progress`` callback, throttled to one event per ``PROGRESS_EVERY_S``."""

    def __init__(self, send: Emit, worker: int, task: str) -> None:
        self.send, self.worker, self.task, self.last = send, worker, task, 0.0

    def __call__(self, done: int, total: int, note: str = "") -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.send(Event(self.worker, self.task, "progress", done, total, note=note))


def _execute(task: Task, root: str, worker: int, send: Emit) -> dict[str, Any]:
    """Run one task in a worker: started event, the job with progress, its row."""
    from edmgrid.run.jobs import device_name, run_job
    from edmgrid.run.store import Store

    send(Event(worker, task.name, "started", device=device_name()))
    return run_job(task, Store(root), _Reporter(send, worker, task.name))


class SerialExecutor:
    """Runs each task in this process when polled (``--executor serial``)."""

    def __init__(self) -> None:
        self.root = ""
        self.emit: Emit = lambda event: None
        self.task: Task | None = None

    def open(self, root: Path, emit: Emit) -> None:
        self.root, self.emit = str(root), emit

    def free(self) -> list[int]:
        return [] if self.task else [0]

    def submit(self, task: Task, worker: int) -> None:
        self.task = task

    def poll(self, timeout: float) -> None:
        task, self.task = self.task, None
        if task is None:
            time.sleep(timeout)
            return
        row = _execute(task, self.root, 0, self.emit)
        self.emit(Event(0, task.name, "finished", row=row))

    def close(self, wait: bool = True) -> None:
        self.task = None


@dataclass(frozen=True)
class WorkerSlot:
    """One local worker: the GPU it sees (None: CPU only) and its torch threads."""

    index: int
    cuda: str | None
    threads: int

    @property
    def device(self) -> str:
        return "cpu" if self.cuda is None else f"cuda:{self.cuda}"


def visible_gpus() -> list[str]:
    """The ids of the GPUs this process may use (respects ``CUDA_VISIBLE_DEVICES``)."""
    import torch

    count = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env is not None else []
    return ids[:count] if env is not None else [str(i) for i in range(count)]


#: Default number of workers on a machine without GPUs (each holds its own model and data).
CPU_WORKERS = 4


def assign_devices(
    devices: list[str] | None,
    workers: int | None,
    gpus: list[str],
    cpus: int,
    threads: int | None = None,
) -> list[WorkerSlot]:
    """Local workers: one per GPU in ``devices`` (default: every GPU in ``gpus``; with
    ``workers``, the devices round-robin over that many workers), or ``workers`` CPU workers
    when there is no GPU (default: one per core, at most ``CPU_WORKERS``: on 2 cores, 2 workers
    of 1 thread ran an evaluation grid 1.4× faster than 1 of 2 threads, bench/RESULTS.md).
    Threads per worker: ``threads``, else the cores divided evenly.
    """
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if not gpus:
        if devices:
            raise InputError(f"--devices {','.join(devices)}: no GPU is visible on this machine")
        chosen: list[str | None] = [None]
    else:
        unknown = [d for d in devices or [] if d not in gpus]
        if unknown:
            raise InputError(
                f"--devices: no GPU {', '.join(unknown)}; visible GPUs: {', '.join(gpus)}"
            )
        chosen = list(devices or gpus)
    n = workers or (len(chosen) if gpus else min(cpus, CPU_WORKERS))
    per = threads or max(1, cpus // n)
    return [WorkerSlot(k, chosen[k % len(chosen)], per) for k in range(n)]


def _watch_driver(driver: int) -> None:
    """Exit once the driver is gone: a killed run must not leave workers running its jobs.

    (The worker's parent is the fork server, which itself waits for its workers to exit.)
    """

    def watch() -> None:
        while pid_alive(driver):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="edmgrid-driver-watch", daemon=True).start()


def _limit_threads(threads: int) -> None:
    """Cap torch's and numpy's BLAS thread pools at the worker's share of the cores.

    numpy's OpenBLAS otherwise starts a thread per core in every worker, and its threads
    spin after each call, taking the cores of the other workers (2 workers on 2 cores ran
    each job ≈1.4× slower than 1).
    """
    import numpy  # noqa: F401 (loads its BLAS, which only then can be capped)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def _worker(slot: WorkerSlot, root: str, tasks: Any, events: Any, driver: int) -> None:
    """A local worker process: run the tasks received on ``tasks`` until None arrives."""
    if slot.cuda is not None:
        # read by CUDA when it initialises, which torch defers to the first CUDA call
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.cuda
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _watch_driver(driver)
    _limit_threads(slot.threads)
    events.send(Event(slot.index, "", "ready"))
    while (task := tasks.recv()) is not None:
        row = _execute(task, root, slot.index, events.send)
        events.send(Event(slot.index, task.name, "finished", row=row))


#: Imported once by the fork server, so that each worker starts in milliseconds (scikit-learn
#: loads the digits, and costs each worker ≈ 1 s of importing otherwise).
PRELOAD = ["edmgrid.run.jobs", "edmgrid.engine.evaluate", "sklearn.datasets"]


@dataclass
class _Process:
    """A running worker: its process, its two pipe ends, whether it got ready."""

    proc: Any
    tasks: Any
    events: Any
    ready: bool = False


class LocalExecutor:
    """A pool of worker processes on this machine, one per device (``--executor local``).

    Each worker has its own pair of pipes, written synchronously: a worker that dies (killed,
    out of memory) can only break its own channel, never a lock another worker needs.
    """

    def __init__(
        self,
        workers: int | None = None,
        devices: list[str] | None = None,
        threads: int | None = None,
        gpus: Callable[[], list[str]] = visible_gpus,
    ) -> None:
        self.devices, self.n_workers, self.threads, self.gpus = devices, workers, threads, gpus
        self.root = ""
        self.emit: Emit = lambda event: None
        self.workers: dict[int, _Process] = {}
        self.busy: dict[int, Task] = {}

    def open(self, root: Path, emit: Emit) -> None:
        import multiprocessing

        self.root, self.emit = str(root), emit
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    @cached_property
    def slots(self) -> list[WorkerSlot]:
        """The workers (``assign_devices``), assigned when first needed: counting the GPUs
        imports torch, which a run with nothing to do never needs."""
        cpus = os.cpu_count() or 1
        return assign_devices(self.devices, self.n_workers, self.gpus(), cpus, self.threads)

    def free(self) -> list[int]:
        return [s.index for s in self.slots if s.index not in self.busy]

    def _start(self, slot: WorkerSlot) -> _Process:
        from multiprocessing import forkserver

        # the fork server, started with the first worker, and the workers it forks never see
        # SIGINT, which a terminal sends the whole process group (they would die mid-import):
        # the driver stops them. Its own SIGINT stays pending meanwhile, or goes to a thread.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            forkserver.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        task_r, task_w = self.ctx.Pipe(duplex=False)
        event_r, event_w = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker,
            args=(slot, self.root, task_r, event_w, os.getpid()),
            name=f"edmgrid-worker-{slot.index}",
            daemon=True,
        )
        with interrupts.immediate():  # waits for the fork server's imports: safe to abandon
            proc.start()
        task_r.close()  # the worker's ends: once it exits, reading its events gives EOF
        event_w.close()
        return _Process(proc, task_w, event_r)

    def submit(self, task: Task, worker: int) -> None:
        if worker not in self.workers:
            self.workers[worker] = self._start(self.slots[worker])
        self.busy[worker] = task
        with contextlib.suppress(OSError):  # a dead worker is found and reported by poll
            self.workers[worker].tasks.send(task)

    def poll(self, timeout: float) -> None:
        from multiprocessing.connection import wait

        readable = wait([w.events for w in self.workers.values()], timeout)
        for worker in list(self.workers.values()):
            if worker.events not in readable:
                continue
            try:
                while worker.events.poll():
                    self._deliver(worker, worker.events.recv())
            except (EOFError, OSError):  # it exited: _reap below says how
                worker.proc.join(1.0)
        self._reap()

    def _deliver(self, worker: _Process, event: Event) -> None:
        if event.kind == "ready":
            worker.ready = True
            return
        if event.kind == "finished":
            self.busy.pop(event.worker, None)
        self.emit(event)

    def _reap(self) -> None:
        """A worker that died mid-task (killed, out of memory) fails its task and is replaced;
        one that died before it could run anything is an error of the setup, not of a job."""
        from edmgrid.run.jobs import record_failed
        from edmgrid.run.store import Store

        for index, worker in list(self.workers.items()):
            if worker.proc.is_alive():
                continue
            del self.workers[index]
            task = self.busy.pop(index, None)
            if not worker.ready:
                raise EdmgridError(
                    f"worker {index} exited (code {worker.proc.exitcode}) before it could run "
                    "a job; its error is above"
                )
            if task is not None:
                code = worker.proc.exitcode
                message = f"worker {index} died (exit code {code}) while running the job"
                row = record_failed(task, Store(self.root), message, "WorkerDied", None)
                self.emit(Event(index, task.name, "finished", row=row))

    def close(self, wait: bool = True) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(OSError):
                worker.tasks.send(None)
        deadline = time.monotonic() + (10.0 if wait else 0.0)
        for worker in self.workers.values():
            worker.proc.join(max(0.0, deadline - time.monotonic()))
            if worker.proc.is_alive():
                worker.proc.terminate()
                worker.proc.join(1.0)
        self.workers.clear()
        self.busy.clear()


def _ray_task(task: Task, root: str, worker: int, events: Any) -> dict[str, Any]:
    """The body of a Ray task: run the task, sending events through a Ray queue."""

    def send(event: Event) -> None:
        with contextlib.suppress(Exception):  # progress is best effort
            events.put_nowait(event)

    return _execute(task, root, worker, send)


class RayExecutor:
    """Ray Core tasks (``--executor ray``): ``num_gpus`` per task, results as local.

    ``address`` joins a running cluster (``auto``); without it a local Ray is started for the
    run with ``gpus`` declared GPUs (logical ones on a CPU-only machine) and stopped after.
    """

    def __init__(self, address: str | None = None, gpus: int | None = None) -> None:
        self.address, self.gpus = address, gpus
        self.root = ""
        self.emit: Emit = lambda event: None
        self.started = False
        self.owns = False
        self.capacity = 0
        self.has_gpus = False
        self.running: dict[Any, tuple[int, Task]] = {}

    def open(self, root: Path, emit: Emit) -> None:
        self.root, self.emit = str(root), emit

    def _start(self) -> None:
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            raise EdmgridError("--executor ray needs Ray: pip install 'edmgrid[ray]'") from None
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                # a local Ray: its workers (in another cwd) must import this edmgrid
                paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
                path = [str(Path(__file__).resolve().parents[2])]
                path += [os.path.abspath(p) for p in paths if p]
                options["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(path)}}
                options["num_gpus"] = self.gpus
            ray.init(address=self.address, **options)
            self.owns = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.has_gpus = gpus > 0
        self.capacity = gpus or int(resources.get("CPU", 1))
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.remote = ray.remote(_ray_task)
        self.started = True

    def free(self) -> list[int]:
        if not self.started:
            self._start()
        busy = {worker for worker, _ in self.running.values()}
        return [k for k in range(self.capacity) if k not in busy]

    def submit(self, task: Task, worker: int) -> None:
        gpus = task.gpus if self.has_gpus else 0
        ref = self.remote.options(num_gpus=gpus, max_retries=0).remote(
            task, self.root, worker, self.queue
        )
        self.running[ref] = (worker, task)

    def poll(self, timeout: float) -> None:
        import ray

        from edmgrid.run.jobs import record_failed
        from edmgrid.run.store import Store

        if not self.running:  # only waiting on another run's claims
            time.sleep(timeout)
            return
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        for event in self.queue.get_nowait_batch(self.queue.qsize()):
            self.emit(event)
        for ref in ready:
            worker, task = self.running.pop(ref)
            try:
                row = ray.get(ref)
            except ray.exceptions.RayError as e:  # the task's process died; the job did not say
                message = f"Ray task failed: {type(e).__name__}: {e}".splitlines()[0]
                row = record_failed(task, Store(self.root), message, "WorkerDied", None)
            self.emit(Event(worker, task.name, "finished", row=row))

    def close(self, wait: bool = True) -> None:
        if not self.started:
            return
        import ray

        for ref in self.running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        self.running.clear()
        if self.owns:
            ray.shutdown()
        self.started = False


def make_executor(
    name: str,
    workers: int | None = None,
    devices: list[str] | None = None,
    gpus: int | None = None,
    address: str | None = None,
) -> Executor:
    """The executor named on the command line (``--executor``); options of another
    executor are errors rather than silently ignored."""
    given = {"--workers": workers, "--devices": devices, "--gpus": gpus, "--address": address}
    allowed = {"serial": set(), "local": {"--workers", "--devices"}, "ray": {"--gpus", "--address"}}
    if name not in allowed:
        raise InputError(f"unknown executor {name!r}; valid: {', '.join(allowed)}")
    stray = [option for option, value in given.items() if value is not None]
    stray = [option for option in stray if option not in allowed[name]]
    if stray:
        raise InputError(f"{', '.join(stray)} cannot be used with --executor {name}")
    if gpus is not None and address is not None:
        raise InputError(
            "--gpus declares the GPUs of a local Ray; a cluster (--address) has its own"
        )
    if name == "serial":
        return SerialExecutor()
    if name == "local":
        return LocalExecutor(workers=workers, devices=devices)
    return RayExecutor(address=address, gpus=gpus)
