"""Datasets: images (or 2-D points) in [−1, 1] with optional class labels.

Besides the built-in ``digits`` and ``toy2d``, four choices read a local file the user names with
``path`` (formats: :mod:`edmgrid.engine.datafiles`): ``cifar10``, ``image_folder``, ``npz`` and
``edm_zip``. Their uint8 pixels map to [−1, 1] as x/127.5 − 1, as the official training code does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from edmgrid.engine.datafiles import LOADERS
from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

datasets = Registry("data", "training / reference data set")


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


class DataSpec(Choice):
    """A data set, loaded by name."""

    name: str

    def load(self) -> Dataset:
        raise NotImplementedError


@datasets.register
class Digits(DataSpec):
    """scikit-learn's bundled 8×8 digits (1797 images, 10 classes), scaled to [−1, 1]."""

    name: Literal["digits"] = "digits"

    def load(self) -> Dataset:
        return _digits()


@cache
def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16 * 2 - 1).unsqueeze(1)
    return Dataset(x=x, labels=torch.from_numpy(bunch.target.astype(np.int64)), label_dim=10)


MIXTURES = ("ring8", "grid25", "swissroll")


@datasets.register
class Toy2D(DataSpec):
    """Named 2-D mixtures (ring8: 8 Gaussians on the unit circle; grid25: a 5×5 grid; swissroll)."""

    name: Literal["toy2d"] = "toy2d"
    mixture: Literal["ring8", "grid25", "swissroll"] = "ring8"
    n: int = Field(2048, ge=16)
    std: float = Field(0.05, gt=0)
    seed: int = 0

    def load(self) -> Dataset:
        rng = np.random.default_rng(self.seed)
        if self.mixture == "swissroll":
            u = rng.uniform(0, 1, self.n)
            angle = 1.5 * math.pi * (1 + 2 * u)
            centres = np.stack([angle * np.cos(angle), angle * np.sin(angle)], 1) / (4.5 * math.pi)
            labels = np.minimum((u * 4).astype(np.int64), 3)
        else:
            if self.mixture == "ring8":
                a = 2 * math.pi * np.arange(8) / 8
                modes = np.stack([np.cos(a), np.sin(a)], 1)
            else:
                g = np.linspace(-1, 1, 5)
                modes = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
            labels = rng.integers(len(modes), size=self.n)
            centres = modes[labels]
        x = centres + self.std * rng.standard_normal((self.n, 2))
        label_dim = int(labels.max()) + 1
        return Dataset(
            x=torch.from_numpy(x.astype(np.float32)),
            labels=torch.from_numpy(labels),
            label_dim=label_dim,
        )


class ImageFile(DataSpec):
    """Images read from a local file or folder (``path``), with their class labels if any."""

    input_paths = ("path",)
    path: str = Field(min_length=1)

    def load(self) -> Dataset:
        p = Path(self.path).expanduser().resolve()
        version = (p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None
        return _image_file(self.name, p, version)


@lru_cache(maxsize=2)
def _image_file(name: str, path: Path, version: tuple[int, int] | None) -> Dataset:
    """One decoded data set per (kind, path, mtime, size): a grid's jobs decode it once."""
    images, labels = LOADERS[name](path)
    x = torch.from_numpy(images).to(torch.float32).div_(127.5).sub_(1)
    if labels is None:
        return Dataset(x=x, labels=None, label_dim=0)
    return Dataset(x=x, labels=torch.from_numpy(labels), label_dim=int(labels.max()) + 1)


@datasets.register
class Cifar10(ImageFile):
    """CIFAR-10 training split: ``cifar-10-python.tar.gz`` or its ``cifar-10-batches-py/``."""

    name: Literal["cifar10"] = "cifar10"


@datasets.register
class ImageFolder(ImageFile):
    """A folder of same-sized PNG/JPEG images; labels from its ``dataset.json`` if present."""

    name: Literal["image_folder"] = "image_folder"


@datasets.register
class Npz(ImageFile):
    """An ``.npz`` with uint8 ``images`` (NHWC or NCHW) and optional integer ``labels``."""

    name: Literal["npz"] = "npz"


@datasets.register
class EDMZip(ImageFile):
    """The official EDM dataset zip (``dataset_tool.py`` output) with ``dataset.json`` labels."""

    name: Literal["edm_zip"] = "edm_zip"
