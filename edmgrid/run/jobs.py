"""Executing one job into one result row (every executor calls this in its worker)."""

from __future__ import annotations

import os
import platform
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edmgrid import __version__
from edmgrid.errors import EdmgridError
from edmgrid.run.store import Store, atomic_write
from edmgrid.spec.job import JobSpec

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


def device_name() -> str:
    """'cuda:<visible ids> (<gpu name>)' on a GPU worker, else 'cpu'."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{visible} ({torch.cuda.get_device_name(0)})"
        return f"cuda:{visible}"
    return "cpu"


def run_job(
    job: JobSpec,
    space: str,
    store: Store,
    progress: Callable[[int, int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``job`` and write its result row; a failure becomes a failed row, not a crash.

    ``extra`` columns are added to the row (``optuna-churn``'s ``study``, ``trial``, ``stage``).
    """
    from edmgrid.engine.evaluate import evaluate

    config = job.resolved()
    row: dict[str, Any] = {"job_id": job.job_id, "space": space, "kind": "evaluate"}
    row.update(flatten(config))
    row.update(extra or {})
    start = time.perf_counter()
    try:
        row.update(evaluate(job, store.cache, progress))
        row.update(status="done", error=None, error_type=None, traceback_path=None)
    except Exception as e:  # one job's failure must not stop the grid
        log = store.logs / f"{job.job_id}.txt"
        text = traceback.format_exc()
        atomic_write(log, lambda tmp: tmp.write_text(text))
        message = str(e) if isinstance(e, EdmgridError) else f"{type(e).__name__}: {e}"
        row.update(
            status="failed", error=message, error_type=type(e).__name__, traceback_path=str(log)
        )
    row.update(
        seconds=time.perf_counter() - start,
        device=device_name(),
        host=platform.node(),
        edmgrid_version=__version__,
        created_at=datetime.now(UTC),
        config_json=_json(config),
    )
    store.write(row)
    return row


def _json(config: dict[str, Any]) -> str:
    import json

    return json.dumps(config, sort_keys=True)
