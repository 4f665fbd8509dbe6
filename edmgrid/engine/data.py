"""Loading the data sets of :mod:`edmgrid.config.data`: images (or 2-D points) in [−1, 1] with
optional class labels.

``load_data`` dispatches on the data choice's class; a plugin's data choice registers its loader
with ``@load_data.register``. Files' uint8 pixels map to [−1, 1] as x/127.5 − 1, as the official
training code does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cache, lru_cache, singledispatch
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edmgrid.config.data import DataSpec, Digits, ImageFile, Toy2D
from edmgrid.engine.datafiles import LOADERS
from edmgrid.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """x in [−1, 1], shape [N, C, H, W] (images) or [N, D] (points); labels int64 [N] or None."""

    x: Tensor
    labels: Tensor | None
    label_dim: int

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    @property
    def digest(self) -> str:
        """Content hash of the data (cache key for reference statistics and classifiers)."""
        return _digest(self.x)


def _digest(x: Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]


@singledispatch
def load_data(spec: DataSpec) -> Dataset:
    """The data set ``spec`` names."""
    raise TypeError(f"no loader for data '{spec.name}': register one with @load_data.register")


@load_data.register
def _load_digits(spec: Digits) -> Dataset:
    return _digits()


@cache
def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16 * 2 - 1).unsqueeze(1)
    return Dataset(x=x, labels=torch.from_numpy(bunch.target.astype(np.int64)), label_dim=10)


@load_data.register
def _load_toy2d(spec: Toy2D) -> Dataset:
    rng = np.random.default_rng(spec.seed)
    if spec.mixture == "swissroll":
        u = rng.uniform(0, 1, spec.n)
        angle = 1.5 * math.pi * (1 + 2 * u)
        centres = np.stack([angle * np.cos(angle), angle * np.sin(angle)], 1) / (4.5 * math.pi)
        labels = np.minimum((u * 4).astype(np.int64), 3)
    else:
        if spec.mixture == "ring8":
            a = 2 * math.pi * np.arange(8) / 8
            modes = np.stack([np.cos(a), np.sin(a)], 1)
        else:
            g = np.linspace(-1, 1, 5)
            modes = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        labels = rng.integers(len(modes), size=spec.n)
        centres = modes[labels]
    x = centres + spec.std * rng.standard_normal((spec.n, 2))
    return Dataset(
        x=torch.from_numpy(x.astype(np.float32)),
        labels=torch.from_numpy(labels),
        label_dim=int(labels.max()) + 1,
    )


@load_data.register
def _load_image_file(spec: ImageFile) -> Dataset:
    p = Path(spec.path).expanduser().resolve()
    version = (p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None
    return _image_file(spec.name, p, version)


@lru_cache(maxsize=2)
def _image_file(name: str, path: Path, version: tuple[int, int] | None) -> Dataset:
    """One decoded data set per (kind, path, mtime, size): a grid's jobs decode it once."""
    images, labels = LOADERS[name](path)
    x = torch.from_numpy(images).to(torch.float32).div_(127.5).sub_(1)
    if labels is None:
        return Dataset(x=x, labels=None, label_dim=0)
    return Dataset(x=x, labels=torch.from_numpy(labels), label_dim=int(labels.max()) + 1)
