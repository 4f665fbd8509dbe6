"""Fréchet Inception Distance (EDM protocol, paper App. F.1) from local Inception-v3 weights.

FID compares 2048-d Inception-v3 pool features of generated images with those of the whole
dataset: ‖μ−μ_r‖² + tr(Σ + Σ_r − 2·sqrtm(Σ·Σ_r)), with statistics in float64. The paper reports
the minimum over three runs of 50,000 images (seeds :func:`paper_seed_ranges`).

edmgrid never downloads weights. Accepted Inception weight files (:func:`load_inception`):

1. **pytorch-fid state dict** ``pt_inception-2015-12-05-6726825d.pth``: loaded with
   ``torch.load(weights_only=True)`` (no code runs) into :class:`InceptionFeatures`, our own
   FID Inception-v3 whose parameter names match the file's keys (strict load).
2. **TorchScript** ``inception-2015-12-05.pt`` (as used by clean-fid and StyleGAN2-ADA): loaded
   with ``torch.jit.load`` and called as ``model(x, return_features=True)`` with ``x`` uint8
   ``[N, 3, H, W]``; it must resize internally and return ``[N, 2048]`` features.
3. **NVlabs pickle** ``inception-2015-12-05.pkl`` (StyleGAN3's detector, the one EDM uses):
   unpickled with :mod:`pickle`, which can run code, so only because the user named the file and
   only when its name ends in ``.pkl``; same call convention as 2. If the pickle refers to modules
   of the NVlabs code (``torch_utils``, ``dnnlib``), they must be importable.

A ``.pkl`` name selects format 3; otherwise the content decides between 2 (a TorchScript zip
holds ``constants.pkl``) and 1, whatever the extension. Give the path with ``--inception PATH``,
the environment variable ``EDMGRID_INCEPTION``, or ``metric: {name: fid, inception: PATH}`` in
the space; :func:`resolve_inception_path` gives an explicit path precedence over the variable.

Format 1 follows pytorch-fid's preprocessing (PyTorch bilinear resize to 299x299, then [−1, 1]);
formats 2 and 3 use NVlabs' own resize, so their FIDs can differ slightly from format 1's.
"""

from __future__ import annotations

import abc
import hashlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edmgrid.errors import DataError
from edmgrid.files import atomic_write, read_or_quarantine

ENV_VAR = "EDMGRID_INCEPTION"
FEATURE_DIM = 2048
INPUT_SIZE = 299

WEIGHTS_HELP = (
    "FID needs Inception-v3 weights in a local file (edmgrid never downloads). Accepted: "
    "(1) pytorch-fid's state dict pt_inception-2015-12-05-6726825d.pth, "
    "(2) a TorchScript inception-2015-12-05.pt (clean-fid / StyleGAN2-ADA), or "
    "(3) NVlabs' inception-2015-12-05.pkl (the detector EDM uses). "
    f"Give its path with --inception PATH, the environment variable {ENV_VAR}=PATH, "
    "or `metric: {name: fid, inception: PATH}` in the space."
)


# ---------------------------------------------------------------------------------------------
# Statistics and the Fréchet distance


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``features`` [N, D] in float64: Σ = (Σ f fᵀ − N μμᵀ)/(N−1)."""
    moments = _Moments()
    moments.add(features)
    return moments.finish()


class _Moments:
    """Running Σf and Σffᵀ in float64, so features never have to be held all at once."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {list(f.shape)}")
        if self.sum is None or self.outer is None:
            self.sum, self.outer = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.n += len(f)
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2 or self.sum is None or self.outer is None:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2·sqrtm(Σ1Σ2)) in float64.

    tr sqrtm(Σ1Σ2) is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    √Σ1·Σ2·√Σ1 (similar to Σ1Σ2). Eigenvalues below the numerical-rank tolerance are taken as 0,
    so singular covariances (fewer samples than dimensions) stay accurate.
    """
    m1, m2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = len(m1) if m1.ndim == 1 else -1
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"need mu [D] and sigma [D, D] of one D; got {m1.shape}, {s1.shape}, {m2.shape}, "
            f"{s2.shape}"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(_drop_null(w))) @ v.T
    inner = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(_drop_null(np.linalg.eigvalsh((inner + inner.T) / 2))).sum()
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _drop_null(eigenvalues: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are indistinguishable from 0 (or negative)."""
    tol = max(eigenvalues.max(initial=0.0), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


# ---------------------------------------------------------------------------------------------
# The FID Inception-v3 (layout and parameter names of pytorch-fid's weight file)


class _ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, ignores the zero padding."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 5x5 | double 3x3 | avg-pool + 1x1."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg3(x)),
            ],
            1,
        )


class _BlockB(nn.Module):
    """35->17 reduction (Mixed_6a): stride-2 3x3 | double 3x3 | max-pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _BlockC(nn.Module):
    """17x17 block (Mixed_6b..e) with factorised 7x7 convolutions of width ``c7``."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = _ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = _ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = _ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = _ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):
    """17->8 reduction (Mixed_7a): 1x1 + stride-2 3x3 | 1x1, 1x7, 7x1, stride-2 3x3 | max-pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat(
            [self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1
        )


class _BlockE(nn.Module):
    """8x8 block (Mixed_7b/c) with split 1x3/3x1 heads.

    The FID network pools with a padding-excluding average in Mixed_7b but with a 3x3 max-pool in
    Mixed_7c (a quirk of the TF graph ``inception-2015-12-05``), selected by ``max_pool``.
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(s),
                self.branch3x3_2b(s),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pooled),
            ],
            1,
        )


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Check images [N, C, H, W] with C = 1 or 3 and repeat grayscale to 3 channels."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got {list(images.shape)}")
    return images.expand(-1, 3, -1, -1)


class FeatureExtractor(nn.Module, abc.ABC):
    """Maps uint8 images [N, C, H, W] (C = 1 or 3, any size) to float32 features [N, 2048]."""

    @property
    @abc.abstractmethod
    def extractor_id(self) -> str:
        """A string that changes whenever the features could (weights, preprocessing)."""

    @property
    def device(self) -> torch.device:
        """Where inputs must go: the device of the first parameter (CPU if there is none)."""
        first = next(iter(self.parameters()), None)
        return first.device if first is not None else torch.device("cpu")


class InceptionFeatures(FeatureExtractor):
    """The FID variant of Inception-v3 (TF ``inception-2015-12-05``) giving 2048-d pool features.

    Input: images with values 0-255 (uint8) [N, C, H, W], C = 1 (repeated to 3) or 3, any size;
    resized bilinearly to 299x299 (``align_corners=False``) and mapped to [−1, 1]. Submodule and
    parameter names are those of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``; ``fc``
    (the 1008-way classifier) is kept only so that file loads strictly and is not used.
    Constructed in eval mode with gradients off; weights are random until loaded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, c7=128)
        self.Mixed_6c = _BlockC(768, c7=160)
        self.Mixed_6d = _BlockC(768, c7=160)
        self.Mixed_6e = _BlockC(768, c7=192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)
        self.eval()
        self.requires_grad_(False)

    @property
    def extractor_id(self) -> str:
        h = hashlib.sha256(b"edmgrid-fid-inception-v3/bilinear299")
        for name, tensor in self.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return "fid-inception-v3:" + h.hexdigest()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _as_rgb(images).to(torch.float32)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
            )
        x = x / 127.5 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
            self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
            self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        return x.mean(dim=(2, 3))


class _ExternalDetector(FeatureExtractor):
    """A TorchScript or NVlabs detector, called as ``net(uint8 NCHW, return_features=True)``."""

    def __init__(self, net: nn.Module, extractor_id: str, source: Path) -> None:
        super().__init__()
        self.net = net.eval()
        self._id, self.source = extractor_id, source

    @property
    def extractor_id(self) -> str:
        return self._id

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _as_rgb(images)
        if x.dtype != torch.uint8:
            raise ValueError(f"{self.source} expects uint8 images, got {x.dtype}")
        out = self.net(x, return_features=True)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), FEATURE_DIM):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(
                f"{self.source}: return_features=True gave {shape}, expected "
                f"[{len(x)}, {FEATURE_DIM}]. {WEIGHTS_HELP}"
            )
        return out.to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Locating and loading weights


def resolve_inception_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The Inception weights file: ``explicit`` if given, else ``$EDMGRID_INCEPTION``.

    The caller passes ``--inception`` if set, else the space's ``metric.inception``. Raises
    :class:`DataError` at once if no path is given or the file is not there.
    """
    raw = explicit if explicit not in (None, "") else os.environ.get(ENV_VAR) or None
    if raw is None:
        raise DataError(f"no Inception weights given. {WEIGHTS_HELP}")
    path = Path(raw).expanduser()
    if not path.is_file():
        origin = "given path" if explicit not in (None, "") else f"${ENV_VAR}"
        raise DataError(f"Inception weights not found at {path} ({origin}). {WEIGHTS_HELP}")
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _check_keys(model: nn.Module, state: dict[str, object], file: Path) -> None:
    """A short DataError if ``state`` is not a state dict of the FID Inception-v3 layout."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    wrong = [
        f"{k} {list(getattr(state[k], 'shape', []))} (want {list(want[k])})"
        for k in want
        if k in state and tuple(getattr(state[k], "shape", ())) != want[k]
    ]
    groups = (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong),
    )
    problems = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for what, v in groups if v]
    if problems:
        raise DataError(
            f"{file}: not pytorch-fid's FID Inception-v3 state dict: {'; '.join(problems)}."
        )


def load_inception(
    path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu"
) -> FeatureExtractor:
    """Load an Inception feature extractor from a local weights file (formats: module docstring).

    ``path`` goes through :func:`resolve_inception_path`, so ``None`` means ``$EDMGRID_INCEPTION``.
    """
    file = resolve_inception_path(path)
    try:
        if file.suffix.lower() == ".pkl":
            with file.open("rb") as f:
                net = pickle.load(f)  # the NVlabs detector; read only because the user named it
            if not isinstance(net, nn.Module):
                raise DataError(f"{file}: pickle holds a {type(net).__name__}, not a torch module")
            return _ExternalDetector(net, f"nvlabs-pkl:{_file_sha256(file)}", file).to(device)
        if _is_torchscript(file):
            with warnings.catch_warnings():  # torch >= 2.x marks TorchScript as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(file), map_location="cpu")
            return _ExternalDetector(net, f"torchscript:{_file_sha256(file)}", file).to(device)
        state = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise DataError(f"{file}: holds a {type(state).__name__}, not a state dict")
        with torch.device("cpu"):  # its random weights are replaced by the file's
            model = InceptionFeatures()
        _check_keys(model, state, file)
        # BatchNorm step counters do not affect eval; files saved without them still load.
        counters = {
            k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")
        }
        model.load_state_dict({**counters, **state}, strict=True)
        return model.to(device)
    except DataError as e:
        raise DataError(f"{e} {WEIGHTS_HELP}") from e
    except Exception as e:
        raise DataError(f"cannot load Inception weights from {file}: {e}. {WEIGHTS_HELP}") from e


# ---------------------------------------------------------------------------------------------
# Features, reference statistics and FID of images


Images = np.ndarray | torch.Tensor


def _features(chunks: Iterable[Images], extractor: FeatureExtractor, batch_size: int) -> _Moments:
    """Run ``extractor`` over chunks of uint8 images [N, C, H, W] in batches; sum the moments."""
    moments = _Moments()
    for images in chunks:
        uint8 = torch.uint8 if isinstance(images, torch.Tensor) else np.uint8
        if images.dtype != uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} {images.shape}"
            )
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.as_tensor(images[start : start + batch_size], device=extractor.device)
                moments.add(extractor(batch).cpu().numpy())
    return moments


def _images_key(images: np.ndarray, extractor: FeatureExtractor) -> str:
    h = hashlib.sha256(b"edmgrid-fid-ref-v1")
    h.update(f"{images.dtype}{list(images.shape)}{extractor.extractor_id}".encode())
    for start in range(0, len(images), 1024):
        h.update(np.ascontiguousarray(images[start : start + 1024]).reshape(-1).data)
    return h.hexdigest()


def load_reference_npz(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` [D] and ``sigma`` [D, D] (float64) from a reference ``.npz`` (e.g. EDM's fid-refs)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"FID reference statistics not found at {path}: provide an .npz with 'mu' and 'sigma'"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not an .npz with 'mu' and 'sigma' ({e})") from e
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise DataError(
            f"{path}: 'mu' must be [D] and 'sigma' [D, D], got {mu.shape}, {sigma.shape}"
        )
    return mu, sigma


def reference_statistics(
    images: np.ndarray,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike[str],
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(μ, Σ, key) of the features of all dataset ``images`` (uint8 [N, C, H, W], no flips).

    Cached as ``cache_dir/fid-ref-<key>.npz`` with ``mu``/``sigma``, where ``key`` hashes the
    image bytes and shape with ``extractor.extractor_id``; a cache hit runs no network, and a
    damaged cache entry is quarantined and computed again.
    """

    key = _images_key(images, extractor)
    file = Path(cache_dir) / f"fid-ref-{key}.npz"
    cached = read_or_quarantine(file, load_reference_npz, Path(cache_dir).parent)
    if cached is not None:
        return (*cached, key)
    mu, sigma = _features([images], extractor, batch_size).finish()

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, mu=mu, sigma=sigma)

    atomic_write(file, save)
    return mu, sigma, key


def fid_from_images(
    images: Images | Iterable[Images],
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    extractor: FeatureExtractor,
    batch_size: int = 64,
) -> float:
    """FID of generated uint8 images [N, C, H, W], or of chunks of them (streamed, so the images
    never have to be held at once), against reference statistics."""
    chunks = [images] if isinstance(images, np.ndarray | torch.Tensor) else images
    mu, sigma = _features(chunks, extractor, batch_size).finish()
    if mu.shape != ref_mu.shape:
        raise DataError(
            f"reference statistics have {len(ref_mu)} dimensions but the detector gives "
            f"{len(mu)}: use reference statistics made with the same Inception features"
        )
    return frechet_distance(mu, sigma, ref_mu, ref_sigma)


def statistics_hash(mu: np.ndarray, sigma: np.ndarray) -> str:
    """16 hex digits of SHA-256 over float64 μ and Σ (names the reference of a FID)."""
    h = hashlib.sha256()
    for a in (mu, sigma):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def paper_seed_ranges(n: int = 50000) -> list[range]:
    """The paper's three FID runs (minimum reported): seeds 0..n−1, n..2n−1, 2n..3n−1."""
    return [range(i * n, (i + 1) * n) for i in range(3)]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Images in [−1, 1] -> uint8 via clip(x·127.5 + 128, 0, 255); the +128 rounds to nearest."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
