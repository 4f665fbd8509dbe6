"""Scheduler test helpers: a stand-in for ``edmgrid.engine.train``, small spaces to run, and
``edmgrid run`` as a subprocess.

It lives in its own module (not a test file) so that worker processes (spawned or Ray) can
import it by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edmgrid.errors import JobError
from edmgrid.run.jobs import Progress
from edmgrid.run.store import atomic_write
from edmgrid.spec.job import JobSpec, content_hash
from edmgrid.spec.space import Space, load_space

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FakeTrainer:
    """'Trains' one model per data set: key = hash of the job's data, checkpoint = a tiny file.

    Every training appends ``<key> <pid>`` to ``log``; ``fail``/``die`` name a toy2d mixture
    whose training raises / kills its own process.
    """

    log: str
    seconds: float = 0.0
    fail: str | None = None
    die: str | None = None

    def key(self, job: JobSpec) -> str | None:
        return content_hash(job.data.model_dump(mode="json"))

    def checkpoint(self, cache_dir: Path, key: str) -> Path:
        return cache_dir / "checkpoints" / f"{key}.pt"

    def train(self, job: JobSpec, cache_dir: Path, progress: Progress | None) -> dict[str, Any]:
        key = self.key(job)
        assert key is not None
        with open(self.log, "a") as f:
            f.write(f"{key} {os.getpid()}\n")
        mixture = getattr(job.data, "mixture", None)
        if mixture == self.die:
            os._exit(9)
        for step in range(1, 5):
            time.sleep(self.seconds / 4)
            if progress:
                progress(step * 250, 1000)
        if mixture == self.fail:
            raise JobError("loss diverged")
        atomic_write(self.checkpoint(cache_dir, key), lambda tmp: tmp.write_bytes(b"weights"))
        return {"images": 1000, "final_loss": 0.25}

    def trainings(self) -> list[str]:
        """The keys trained so far, in order (one per call of ``train``)."""
        if not os.path.exists(self.log):
            return []
        return [line.split()[0] for line in open(self.log).read().splitlines()]


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


def edmgrid_run(space: Path, results: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``edmgrid run SPACE -r RESULTS EXTRA…`` in a fresh interpreter (output piped)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "from edmgrid.cli import main; main()"
    args = ["run", str(space), "-r", str(results), *extra]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
