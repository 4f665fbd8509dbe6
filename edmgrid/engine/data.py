"""Loading the data sets of :mod:`edmgrid.config.data`: images (or 2-D points) in [−1, 1] with
optional class labels.

``load_data`` dispatches on the data choice's class; a plugin's data choice registers its loader
with ``@load_data.register``. Files' uint8 pixels map to [−1, 1] as x/127.5 − 1, as the official
training code does (``to_unit``).
"""

from __future__ import annotations

import hashlib
import math
from functools import cache, lru_cache, singledispatch
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edmgrid.config.data import DataSpec, Digits, ImageFile, StreamableFile, Toy2D
from edmgrid.engine.datafiles import LOADERS, STREAMERS, ImageFiles
from edmgrid.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor


class Dataset:
    """Images [N, C, H, W] or points [N, D] with labels int64 [N] (or None) of ``label_dim``
    classes.

    ``x`` is float32 in [−1, 1]. Images read from files are held as their uint8 ``pixels`` (a
    quarter of the memory; training converts each batch on the device) and ``x`` is made from
    them on first use; a streamed data set holds only its ``files`` (``x`` then decodes them all,
    for the metrics and the analytic denoiser, which need every image) and the number of
    DataLoader ``workers`` that read its training batches.
    """

    def __init__(
        self,
        x: Tensor | None = None,
        labels: Tensor | None = None,
        label_dim: int = 0,
        *,
        pixels: Tensor | None = None,
        files: ImageFiles | None = None,
        workers: int = 0,
    ) -> None:
        if (x is None) + (pixels is None) + (files is None) != 2:
            raise ValueError("a Dataset holds exactly one of x, pixels and files")
        self._x, self.pixels, self.files = x, pixels, files
        self.labels, self.label_dim, self.workers = labels, label_dim, workers

    @property
    def x(self) -> Tensor:
        if self._x is None:
            pixels = self.pixels
            if pixels is None:
                assert self.files is not None
                pixels = torch.from_numpy(self.files.decode_all())
            self._x = to_unit(pixels)
        return self._x

    def __len__(self) -> int:
        source = self._x if self._x is not None else self.pixels
        return len(source) if source is not None else len(self.files or ())

    @property
    def sample_shape(self) -> tuple[int, ...]:
        source = self._x if self._x is not None else self.pixels
        if source is None:
            assert self.files is not None
            return tuple(self.files.image(0).shape)
        return tuple(source.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def digest(self) -> str:
        """Content hash of the data (cache key for reference statistics and classifiers)."""
        return _digest(self.x)


def _digest(x: Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]


def to_unit(pixels: Tensor) -> Tensor:
    """uint8 pixels → float32 in [−1, 1]: p/127.5 − 1 (official ``training_loop``)."""
    return pixels.to(torch.float32).div_(127.5).sub_(1)


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
    stream = isinstance(spec, StreamableFile) and spec.stream
    workers = spec.workers if isinstance(spec, StreamableFile) else 0
    return _image_file(spec.name, p, version, stream, workers)


@lru_cache(maxsize=2)
def _image_file(
    name: str, path: Path, version: tuple[int, int] | None, stream: bool, workers: int
) -> Dataset:
    """One data set per (kind, path, mtime, size): a grid's jobs decode it once (as uint8), or
    index its files once when it is streamed."""
    if stream:
        files = STREAMERS[name](path)
        images, labels = None, files.labels
    else:
        files, (images, labels) = None, LOADERS[name](path)
    pixels = torch.from_numpy(images) if images is not None else None
    if labels is None:
        return Dataset(pixels=pixels, files=files, workers=workers)
    return Dataset(
        labels=torch.from_numpy(labels),
        label_dim=int(labels.max()) + 1,
        pixels=pixels,
        files=files,
        workers=workers,
    )
