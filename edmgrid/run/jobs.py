"""Executing one task (a training or an evaluation) into one result row; every executor
calls ``run_job`` in its worker."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from edmgrid.config.job import JobSpec
from edmgrid.engine.device import describe_device as device_name
from edmgrid.engine.device import worker_device
from edmgrid.engine.progress import Progress
from edmgrid.errors import EdmgridError
from edmgrid.files import atomic_write
from edmgrid.run.provenance import provenance
from edmgrid.run.store import Store

DISCRIMINATORS = ("name", "arch", "kind")
#: Labels that keep their own name as a column (``family``/``config`` of a Table 2 preset).
LABELS = ("family", "config", "budget")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Axis columns: a choice at key k gives column k (its name) and k_param for each parameter.

    ``{"sampler": {"solver": {"name": "heun", "S_churn": 0}}}`` → ``{"solver": "heun",
    "solver_S_churn": 0}``; a container without a choice (``sampler``, ``training``) passes its
    parent's prefix on, and a choice nested in a choice (``model.precond``) is an axis of its own.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            tag = next((value[k] for k in DISCRIMINATORS if k in value), None)
            column = key if tag is not None else f"{prefix}{key}"
            if tag is not None:
                out[column] = tag
                rest = {k: v for k, v in value.items() if k not in DISCRIMINATORS}
                out.update(flatten(rest, f"{column}_"))
            else:
                out.update(flatten(value, prefix))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out[f"{prefix}{key}"] = ",".join(str(v.get("name", "")) for v in value)
        elif isinstance(value, list):
            out[f"{prefix}{key}"] = ",".join(str(v) for v in value)
        else:
            out[key if key in LABELS else f"{prefix}{key}"] = value
    return out


class Trainer(Protocol):
    """Where trained checkpoints come from (``edmgrid.engine.train``; tests pass a fake)."""

    def key(self, job: JobSpec) -> str | None:
        """Content hash of the job's training config; None when its model needs no training."""
        ...

    def checkpoint(self, cache_dir: Path, key: str) -> Path:
        """Where the checkpoint of training ``key`` lives; it exists once training is done, as a
        ``torch.save`` file (``Store.has_checkpoint`` checks it is whole)."""
        ...

    def train(
        self, job: JobSpec, cache_dir: Path, progress: Progress | None, devices: int = 1
    ) -> dict[str, Any]:
        """Train the job's model on ``devices`` devices (the task's K GPUs, visible to it as
        ``CUDA_VISIBLE_DEVICES``, else K CPU processes), writing its checkpoint atomically and
        resuming from its last snapshot; returns row columns."""
        ...


@dataclass(frozen=True)
class EngineTrainer:
    """The real trainer: ``edmgrid.engine.train`` (imported when first used)."""

    def key(self, job: JobSpec) -> str | None:
        from edmgrid.engine.train import training_key

        return training_key(job)

    def checkpoint(self, cache_dir: Path, key: str) -> Path:
        from edmgrid.engine.train import checkpoint_path

        return checkpoint_path(cache_dir, key)

    def train(
        self, job: JobSpec, cache_dir: Path, progress: Progress | None, devices: int = 1
    ) -> dict[str, Any]:
        from edmgrid.engine.train import train

        return train(job, cache_dir, progress, devices)


@dataclass(frozen=True)
class Task:
    """A node of the job graph: one training (``key``: its training key) or one evaluation
    (``key``: the job id) that needs the training ``training_key`` first, if any."""

    kind: Literal["train", "evaluate"]
    key: str
    job: JobSpec
    space: str
    training_key: str | None = None
    trainer: Trainer = field(default_factory=EngineTrainer)
    #: Devices a training holds (``--train-gpus``); the executor provides them.
    gpus: int = 1
    #: Columns added to an evaluation's row (``optuna-churn``'s ``study``, ``trial``, ``stage``).
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def evaluation(
        cls,
        job: JobSpec,
        space: str,
        trainer: Trainer | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Task:
        """The evaluation task of ``job`` (and the training it needs, by key)."""
        trainer = trainer or EngineTrainer()
        return cls("evaluate", job.job_id, job, space, trainer.key(job), trainer, extra=extra or {})

    @property
    def name(self) -> str:
        """Unique among trainings and evaluations: names its claim and its traceback file."""
        return f"train-{self.key}" if self.kind == "train" else self.key

    @property
    def label(self) -> str:
        return f"{self.kind} {self.key[:8]}"


def run_job(task: Task, store: Store, progress: Progress | None = None) -> dict[str, Any]:
    """Run a training or an evaluation and write its row; a failure becomes a failed row."""
    row = _row(task)
    start, started_at = time.perf_counter(), datetime.now(UTC)
    try:
        worker_device()  # a worker pinned to a GPU it cannot use fails here, saying why
        if task.kind == "train":
            row.update(task.trainer.train(task.job, store.cache, progress, devices=task.gpus))
        else:
            from edmgrid.engine.evaluate import evaluate

            row.update(evaluate(task.job, store.cache, progress))
        row.update(status="done", error=None, error_type=None, traceback_path=None)
    except Exception as e:  # one job's failure must not stop the grid
        log = store.logs / f"{task.name}.txt"
        text = traceback.format_exc()
        atomic_write(log, lambda tmp: tmp.write_text(text))
        message = str(e) if isinstance(e, EdmgridError) else f"{type(e).__name__}: {e}"
        row.update(
            status="failed", error=message, error_type=type(e).__name__, traceback_path=str(log)
        )
    row.update(seconds=time.perf_counter() - start, started_at=started_at)
    return _write(task, store, row)


def record_failed(
    task: Task, store: Store, error: str, error_type: str, traceback_path: str | None
) -> dict[str, Any]:
    """Write the failed row of a task that could not run (its training failed, its worker died)."""
    row = _row(task)
    row.update(
        status="failed",
        error=error,
        error_type=error_type,
        traceback_path=traceback_path,
        seconds=0.0,
        started_at=datetime.now(UTC),
    )
    return _write(task, store, row)


def _row(task: Task) -> dict[str, Any]:
    config = task.job.resolved()
    if task.kind == "train":
        config = {"data": config["data"], "model": config["model"]}
        row: dict[str, Any] = {"training_key": task.key, "space": task.space, "kind": "train"}
    else:
        row = {"job_id": task.key, "space": task.space, "kind": "evaluate"}
        row["training_key"] = task.training_key
    row.update(flatten(config))
    row.update(task.extra)
    row["config_json"] = _json(config)
    return row


def _write(task: Task, store: Store, row: dict[str, Any]) -> dict[str, Any]:
    row.update(
        device=device_name(),
        **provenance(),
        created_at=datetime.now(UTC),
    )
    (store.write_training if task.kind == "train" else store.write)(row)
    return row


def _json(config: dict[str, Any]) -> str:
    import json

    return json.dumps(config, sort_keys=True)
