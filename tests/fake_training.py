"""Scheduler test helpers: a stand-in for ``edmgrid.engine.train``, small spaces to run, and
``edmgrid`` as a subprocess (optionally with the stand-in trainer and a log of executed tasks).

It lives in its own module (not a test file) so that worker processes (spawned or Ray) can
import it by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from edmgrid.config.job import JobSpec
from edmgrid.config.space import Space, load_space
from edmgrid.engine.progress import Progress
from edmgrid.errors import JobError
from edmgrid.files import atomic_write, content_hash, load_cached
from edmgrid.run.jobs import Task

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FakeTrainer:
    """'Trains' one model per data set: key = hash of the job's data, checkpoint = a tiny
    ``torch.save`` file.

    As the real trainer, it reads an existing checkpoint back instead of training again.
    Every training appends ``<key> <pid>`` to ``log`` when it starts and ``<key> <pid> done``
    once its checkpoint is written; ``fail``/``die`` name a toy2d mixture whose training raises
    / kills its own process; with ``rendezvous`` = n, a training finishes only once n trainings
    have started (so n must run at once, whatever the machine's load).
    """

    log: str
    seconds: float = 0.0
    fail: str | None = None
    die: str | None = None
    rendezvous: int = 0

    def key(self, job: JobSpec) -> str | None:
        return content_hash(job.data.model_dump(mode="json"))

    def checkpoint(self, cache_dir: Path, key: str) -> Path:
        return cache_dir / "checkpoints" / f"{key}.pt"

    def train(
        self, job: JobSpec, cache_dir: Path, progress: Progress | None, devices: int = 1
    ) -> dict[str, Any]:
        key = self.key(job)
        assert key is not None
        path = self.checkpoint(cache_dir, key)
        row = {"images": 1000, "final_loss": 0.25, "devices": devices}
        row["threads"] = torch.get_num_threads()
        if load_cached(path, cache_dir) is not None:
            return {**row, "cached": True}
        self.note(f"{key} {os.getpid()}")
        mixture = getattr(job.data, "mixture", None)
        if mixture == self.die:
            os._exit(9)
        deadline = time.monotonic() + 120
        while len(self.trainings()) < self.rendezvous:
            if time.monotonic() > deadline:
                raise JobError(f"only {len(self.trainings())} of {self.rendezvous} trainings ran")
            time.sleep(0.05)
        for step in range(1, 5):
            time.sleep(self.seconds / 4)
            if progress:
                progress(step * 250, 1000)
        if mixture == self.fail:
            raise JobError("loss diverged")
        state = {"weights": torch.zeros(4)}
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        self.note(f"{key} {os.getpid()} done")
        return row

    def note(self, line: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"{line}\n")

    def lines(self) -> list[list[str]]:
        """The log, split into fields."""
        if not os.path.exists(self.log):
            return []
        return [line.split() for line in open(self.log).read().splitlines()]

    def trainings(self) -> list[str]:
        """The keys trained so far, in order (one per training started)."""
        return [line[0] for line in self.lines() if len(line) == 2]

    def completed(self) -> list[str]:
        """The keys whose training wrote a checkpoint, once per training."""
        return [line[0] for line in self.lines() if line[2:] == ["done"]]


def install(log: str, seconds: float) -> None:
    """In this process: ``FakeTrainer(log, seconds)`` trains for ``run_space``, and every task
    that finishes here (serial executor) appends ``<task name> <pid>`` to ``log + ".tasks"``."""
    import edmgrid.run.jobs
    import edmgrid.run.runner

    trainer = FakeTrainer(log=log, seconds=seconds)
    edmgrid.run.runner.EngineTrainer = lambda: trainer
    real = edmgrid.run.jobs.run_job

    def run_job(task: Task, store: Any, progress: Progress | None = None) -> dict[str, Any]:
        row = real(task, store, progress)
        with open(f"{log}.tasks", "a") as f:
            f.write(f"{task.name} {os.getpid()}\n")
        return row

    edmgrid.run.jobs.run_job = run_job


def toy_space(
    folder: Path, name: str, grid: dict[str, list[Any]], seeds: str = "0-15", **base: Any
) -> Space:
    """A space of cheap analytic toy2d jobs (Euler, few steps, raw Fréchet distance)."""
    body = {
        "name": name,
        "base": {
            "data": {"name": "toy2d", "n": 256},
            "model": {"kind": "analytic"},
            "sampler": {"solver": {"name": "euler"}, "timesteps": {"name": "edm", "num_steps": 4}},
            "metrics": [{"name": "fd_raw"}],
            "seeds": seeds,
            **base,
        },
        "grid": grid,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_space(path)


def claims_of(results: Path, pid: int) -> list[str]:
    """The names of the tasks that process ``pid`` holds claims on."""
    claims = (results / "claims").glob("*.claim")
    return [p.stem for p in claims if json.loads(p.read_text() or "{}").get("pid") == pid]


def edmgrid(
    *args: str | Path, fake: Path | None = None, seconds: float = 0.0
) -> subprocess.Popen[bytes]:
    """``edmgrid ARGS…`` in a fresh interpreter (output piped); with ``fake``, after
    ``install(fake, seconds)``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    code = "from edmgrid.cli import main; main()"
    if fake is not None:
        code = f"import fake_training; fake_training.install({str(fake)!r}, {seconds}); {code}"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def edmgrid_run(
    space: Path, results: Path, *extra: str, fake: Path | None = None, seconds: float = 0.0
) -> subprocess.Popen[bytes]:
    """``edmgrid run SPACE -r RESULTS EXTRA…`` (see ``edmgrid``)."""
    return edmgrid("run", space, "-r", results, *extra, fake=fake, seconds=seconds)
