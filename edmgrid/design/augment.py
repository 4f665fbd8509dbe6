"""Non-leaky geometric augmentation (EDM paper §5, App. F.2, Table 6).

The augmented image is both the clean target and the noised network input. The network is also
given the augmentation parameters as a conditioning label ``a`` (zero when sampling), so it can
learn not to reproduce the augmentations ("non-leaky").

Parameters ``a0..a7`` follow Table 6: x-flip ``a0``, y-flip ``a1``, isotropic scale ``a2``,
rotation angle ``a3``, anisotropy angle ``a4`` and strength ``a5``, translation ``a6, a7``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

augments = Registry("augment", "non-leaky augmentation (EDM §5, App. F.2)")

# Low-pass decomposition filter of the Symlet-6 wavelet (sums to sqrt(2), orthonormal under even
# shifts). Used as a 2x upsampling (synthesis) / downsampling (analysis) pair around resampling.
SYM6 = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)
# Margin in pixels (at the image's resolution) that the 12-tap filter needs on each side.
FILTER_PAD = len(SYM6) // 4
# Sample n of a 2x signal sits at (n - DELAY) / 2 image pixels, where DELAY is the filter's
# centroid minus the tap offset 5 of ``_upsampling_matrix`` (it would be 0.5 for a symmetric
# filter). StyleGAN2-ADA uses 0.5, which shifts non-identity warps by up to ~0.6 px.
DELAY = sum(k * f for k, f in enumerate(SYM6)) / sum(SYM6) - 5  # 0.098 for sym6


class Augment(Choice, ABC):
    """Augmentation applied to training images; returns the images and their labels. A new one
    is a registered subclass with a ``name`` literal, ``augment_dim`` and ``__call__``."""

    augment_dim: ClassVar[int]

    @abstractmethod
    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The augmented images [B, C, H, W] and their conditioning labels [B, augment_dim]
        (None when ``augment_dim`` is 0), drawn from ``generator``."""


@augments.register
class NoAugment(Augment):
    """No augmentation: images unchanged, no labels (paper Table 2 configs A-E)."""

    name: Literal["none"] = "none"
    augment_dim: ClassVar[int] = 0

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        return images, None


@augments.register
class EDMAugment(Augment):
    """Geometric augmentations of paper App. F.2 / Table 6, each enabled per image.

    Transform ``k`` is enabled with probability ``clamp(multiplier_k * p, 0, 1)``; a disabled
    transform has parameter 0. The default ``xflip=1e8`` makes x-flips always eligible (50%).
    """

    name: Literal["edm"] = "edm"
    augment_dim: ClassVar[int] = 9

    p: float = Field(0.12, ge=0.0, le=1.0)
    xflip: float = Field(1e8, ge=0.0)
    yflip: float = Field(1.0, ge=0.0)
    scale: float = Field(1.0, ge=0.0)
    rotate_frac: float = Field(1.0, ge=0.0)
    aniso: float = Field(1.0, ge=0.0)
    translate_frac: float = Field(1.0, ge=0.0)
    scale_std: float = Field(0.2, ge=0.0)
    aniso_std: float = Field(0.2, ge=0.0)
    aniso_rotate_prob: float = Field(0.5, ge=0.0, le=1.0)
    rotate_frac_max: float = Field(1.0, ge=0.0)
    translate_frac_std: float = Field(0.125, ge=0.0)

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        a = self.draw(images.shape[0], generator, images.device)
        return self.apply(images, a), labels(a)

    def draw(
        self, batch: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """Parameters ``a0..a7`` [B, 8] float32 per Table 6 (one fixed-size draw per call)."""
        u = torch.rand(batch, 11, generator=generator, device=device)
        n = torch.randn(batch, 4, generator=generator, device=device)
        multipliers = (self.xflip, self.yflip, self.scale, self.rotate_frac, self.aniso)
        prob = torch.tensor([*multipliers, self.translate_frac], device=device)
        prob = (prob * self.p).clamp(0, 1)
        on = (u[:, :6] < prob).float()  # one coin per transform; translation uses one for both
        flips = (u[:, 6:8] < 0.5).float()
        rotate = (u[:, 8] * 2 - 1) * (math.pi * self.rotate_frac_max)
        aniso_angle = (u[:, 9] * 2 - 1) * math.pi * (u[:, 10] < self.aniso_rotate_prob).float()
        return torch.stack(
            [
                flips[:, 0] * on[:, 0],
                flips[:, 1] * on[:, 1],
                n[:, 0] * on[:, 2],
                rotate * on[:, 3],
                aniso_angle * on[:, 4],
                n[:, 1] * on[:, 4],
                n[:, 2] * on[:, 5],
                n[:, 3] * on[:, 5],
            ],
            dim=1,
        )

    def apply(self, images: Tensor, a: Tensor) -> Tensor:
        """Apply parameters ``a`` [B, 8] to ``images`` [B, C, H, W].

        Flips are exact pixel flips. The other transforms are composed into one inverse matrix
        and executed only on the images that need it, so other images stay bit-exact.
        """
        images = torch.where(a[:, 0, None, None, None] > 0, images.flip(-1), images)
        images = torch.where(a[:, 1, None, None, None] > 0, images.flip(-2), images)
        moved = (a[:, 2:] != 0).any(dim=1)
        if not moved.any():
            return images
        height, width = images.shape[-2:]
        g_inv = self.inverse_matrix(a[moved].double(), height, width)
        out = images.clone()
        out[moved] = resample(images[moved], g_inv)
        return out

    def inverse_matrix(self, a: Tensor, height: int, width: int) -> Tensor:
        """Inverse of translate @ aniso @ rotate @ scale [B, 3, 3], in pixels about the centre.

        Pixel coordinates have x to the right and y down; positive ``a3`` rotates the content
        counter-clockwise as displayed, positive ``a6``/``a7`` move it right/down, positive
        ``a2`` enlarges it, and ``a5`` stretches it along the direction at angle ``a4``.
        """
        s = 2 ** (self.scale_std * a[:, 2])
        s_aniso = 2 ** (self.aniso_std * a[:, 5])
        one = torch.ones_like(s)
        scale_inv = _diag(1 / s, 1 / s)
        rotate_inv = _rotation(a[:, 3])
        aniso_inv = _rotation(-a[:, 4]) @ _diag(1 / s_aniso, s_aniso) @ _rotation(a[:, 4])
        translate_inv = _diag(one, one)
        translate_inv[:, 0, 2] = -a[:, 6] * width * self.translate_frac_std
        translate_inv[:, 1, 2] = -a[:, 7] * height * self.translate_frac_std
        return scale_inv @ rotate_inv @ aniso_inv @ translate_inv


def labels(a: Tensor) -> Tensor:
    """Conditioning labels [B, 9] float32 (Table 6); all zero when nothing is applied."""
    cols = [a[:, 0], a[:, 1], a[:, 2], a[:, 3].cos() - 1, a[:, 3].sin()]
    cols += [a[:, 5] * a[:, 4].cos(), a[:, 5] * a[:, 4].sin(), a[:, 6], a[:, 7]]
    return torch.stack(cols, dim=1).float()


def resample(images: Tensor, g_inv: Tensor) -> Tensor:
    """Warp ``images`` [B, C, H, W]: output pixel ``q`` (centred) reads input at ``g_inv @ q``.

    Reflect-pads to cover the mapped output corners, upsamples 2x with sym6, samples bilinearly
    (zeros outside, align_corners=False), downsamples 2x with sym6 and crops (App. F.2). One
    padding serves the whole batch. 2x samples are placed at the filter's centroid (DELAY), so
    the warp is exact about the image centre.
    """
    height, width = images.shape[-2:]
    dtype, device = g_inv.dtype, g_inv.device  # coordinates in float64
    cx, cy = (width - 1) / 2, (height - 1) / 2
    ext = FILTER_PAD  # the 2x output grid extends this far so the downsampling filter fits
    # Centred output coordinates of the extended 2x grid (see DELAY).
    xs = (torch.arange(2 * (width + 2 * ext), dtype=dtype, device=device) - DELAY) / 2 - ext - cx
    ys = (torch.arange(2 * (height + 2 * ext), dtype=dtype, device=device) - DELAY) / 2 - ext - cy
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)
    src = torch.einsum("bij,hwj->bhwi", g_inv, points)[..., :2]  # [B, H', W', xy]

    # Reflect padding: how far the mapped grid corners reach beyond the image, plus the
    # upsampling filter's support; reflect padding cannot exceed size - 1 (zeros beyond).
    corners = src[:, [0, 0, -1, -1], [0, -1, 0, -1]].reshape(-1, 2)
    centre = torch.tensor([cx, cy], dtype=dtype, device=device)
    lo = (-corners.min(dim=0).values - centre).tolist()
    hi = (corners.max(dim=0).values - centre).tolist()
    pad = [
        min(max(math.ceil(reach + FILTER_PAD), 0), size - 1)
        for reach, size in zip(
            [lo[0], hi[0], lo[1], hi[1]], [width, width, height, height], strict=True
        )
    ]
    padded = torch.nn.functional.pad(images, pad, mode="reflect")
    up_y = _upsampling_matrix(padded.shape[-2], images.dtype, images.device)
    up_x = _upsampling_matrix(padded.shape[-1], images.dtype, images.device)
    up = up_y @ padded @ up_x.mT

    # Input pixel coordinate -> index on the upsampled padded image -> grid_sample's [-1, 1].
    origin = torch.tensor([cx + pad[0], cy + pad[2]], dtype=dtype, device=device)
    index = 2 * (src + origin) + DELAY
    size = torch.tensor([up.shape[-1], up.shape[-2]], dtype=dtype, device=device)
    grid = ((2 * index + 1) / size - 1).to(images.dtype)
    warped = torch.nn.functional.grid_sample(
        up, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    down_y = _upsampling_matrix(height + 2 * ext, images.dtype, images.device).mT / 2
    down_x = _upsampling_matrix(width + 2 * ext, images.dtype, images.device) / 2
    return (down_y @ warped @ down_x)[..., ext : ext + height, ext : ext + width]


def _upsampling_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[2n, n] sym6 synthesis (2x upsampling) matrix; its transpose / 2 downsamples back.

    Entry ``[j, i] = sqrt(2) * SYM6[j + 5 - 2i]``: constants stay constant away from the
    borders, and since SYM6 is orthonormal, ``(U.T / 2) @ U`` is the identity there.
    """
    f = torch.tensor(SYM6, dtype=dtype, device=device) * math.sqrt(2)
    j = torch.arange(2 * n, device=device)[:, None]
    i = torch.arange(n, device=device)[None, :]
    k = j + 5 - 2 * i
    return torch.where((k >= 0) & (k < len(SYM6)), f[k.clamp(0, len(SYM6) - 1)], 0.0)


def _diag(sx: Tensor, sy: Tensor) -> Tensor:
    """Batch of 3x3 homogeneous scalings."""
    m = torch.zeros(sx.shape[0], 3, 3, dtype=sx.dtype, device=sx.device)
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = sx, sy, 1
    return m


def _rotation(theta: Tensor) -> Tensor:
    """Batch of 3x3 rotations ``[[cos, -sin], [sin, cos]]`` in (x right, y down) coordinates."""
    cos, sin = theta.cos(), theta.sin()
    m = _diag(cos, cos)
    m[:, 0, 1], m[:, 1, 0] = -sin, sin
    return m
