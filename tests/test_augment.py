"""Non-leaky augmentation (EDM App. F.2, Table 6): edmgrid.design.augment."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from edmgrid.design.augment import SYM6, EDMAugment, NoAugment, augments, labels

GEOMETRIC = ["scale", "rotate_frac", "aniso", "translate_frac"]
MULTIPLIERS = ["xflip", "yflip", *GEOMETRIC]
# Label columns of each transform (Table 6 order).
LABEL_COLUMNS = {
    "xflip": [0],
    "yflip": [1],
    "scale": [2],
    "rotate_frac": [3, 4],
    "aniso": [5, 6],
    "translate_frac": [7, 8],
}


def only(enabled: str, p: float = 1.0) -> EDMAugment:
    """EDMAugment with every transform multiplier 0 except ``enabled`` (left at its default)."""
    return EDMAugment(p=p, **{m: 0.0 for m in MULTIPLIERS if m != enabled})


def smooth(batch: int, size: int) -> torch.Tensor:
    """A smooth, asymmetric test image [batch, 3, size, size]."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.3) + 0.5 * x * y
    return img.expand(batch, 3, size, size).clone()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sym6_filter_is_an_orthonormal_wavelet_lowpass_with_six_vanishing_moments() -> None:
    h = torch.tensor(SYM6, dtype=torch.float64)
    assert h.sum().item() == pytest.approx(math.sqrt(2), abs=1e-12)
    for shift in range(6):
        assert (h[: 12 - 2 * shift] * h[2 * shift :]).sum().item() == pytest.approx(
            float(shift == 0), abs=1e-10
        )
    highpass = torch.tensor([(-1) ** k * SYM6[11 - k] for k in range(12)], dtype=torch.float64)
    k = torch.arange(12, dtype=torch.float64)
    for moment in range(6):
        assert abs((k**moment * highpass).sum().item()) < 1e-6 * 11**moment


def test_none_returns_images_unchanged_without_labels() -> None:
    images = torch.randn(4, 3, 8, 8)
    out, a = NoAugment()(images, gen())
    assert torch.equal(out, images) and a is None
    assert NoAugment.augment_dim == 0 and EDMAugment.augment_dim == 9


def test_edm_with_p_zero_is_bit_exact_identity_with_zero_labels() -> None:
    images = torch.randn(16, 3, 8, 8)
    out, a = EDMAugment(p=0.0)(images, gen())
    assert torch.equal(out, images)
    assert a is not None and a.shape == (16, 9) and a.dtype == torch.float32
    assert torch.equal(a, torch.zeros(16, 9))


@pytest.mark.parametrize("p", [1.0, 0.12])
def test_xflip_flips_exactly_half_the_images_and_label_a0_says_which(p: float) -> None:
    # xflip=1e8 makes the x-flip coin certain for any p > 0 (paper: 100%), so 50% are flipped.
    images = torch.randn(512, 2, 8, 8)
    out, a = only("xflip", p=p)(images, gen())
    assert a is not None
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    unchanged = (out == images).flatten(1).all(1)
    assert torch.all(flipped ^ unchanged)
    assert torch.equal(a[:, 0], flipped.float())
    assert torch.equal(a[:, 1:], torch.zeros(512, 8))
    assert 256 - 5 * 11.3 < flipped.sum().item() < 256 + 5 * 11.3  # binomial(512, 1/2), 5 sigma


def test_yflip_flips_vertically_with_label_a1() -> None:
    images = torch.randn(64, 2, 8, 8)
    out, a = only("yflip")(images, gen())
    assert a is not None
    flipped = a[:, 1] == 1
    assert 0 < flipped.sum() < 64
    assert torch.equal(out[flipped], images[flipped].flip(-2))
    assert torch.equal(out[~flipped], images[~flipped])


@pytest.mark.parametrize("size", [8, 32])
def test_rotation_by_half_pi_is_counterclockwise_rot90(size: int) -> None:
    images = smooth(2, size)
    a = torch.zeros(2, 8)
    a[:, 3] = math.pi / 2
    out = EDMAugment().apply(images, a)
    error = (out - torch.rot90(images, 1, dims=(-2, -1))).abs().max().item()
    wrong_way = (out - torch.rot90(images, -1, dims=(-2, -1))).abs().max().item()
    assert error < {8: 0.08, 32: 0.015}[size] and wrong_way > 0.5
    assert torch.allclose(labels(a)[:, 3:5], torch.tensor([[-1.0, 1.0]] * 2), atol=1e-6)


def test_translation_moves_content_right_and_down_by_a_times_size_over_8() -> None:
    images = smooth(1, 16)
    a = torch.zeros(1, 8)
    a[:, 6], a[:, 7] = 1 / (16 * 0.125), 2 / (16 * 0.125)  # 1 pixel right, 2 pixels down
    out = EDMAugment().apply(images, a)
    assert torch.allclose(out[..., 2:, 1:], images[..., :-2, :-1], atol=1e-5)


@pytest.mark.parametrize("enabled", GEOMETRIC)
def test_geometric_transform_changes_image_only_when_enabled(enabled: str) -> None:
    images = smooth(8, 8) + 0.1 * torch.randn(8, 3, 8, 8, generator=gen(1))
    out, a = only(enabled)(images, gen())
    assert a is not None
    assert ((out - images).flatten(1).abs().amax(1) > 1e-3).all()
    others = [c for m, cols in LABEL_COLUMNS.items() if m != enabled for c in cols]
    assert torch.equal(a[:, others], torch.zeros(8, len(others)))
    assert (a[:, LABEL_COLUMNS[enabled]].abs().sum(1) > 0).all()

    out, a = EDMAugment(p=1.0, **{m: 0.0 for m in MULTIPLIERS})(images, gen())
    assert a is not None and torch.equal(out, images) and not a.any()


def test_scale_label_a2_is_standard_normal_with_p_one() -> None:
    _, a = only("scale")(torch.zeros(4096, 1, 8, 8), gen())
    assert a is not None
    assert abs(a[:, 2].mean().item()) < 0.1  # standard error 1/64
    assert a[:, 2].std().item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("multiplier", "p", "expected"), [(1.0, 0.5, 0.5), (0.4, 0.5, 0.2)])
def test_transform_is_enabled_with_probability_multiplier_times_p(
    multiplier: float, p: float, expected: float
) -> None:
    aug = EDMAugment(p=p, **{m: 0.0 for m in MULTIPLIERS if m != "scale"}, scale=multiplier)
    a = aug.draw(4096, gen())
    assert (a[:, 2] != 0).float().mean().item() == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize("size", [8, 32])
def test_all_transforms_keep_a_constant_image_constant_in_the_interior(size: int) -> None:
    images = torch.full((32, 3, size, size), 0.7)
    out, a = EDMAugment(p=1.0)(images, gen())
    assert a is not None and out.shape == images.shape and out.dtype == torch.float32
    assert (a[:, 2:] != 0).any(1).all()
    centre = out[..., size // 4 : -size // 4, size // 4 : -size // 4]
    assert torch.allclose(centre, torch.full_like(centre, 0.7), atol=1e-4)


def test_same_generator_seed_gives_same_augmentation() -> None:
    images = torch.randn(16, 3, 8, 8)
    out1, a1 = EDMAugment(p=0.5)(images, gen(3))
    out2, a2 = EDMAugment(p=0.5)(images, gen(3))
    assert a1 is not None and a2 is not None
    assert torch.equal(out1, out2) and torch.equal(a1, a2)


@pytest.mark.parametrize("bad", [{"p": -0.1}, {"p": 1.5}, {"scale": -1.0}, {"strength": 1.0}])
def test_schema_rejects_p_outside_unit_interval_and_unknown_fields(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        EDMAugment(**bad)
    with pytest.raises(ValidationError):
        TypeAdapter(augments.union()).validate_python({"name": "edm", **bad})


def test_registry_validates_choices_by_name() -> None:
    adapter = TypeAdapter(augments.union())
    assert augments.names == ["none", "edm"]
    assert adapter.validate_python({"name": "edm"}) == EDMAugment(p=0.12)
    assert isinstance(adapter.validate_python({"name": "none"}), NoAugment)
    with pytest.raises(ValidationError, match="valid choices: none, edm"):
        adapter.validate_python({"name": "color"})
