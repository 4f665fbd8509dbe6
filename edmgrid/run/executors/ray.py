"""``--executor ray``: Ray Core tasks on a running cluster or on a local Ray started for the run
(optional extra ``edmgrid[ray]``); Ray sets each task's visible GPUs (``num_gpus``)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edmgrid.errors import EdmgridError, InputError
from edmgrid.run.executors.base import Event, Executor, Resources, execute

if TYPE_CHECKING:
    from edmgrid.run.jobs import Task


def _ray_task(task: Task, root: str, worker: int, events: Any) -> dict[str, Any]:
    """The body of a Ray task: run the task, sending events through a Ray queue."""

    def send(event: Event) -> None:
        with contextlib.suppress(Exception):  # progress is best effort
            events.put_nowait(event)

    return execute(task, root, worker, send)


class RayExecutor(Executor):
    """Ray Core tasks: ``num_gpus`` per task, results as local.

    ``address`` joins a running cluster (``auto``); without it a local Ray is started for the
    run with ``gpus`` declared GPUs (logical ones on a CPU-only machine) and stopped after.
    """

    name = "ray"
    options = ("gpus", "address")

    def __init__(self, address: str | None = None, gpus: int | None = None) -> None:
        if gpus is not None and address is not None:
            raise InputError(
                "--gpus declares the GPUs of a local Ray; a cluster (--address) has its own"
            )
        super().__init__()
        self.address, self.gpus = address, gpus
        self.started = False
        self.owns = False
        self.capacity = 0
        self.has_gpus = False
        self.running: dict[Any, tuple[int, Task]] = {}

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
                path = [str(Path(__file__).resolve().parents[3])]
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

    def resources(self) -> Resources:
        if not self.started:
            self._start()
        return Resources(slots=self.capacity, gpus=self.has_gpus, train_devices=self.capacity)

    def submit(self, task: Task, worker: int) -> None:
        self.check(task)
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

    def cancel(self, task: str) -> None:
        import ray

        for ref, (_, running) in list(self.running.items()):
            if running.name == task:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                del self.running[ref]

    def close(self, wait: bool = True) -> None:
        if not self.started:
            return
        import ray

        for _, task in list(self.running.values()):
            self.cancel(task.name)
        if self.owns:
            ray.shutdown()
        self.started = False
