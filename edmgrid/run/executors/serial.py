"""``--executor serial``: each task in this process, one at a time (debugging)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edmgrid.run.executors.base import Event, Executor, Resources, execute

if TYPE_CHECKING:
    from edmgrid.run.jobs import Task


class SerialExecutor(Executor):
    """Runs each task in this process when polled."""

    name = "serial"

    def __init__(self) -> None:
        super().__init__()
        self.task: Task | None = None

    def free(self) -> list[int]:
        return [] if self.task else [0]

    def submit(self, task: Task, worker: int) -> None:
        self.task = task

    def poll(self, timeout: float) -> None:
        task, self.task = self.task, None
        if task is None:
            time.sleep(timeout)
            return
        row = execute(task, self.root, 0, self.emit)
        self.emit(Event(0, task.name, "finished", row=row))

    def cancel(self, task: str) -> None:
        if self.task is not None and self.task.name == task:
            self.task = None

    def close(self, wait: bool = True) -> None:
        self.task = None

    def resources(self) -> Resources:
        return Resources(slots=1, gpus=False, train_devices=1)
