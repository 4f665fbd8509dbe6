"""Executors: where tasks run (``base.py``: the interface and its registry; one module each).

- ``serial``: in this process, one task at a time (debugging);
- ``local``: one worker process per device on this machine;
- ``ray``: Ray Core tasks on a cluster or a local Ray;
- ``slurm``: one Slurm job per task (job arrays for tasks submitted together), via submitit.
"""

from edmgrid.run.executors.base import (
    EXECUTORS,
    Emit,
    Event,
    Executor,
    Resources,
    execute,
    make_executor,
)
from edmgrid.run.executors.local import (
    CPU_WORKERS,
    LocalExecutor,
    WorkerSlot,
    assign_devices,
    visible_gpus,
)
from edmgrid.run.executors.ray import RayExecutor
from edmgrid.run.executors.serial import SerialExecutor

__all__ = [
    "CPU_WORKERS",
    "EXECUTORS",
    "Emit",
    "Event",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "Resources",
    "SerialExecutor",
    "WorkerSlot",
    "assign_devices",
    "execute",
    "make_executor",
    "visible_gpus",
]
