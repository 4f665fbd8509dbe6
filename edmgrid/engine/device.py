"""The worker's device: where every tensor of a job (training, sampling, metrics) is made.

A worker that the executor pinned to a GPU (``CUDA_VISIBLE_DEVICES`` naming GPU ids) uses
``cuda:0``, the one GPU it sees; one that CUDA cannot use fails its job instead of quietly
running on the CPU. A test suite on a machine without GPUs simulates them by setting
``EDMGRID_SIMULATED_GPUS=1``: a pinned worker then runs on the CPU and its rows say
``cpu (simulated GPU <id>)``.
"""

from __future__ import annotations

import os

from edmgrid.errors import JobError
from edmgrid.lazy import torch

#: Set to 1 to simulate GPUs: a worker pinned to a GPU that CUDA cannot use runs on the CPU.
SIMULATED_GPUS = "EDMGRID_SIMULATED_GPUS"


def pinned_gpus() -> list[str]:
    """The GPU ids of ``CUDA_VISIBLE_DEVICES`` (as CUDA reads it: up to the first negative id);
    empty when it is unset or names none."""
    ids = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    ids = [d for d in ids if d]
    stop = next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))
    return ids[:stop]


def worker_device() -> torch.device:
    """``cuda:0`` where CUDA can be used (a GPU worker is pinned to its own by
    ``CUDA_VISIBLE_DEVICES``, so it is the first it sees), else the CPU; a JobError for a
    worker pinned to GPUs that CUDA cannot use (unless ``EDMGRID_SIMULATED_GPUS=1``)."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    pinned = pinned_gpus()
    if pinned and os.environ.get(SIMULATED_GPUS) != "1":
        raise JobError(
            f"this worker is pinned to GPU {','.join(pinned)} (CUDA_VISIBLE_DEVICES) but CUDA "
            f"cannot use it ({cuda_unusable_reason()}); it does not fall back to the CPU: "
            "install a CUDA build of torch and check the driver, or run without GPUs"
        )
    return torch.device("cpu")


def cuda_unusable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is false, in CUDA's (or torch's) words."""
    if not torch.backends.cuda.is_built():
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as e:  # the driver's or torch's own reason
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return "no CUDA device is visible"


def describe_device() -> str:
    """The row's ``device``, where the job's tensors were: ``cuda:0 (<GPU name>, GPU <physical
    id>)``, ``cpu``, or ``cpu (simulated GPU <id>)``; a pinned worker that cannot use its GPU
    says ``cuda unusable (GPU <id>)`` (its jobs fail with the reason)."""
    physical = ",".join(pinned_gpus())
    try:
        device = worker_device()
    except JobError:
        return f"cuda unusable (GPU {physical})"
    if device.type == "cuda":
        return f"cuda:0 ({torch.cuda.get_device_name(device)}, GPU {physical or device.index})"
    return f"cpu (simulated GPU {physical})" if physical else "cpu"
