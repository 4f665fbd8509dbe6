"""``--executor local``: a pool of worker processes on this machine, one per device.

Workers are forked from a fork server that has imported torch and edmgrid once
(``forkserver``); worker k sees only its GPU (``CUDA_VISIBLE_DEVICES``, set first thing in the
worker, before anything initialises CUDA), or CPU workers share the cores' threads.
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
from typing import TYPE_CHECKING, Any

from edmgrid.errors import EdmgridError, InputError
from edmgrid.run import interrupts
from edmgrid.run.claims import pid_alive
from edmgrid.run.executors.base import Emit, Event, Executor, Resources, execute

if TYPE_CHECKING:
    from edmgrid.run.jobs import Task


@dataclass(frozen=True)
class WorkerSlot:
    """One local worker: the GPUs it sees (ids, comma-separated: several only for a training
    of ``--train-gpus`` K; None: CPU only) and its torch threads."""

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


def limit_threads(threads: int) -> None:
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
    limit_threads(slot.threads)
    try:
        events.send(Event(slot.index, "", "ready"))
        while (task := tasks.recv()) is not None:
            row = execute(task, root, slot.index, events.send)
            events.send(Event(slot.index, task.name, "finished", row=row))
    except (BrokenPipeError, EOFError):  # the driver closed our pipes (it stops): nothing to do
        return


#: Imported once by the fork server, so that each worker starts in milliseconds (scikit-learn
#: loads the digits, and costs each worker ≈ 1 s of importing otherwise). torch comes first and
#: for real: the fork server never holds ``edmgrid.lazy``'s half-loaded module, which scipy's
#: array-API probe would otherwise find in ``sys.modules`` while torch is still initialising.
PRELOAD = ["torch", "edmgrid.run.jobs", "edmgrid.engine.evaluate", "sklearn.datasets"]


@dataclass
class _Process:
    """A running worker: its process, its two pipe ends, whether it got ready."""

    proc: Any
    tasks: Any
    events: Any
    ready: bool = False


class LocalExecutor(Executor):
    """A pool of worker processes on this machine, one per device.

    Each worker has its own pair of pipes, written synchronously: a worker that dies (killed,
    out of memory) can only break its own channel, never a lock another worker needs.

    A training of K > 1 devices (``Task.gpus``) submitted to worker w holds K devices: w's and
    the next K - 1 (idle ones first; on a CPU machine each worker is a device), with every
    worker on them, which take no task meanwhile. Once their running tasks are done it runs
    in a process of its own that sees the K GPUs (on CPU: with the threads of those workers).
    """

    name = "local"
    options = ("workers", "devices")

    def __init__(
        self,
        workers: int | None = None,
        devices: list[str] | None = None,
        threads: int | None = None,
        gpus: Callable[[], list[str]] = visible_gpus,
    ) -> None:
        super().__init__()
        self.devices, self.n_workers, self.threads, self.gpus = devices, workers, threads, gpus
        self.workers: dict[int, _Process] = {}
        self.busy: dict[int, Task] = {}
        self.held: dict[int, int] = {}  # worker → the worker whose K-device training holds it
        self.pending: dict[int, Task] = {}  # K-device trainings waiting for their workers
        self.trainers: dict[int, _Process] = {}  # their processes, by worker

    def open(self, root: Path, emit: Emit) -> None:
        import multiprocessing

        super().open(root, emit)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    @cached_property
    def slots(self) -> list[WorkerSlot]:
        """The workers (``assign_devices``), assigned when first needed: counting the GPUs
        imports torch, which a run with nothing to do never needs."""
        cpus = os.cpu_count() or 1
        return assign_devices(self.devices, self.n_workers, self.gpus(), cpus, self.threads)

    def free(self) -> list[int]:
        return [s.index for s in self.slots if s.index not in self.busy | self.held.keys()]

    def _units(self) -> dict[int, str]:
        """The device of each worker: its GPU, or on a CPU machine the worker itself."""
        return {s.index: s.cuda if s.cuda is not None else f"w{s.index}" for s in self.slots}

    def resources(self) -> Resources:
        gpus = any(slot.cuda is not None for slot in self.slots)
        return Resources(
            slots=len(self.slots), gpus=gpus, train_devices=len(set(self._units().values()))
        )

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
        self.check(task)
        if task.kind == "train" and task.gpus > 1:
            self._hold(task, worker)
            return
        if worker not in self.workers:
            self.workers[worker] = self._start(self.slots[worker])
        self.busy[worker] = task
        with contextlib.suppress(OSError):  # a dead worker is found and reported by poll
            self.workers[worker].tasks.send(task)

    def _hold(self, task: Task, worker: int) -> None:
        """Hold ``task.gpus`` devices for a training (see the class docstring)."""
        units, idle = self._units(), set(self.free())

        def rank(unit: str) -> tuple[bool, bool]:
            on = [i for i, u in units.items() if u == unit]
            return unit != units[worker], not idle.issuperset(on)

        chosen = sorted(dict.fromkeys(units.values()), key=rank)[: task.gpus]
        for index, unit in units.items():
            if unit in chosen:
                self.held[index] = worker
        self.busy[worker] = task
        self.pending[worker] = task
        self._start_trainings()

    def _start_trainings(self) -> None:
        """Start each held training whose workers have finished their tasks."""
        for worker, task in list(self.pending.items()):
            held = [i for i, w in self.held.items() if w == worker]
            if any(i in self.busy and i != worker for i in held):
                continue
            del self.pending[worker]
            slots = [self.slots[i] for i in held]
            gpus = dict.fromkeys(s.cuda for s in slots if s.cuda is not None)
            threads = sum(s.threads for s in slots)
            process = self._start(WorkerSlot(worker, ",".join(gpus) or None, threads))
            self.trainers[worker] = process
            process.tasks.send(task)
            process.tasks.send(None)  # it exits after its one task

    def _release(self, worker: int) -> None:
        """Free the workers a K-device training on ``worker`` held."""
        self.trainers.pop(worker, None)
        self.pending.pop(worker, None)
        self.held = {i: w for i, w in self.held.items() if w != worker}

    def poll(self, timeout: float) -> None:
        from multiprocessing.connection import wait

        processes = [*self.workers.values(), *self.trainers.values()]
        readable = wait([w.events for w in processes], timeout)
        for worker in processes:
            if worker.events not in readable:
                continue
            try:
                while worker.events.poll():
                    self._deliver(worker, worker.events.recv())
            except (EOFError, OSError):  # it exited: _reap below says how
                worker.proc.join(1.0)
        self._reap()
        self._start_trainings()

    def _deliver(self, worker: _Process, event: Event) -> None:
        if event.kind == "ready":
            worker.ready = True
            return
        if event.kind == "finished":
            self.busy.pop(event.worker, None)
            if event.worker in self.trainers:
                self._release(event.worker)
        self.emit(event)

    def _reap(self) -> None:
        """A worker that died mid-task (killed, out of memory) fails its task and is replaced;
        one that died before it could run anything is an error of the setup, not of a job."""
        from edmgrid.run.jobs import record_failed
        from edmgrid.run.store import Store

        for pool in (self.workers, self.trainers):
            for index, worker in list(pool.items()):
                if worker.proc.is_alive():
                    continue
                del pool[index]
                training = pool is self.trainers
                # an idle worker on held devices has no task of its own
                task = self.busy.pop(index, None) if training or index not in self.held else None
                if training:
                    self._release(index)
                if not worker.ready:
                    raise EdmgridError(
                        f"worker {index} exited (code {worker.proc.exitcode}) before it could "
                        "run a job; its error is above"
                    )
                if task is not None:
                    code = worker.proc.exitcode
                    message = f"worker {index} died (exit code {code}) while running the job"
                    row = record_failed(task, Store(self.root), message, "WorkerDied", None)
                    self.emit(Event(index, task.name, "finished", row=row))

    def cancel(self, task: str) -> None:
        """Kill the worker running ``task`` (a new one replaces it on the next submit)."""
        for index, running in list(self.busy.items()):
            if running.name != task:
                continue
            del self.busy[index]
            training = index in self.trainers or index in self.pending
            worker = self.trainers.get(index) if training else self.workers.pop(index, None)
            if worker is not None:
                worker.proc.kill()
                worker.proc.join(1.0)
            if training:
                self._release(index)

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
        for trainer in self.trainers.values():
            trainer.proc.terminate()
            trainer.proc.join(1.0)
        self.workers.clear()
        self.busy.clear()
        self.trainers.clear()
        self.pending.clear()
        self.held.clear()
