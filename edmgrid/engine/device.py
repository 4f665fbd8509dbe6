"""The worker's device: where every tensor of a job (training, sampling, metrics) is made."""

from __future__ import annotations

from edmgrid.lazy import torch


def worker_device() -> torch.device:
    """The first GPU this process can see (a GPU worker is pinned to its own by
    ``CUDA_VISIBLE_DEVICES``, so it is ``cuda:0``), else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
