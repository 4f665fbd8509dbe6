"""The arithmetic precision of a network's forward pass (official ``--fp16``/``--tf32``).

One vocabulary for training (``training.precision``) and sampling (a network model's
``precision``): ``fp32`` as is; ``tf32``: float32 tensors with TF32 matrix products and
convolutions on CUDA (10-bit mantissa inputs, float32 accumulation; the CPU has no TF32, so
there it is fp32); ``bf16``/``fp16``: ``torch.autocast`` to that type on the tensors' device,
which runs matrix products and convolutions in it and keeps reductions in float32. The
sampler's state x and its arithmetic stay float64 whatever the network's precision.
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


@contextlib.contextmanager
def forward_precision(precision: Precision, device: Device) -> Iterator[None]:
    """Run the block's network calls on ``device`` in ``precision`` (module docstring)."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device.type, dtype=dtype):
            yield
    elif precision == "tf32" and device.type == "cuda":
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
        before = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = before
    else:
        yield
