"""The ``slurm:`` section of a space: how ``--executor slurm`` asks Slurm for resources.

Command-line flags (``--partition``, ``--account``, ``--time``) override it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from edmgrid.registry import Strict

_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def minutes(text: str) -> int:
    """Slurm's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole
    minutes, rounded up; ValueError for anything else."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"time {text!r}: give minutes, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, mins, secs = int(first), int(second or 0), int(third or 0)
        mins += int(days) * 24 * 60
    elif third is not None:  # HH:MM:SS
        hours, mins, secs = int(first), int(second), int(third)
    else:  # MM[:SS]
        hours, mins, secs = 0, int(first), int(second or 0)
    total = hours * 60 + mins + (secs + 59) // 60
    if total < 1:
        raise ValueError(f"time {text!r}: at least one minute")
    return total


SlurmTime = Annotated[str, AfterValidator(lambda text: (minutes(text), text)[1])]


class SlurmSettings(Strict):
    """Resources of the Slurm jobs of a run: one job per task (an array for tasks submitted
    together), each with ``cpus_per_task`` cores and, where the partition has GPUs, one GPU
    (a training: ``--train-gpus``; on CPU-only nodes ``--train-gpus`` × ``cpus_per_task``)."""

    partition: str | None = None
    account: str | None = None
    time: SlurmTime = "60"
    cpus_per_task: int = Field(1, ge=1)
    mem: str | None = None
    #: Jobs in Slurm's queue at once (``--workers`` overrides it).
    max_jobs: int = Field(64, ge=1)
    #: Submissions of a task whose job ended without a result (killed, node failure,
    #: preempted, out of time) before it becomes a failed row.
    max_retries: int = Field(2, ge=0)
    #: Shell lines run before each job (``module load cuda``, ``source venv/bin/activate``).
    setup: list[str] = Field(default_factory=list)
    #: Time limit of the driver job of ``edmgrid run --detach`` (it waits for the whole grid).
    driver_time: SlurmTime = "7-00:00:00"
