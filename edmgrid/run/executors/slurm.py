"""``--executor slurm``: one Slurm job per task through submitit (optional extra
``edmgrid[slurm]``); the tasks submitted in one scheduling round go in as one job array.

The results directory must be on a file system the nodes share (claims and the store work
there exactly as on one machine). Each job runs ``execute`` (the task writes its own row) and
appends its events to ``slurm/events/<task>-<attempt>.jsonl``, which the driver reads; its
submitit files (pickles, logs) are in ``slurm/<job id>_*``. A job that ends without a result
(killed, node failure, preempted and not requeued, out of time) is submitted again, up to
``max_retries`` times, then its task gets a failed row. ``detach`` submits the driver itself
as a job (``edmgrid run --detach``); ``queue`` reads Slurm's queue for ``edmgrid status``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edmgrid.config.slurm import SlurmSettings, minutes
from edmgrid.errors import EdmgridError, InputError
from edmgrid.files import atomic_write
from edmgrid.run.executors.base import Event, Executor, Resources, execute
from edmgrid.run.executors.local import limit_threads

if TYPE_CHECKING:
    from edmgrid.run.jobs import Task

#: Seconds between two reads of Slurm's queue (one ``squeue`` call for every job).
QUEUE_EVERY_S = 2.0
#: Seconds between two progress events a job writes (each is a line on the shared disk).
PROGRESS_EVERY_S = 1.0
#: Slurm job states in which a job may still produce its result.
ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise EdmgridError(
            "--executor slurm needs submitit: pip install 'edmgrid[slurm]'"
        ) from None
    return submitit


def _slurm_task(task: Task, root: str, worker: int, events: str) -> dict[str, Any]:
    """The body of a Slurm job: run the task with the job's cores, appending its events (one
    JSON line each) to ``events``."""
    limit_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))

    def send(event: Event) -> None:
        with open(events, "a") as f:
            f.write(json.dumps(asdict(event)) + "\n")

    return execute(task, root, worker, send, every=PROGRESS_EVERY_S)


def queue(name_prefix: str = "edmgrid-") -> dict[str, tuple[str, str]]:
    """This user's Slurm jobs whose name starts with ``name_prefix``: job id (``123_4`` for an
    array element) → (name, state); jobs Slurm still remembers, finished ones included."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%j|%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise EdmgridError(f"squeue failed: {out.stderr.strip() or out.returncode}")
    jobs = {}
    for line in out.stdout.splitlines():
        job_id, name, state = line.split("|", 2)
        if name.startswith(name_prefix):
            jobs[job_id] = (name, state)
    return jobs


def _nodes(partition: str | None) -> tuple[int, int]:
    """The most CPUs and GPUs (generic resources ``gpu[:type]:N``) one node of the partition
    (default: every partition) has."""
    command = ["sinfo", "-h", "-o", "%c|%G", *(["-p", partition] if partition else [])]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise EdmgridError(f"--executor slurm: sinfo failed ({e}); is Slurm reachable?") from None
    cpus, gpus = 0, 0
    for line in out.splitlines():
        cores, gres = line.split("|", 1)
        cpus = max(cpus, int(cores.rstrip("+")))
        for count in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres):
            gpus = max(gpus, int(count))
    if cpus == 0:
        where = f"partition {partition!r}" if partition else "Slurm"
        raise InputError(f"--executor slurm: {where} has no nodes", path="--partition")
    return cpus, gpus


@dataclass
class _Job:
    """A submitted task: its worker, its submitit job, which attempt, its events so far."""

    worker: int
    task: Task
    job: Any
    attempt: int
    events: Path
    offset: int = 0
    missing: int = 0  # queue reads in a row that found it gone without a result


class SlurmExecutor(Executor):
    """Slurm jobs: ``workers`` (default ``max_jobs``) in the queue at once; ``settings`` is the
    space's ``slurm:`` section, ``partition``/``account``/``time`` the flags over it."""

    name = "slurm"
    options = ("workers", "partition", "account", "time", "settings")

    def __init__(
        self,
        workers: int | None = None,
        partition: str | None = None,
        account: str | None = None,
        time: str | None = None,
        settings: SlurmSettings | None = None,
    ) -> None:
        super().__init__()
        flags = {"partition": partition, "account": account, "time": time}
        base = (settings or SlurmSettings()).model_dump()
        base.update({k: v for k, v in flags.items() if v is not None})
        try:
            self.settings = SlurmSettings.model_validate(base)
        except ValueError as e:
            raise InputError(f"--time {time}: give minutes, HH:MM:SS or D-HH:MM:SS") from e
        if workers is not None and workers < 1:
            raise InputError(f"--workers must be at least 1, not {workers}")
        self.slots = workers or self.settings.max_jobs
        self.queued: list[tuple[int, Task, int]] = []  # (worker, task, attempt) to submit
        self.running: dict[str, _Job] = {}
        self.last_queue = 0.0

    @cached_property
    def nodes(self) -> tuple[int, int]:
        return _nodes(self.settings.partition)

    def resources(self) -> Resources:
        cpus, gpus = self.nodes
        most = gpus or cpus // self.settings.cpus_per_task
        return Resources(slots=self.slots, gpus=gpus > 0, train_devices=most)

    def free(self) -> list[int]:
        busy = {w for w, _, _ in self.queued} | {j.worker for j in self.running.values()}
        return [k for k in range(self.slots) if k not in busy]

    def submit(self, task: Task, worker: int) -> None:
        self.check(task)
        self.queued.append((worker, task, 1))

    def _parameters(self, devices: int) -> dict[str, Any]:
        """sbatch options of a job whose task holds ``devices`` devices."""
        s = self.settings
        gpus = self.nodes[1] > 0
        options: dict[str, Any] = {
            "time": minutes(s.time),
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": s.cpus_per_task * (1 if gpus else devices),
            "partition": s.partition,
            "account": s.account,
            "mem": s.mem,
            "setup": s.setup,
            "gpus_per_node": devices if gpus else None,
        }
        return {k: v for k, v in options.items() if v is not None}

    @cached_property
    def submitter(self) -> Any:
        folder = Path(self.root) / "slurm"
        (folder / "events").mkdir(parents=True, exist_ok=True)
        return _submitit().SlurmExecutor(folder=folder, python=sys.executable)

    def _flush(self) -> None:
        """Submit the queued tasks: one array per number of devices."""
        queued, self.queued = self.queued, []
        for devices in sorted({task.gpus if task.kind == "train" else 1 for _, task, _ in queued}):
            group = [q for q in queued if (q[1].gpus if q[1].kind == "train" else 1) == devices]
            self.submitter.update_parameters(
                job_name=f"edmgrid-{group[0][1].space}", **self._parameters(devices)
            )
            paths = [
                Path(self.root) / "slurm" / "events" / f"{task.name}-{attempt}.jsonl"
                for _, task, attempt in group
            ]
            for path in paths:
                path.unlink(missing_ok=True)
            try:
                with self.submitter.batch():
                    jobs = [
                        self.submitter.submit(_slurm_task, task, self.root, worker, str(path))
                        for (worker, task, _), path in zip(group, paths, strict=True)
                    ]
            except Exception as e:  # sbatch refused (bad partition, account, limits)
                raise EdmgridError(f"sbatch failed: {str(e).strip().splitlines()[-1]}") from None
            for (worker, task, attempt), job, path in zip(group, jobs, paths, strict=True):
                self.running[task.name] = _Job(worker, task, job, attempt, path)

    def poll(self, timeout: float) -> None:
        if self.queued:
            self._flush()
        deadline = time.monotonic() + timeout
        while True:
            if self._deliver() or time.monotonic() >= deadline:
                return
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _deliver(self) -> bool:
        """Emit what the jobs wrote since the last call; whether there was anything."""
        delivered = False
        for job in list(self.running.values()):
            delivered |= self._events(job)
            if job.job.paths.result_pickle.exists():
                self._finish(job)
                delivered = True
        if self.running and time.monotonic() - self.last_queue >= QUEUE_EVERY_S:
            self.last_queue = time.monotonic()
            delivered |= self._check_queue()
        return delivered

    def _events(self, job: _Job) -> bool:
        try:
            with open(job.events, "rb") as f:
                f.seek(job.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        whole = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        job.offset += len(whole)
        for line in whole.splitlines():
            self.emit(Event(**json.loads(line)))
        return bool(whole)

    def _finish(self, job: _Job) -> None:
        from edmgrid.run.jobs import record_failed
        from edmgrid.run.store import Store

        del self.running[job.task.name]
        try:
            row = job.job.result()
        except Exception as e:  # raised outside run_job (which turns job errors into rows)
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            message = f"Slurm job {job.job.job_id} failed: {last}"
            row = record_failed(job.task, Store(self.root), message, "SlurmJobFailed", None)
        job.events.unlink(missing_ok=True)
        self.emit(Event(job.worker, job.task.name, "finished", row=row))

    def _check_queue(self) -> bool:
        """Jobs gone from the queue without a result: submit them again, or fail their task
        after ``max_retries`` (twice missing in a row: a result may lag on a network disk)."""
        from edmgrid.run.jobs import record_failed
        from edmgrid.run.store import Store

        states = {job_id: state for job_id, (_, state) in queue().items()}
        changed = False
        for job in list(self.running.values()):
            state = states.get(job.job.job_id, "gone")
            if state in ALIVE or job.job.paths.result_pickle.exists():
                job.missing = 0
                continue
            job.missing += 1
            if job.missing < 2:
                continue
            del self.running[job.task.name]
            changed = True
            if job.attempt <= self.settings.max_retries:
                self.queued.append((job.worker, job.task, job.attempt + 1))
                continue
            message = (
                f"Slurm job {job.job.job_id} ended {state} without a result "
                f"({job.attempt} attempts; log: {job.job.paths.stderr})"
            )
            row = record_failed(job.task, Store(self.root), message, "SlurmJobFailed", None)
            self.emit(Event(job.worker, job.task.name, "finished", row=row))
        if self.queued:
            self._flush()
        return changed

    def cancel(self, task: str) -> None:
        self.queued = [q for q in self.queued if q[1].name != task]
        job = self.running.pop(task, None)
        if job is not None:
            job.job.cancel(check=False)

    def close(self, wait: bool = True) -> None:
        for name in list(self.running):
            self.cancel(name)
        self.queued.clear()


def detach(
    argv: list[str], root: Path, space: str, settings: SlurmSettings | None = None, **flags: Any
) -> str:
    """Submit ``edmgrid ARGV`` (a run without ``--detach``) as a Slurm job from this folder;
    its id, also recorded in ``ROOT/slurm/driver-<space>.json`` for ``edmgrid status``."""
    submitit = _submitit()
    executor = SlurmExecutor(settings=settings, **flags)
    folder = root.resolve() / "slurm"
    submitter = submitit.SlurmExecutor(folder=folder, python=sys.executable)
    options = executor._parameters(1)
    options.pop("gpus_per_node", None)  # the driver only waits
    options.update(cpus_per_task=1, time=minutes(executor.settings.driver_time))
    submitter.update_parameters(job_name=f"edmgrid-{space}-driver", **options)
    command = [sys.executable, "-c", "from edmgrid.cli import main; main()", *argv]
    function = submitit.helpers.CommandFunction(command, cwd=os.getcwd())
    try:
        job = submitter.submit(function)
    except Exception as e:
        raise EdmgridError(f"sbatch failed: {str(e).strip().splitlines()[-1]}") from None
    record = {"job_id": job.job_id, "space": space, "argv": argv, "log": str(job.paths.stdout)}
    path = folder / f"driver-{space}.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return str(job.job_id)


def drivers(root: Path) -> list[dict[str, Any]]:
    """The records of the detached drivers of a results directory (see ``detach``)."""
    records = []
    for path in sorted((root / "slurm").glob("driver-*.json")):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text()))
    return records
