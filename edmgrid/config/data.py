"""The ``data:`` axis: which data set a job trains on and measures against.

Besides the built-in ``digits`` and ``toy2d``, four choices read a local file the user names with
``path`` (formats: :mod:`edmgrid.engine.datafiles`): ``cifar10``, ``image_folder``, ``npz`` and
``edm_zip``. These are the schemas; :func:`edmgrid.engine.data.load_data` loads each.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar, Literal

from pydantic import Field

from edmgrid.registry import Choice, Registry

datasets = Registry("data", "training / reference data set")


class DataSpec(Choice, ABC):
    """A data set, loaded by name: a new one is a registered subclass with a ``name`` literal,
    and its loader registered with ``edmgrid.engine.data.load_data.register``.

    Two properties of the data that Table 2's training configurations depend on (see
    :func:`edmgrid.config.table2.for_data`): whether a mirrored image is still a valid sample
    (the paper's dataset x-flips, Table 7), and σ_data, the standard deviation of the training
    data in EDM's preconditioning and loss (Eq. 7; 0.5 for the paper's images in [−1, 1]).
    """

    name: str
    xflip_valid: ClassVar[bool] = True
    sigma_data: ClassVar[float] = 0.5


@datasets.register
class Digits(DataSpec):
    """scikit-learn's bundled 8×8 digits (1797 images, 10 classes), scaled to [−1, 1].

    Mirrored digits are not digits (a mirrored 2, 3, 4, 7 or 9 is no glyph of the set), so
    x-flips are invalid; the pixel standard deviation is 0.752 (measured over all 1797 images).
    """

    name: Literal["digits"] = "digits"
    xflip_valid: ClassVar[bool] = False
    sigma_data: ClassVar[float] = 0.75


MIXTURES = ("ring8", "grid25", "swissroll")


@datasets.register
class Toy2D(DataSpec):
    """Named 2-D mixtures (ring8: 8 Gaussians on the unit circle; grid25: a 5×5 grid; swissroll)."""

    name: Literal["toy2d"] = "toy2d"
    mixture: Literal["ring8", "grid25", "swissroll"] = "ring8"
    n: int = Field(2048, ge=16)
    std: float = Field(0.05, gt=0)
    seed: int = 0


class ImageFile(DataSpec):
    """Images read from a local file or folder (``path``), with their class labels if any."""

    input_paths = ("path",)
    path: str = Field(min_length=1)


@datasets.register
class Cifar10(ImageFile):
    """CIFAR-10 training split: ``cifar-10-python.tar.gz`` or its ``cifar-10-batches-py/``."""

    name: Literal["cifar10"] = "cifar10"


class StreamableFile(ImageFile):
    """One file per image. ``stream: true`` reads training batches through a torch DataLoader
    with ``workers`` processes instead of holding the images in memory (as uint8: N·C·H·W
    bytes, 150 MB for CIFAR-10): for data sets that do not fit. A streamed training draws its
    image indices from a per-step generator (so workers can read ahead), another random
    stream than in memory, so ``stream`` is part of the training key; ``workers`` is not."""

    stream: bool = False
    workers: int = Field(4, ge=0)


@datasets.register
class ImageFolder(StreamableFile):
    """A folder of same-sized PNG/JPEG images; labels from its ``dataset.json`` if present."""

    name: Literal["image_folder"] = "image_folder"


@datasets.register
class Npz(ImageFile):
    """An ``.npz`` with uint8 ``images`` (NHWC or NCHW) and optional integer ``labels``."""

    name: Literal["npz"] = "npz"


@datasets.register
class EDMZip(StreamableFile):
    """The official EDM dataset zip (``dataset_tool.py`` output) with ``dataset.json`` labels."""

    name: Literal["edm_zip"] = "edm_zip"
