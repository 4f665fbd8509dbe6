"""The arithmetic precision of a network's forward pass (official ``--fp16``/``--tf32``).

One vocabulary and one implementation for training (``training.precision``) and sampling (a
network model's ``sampling_precision``): ``fp32`` as is (the official default: TF32 off);
``tf32``: float32 tensors with TF32 matrix products and convolutions on CUDA (10-bit mantissa
inputs, float32 accumulation; the CPU has no TF32, so there it is fp32); ``bf16``/``fp16``:
``torch.autocast`` to that type on the tensors' device, which runs matrix products and
convolutions in it and keeps reductions in float32. Weights stay float32, and the sampler's
state x and its arithmetic stay float64 whatever the network's precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from edmgrid.lazy import torch

if TYPE_CHECKING:
    from torch import device as Device

Precision = Literal["fp32", "tf32", "bf16", "fp16"]

#: The official code's default (``--fp16=False --tf32=False``).
DEFAULT: Precision = "fp32"


def autocast(precision: Precision, device: Device) -> torch.autocast:
    """``torch.autocast`` to bf16/fp16 on ``device`` for those precisions, else disabled."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@contextlib.contextmanager
def matmul_precision(precision: Precision, device: Device) -> Iterator[None]:
    """On CUDA: TF32 only for ``tf32``, reduced-precision fp16 reductions off (as the official
    loop sets them), cuDNN autotuning on (official ``--bench``); restored after the block."""
    if device.type != "cuda":
        yield
        return
    backends = torch.backends
    saved = (
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.allow_tf32,
        backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        backends.cudnn.benchmark,
    )
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = precision == "tf32"
    backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (
            backends.cuda.matmul.allow_tf32,
            backends.cudnn.allow_tf32,
            backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
            backends.cudnn.benchmark,
        ) = saved


@contextlib.contextmanager
def forward_precision(precision: Precision, device: Device) -> Iterator[None]:
    """Run the block's network calls on ``device`` in ``precision`` (module docstring)."""
    with matmul_precision(precision, device), autocast(precision, device):
        yield
