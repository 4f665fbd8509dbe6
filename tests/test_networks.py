"""The raw networks F (EDM §5, App. F.2): shapes, zero-init output, labels, paper sizes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from edmgrid.design.networks import ADM, MLP, DDPMpp, NCSNpp, Network, networks
from edmgrid.design.unet import Conv2d, Init, UNetBlock, group_norm
from edmgrid.errors import InputError

LABEL_DIM, AUGMENT_DIM = 3, 9

# Tiny versions of each architecture that run on 8×8 digits in milliseconds.
TINY: dict[str, Network] = {
    "ddpmpp": DDPMpp(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)),
    "ncsnpp": NCSNpp(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)),
    # ADM's mid block always attends: 32 channels / 8 = 4 heads.
    "adm": ADM(
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
        channels_per_head=8,
    ),
    "mlp": MLP(hidden=32, depth=2),
    "mlp-add-fourier": MLP(hidden=32, depth=2, combine="add", embedding_type="fourier"),
}
SONG = ("ddpmpp", "ncsnpp")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny nets gain nothing from threads, which spin-wait on a busy shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(arch: str, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = {"img_resolution": 1, "img_channels": 2} if isinstance(TINY[arch], MLP) else {}
    return TINY[arch].build(**{"img_resolution": 8, "img_channels": 1, **shape, **kwargs}).eval()


def inputs(arch: str, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    shape = (batch, 2) if isinstance(TINY[arch], MLP) else (batch, 1, 8, 8)
    return torch.randn(shape, generator=gen), torch.randn(batch, generator=gen)


def randomize(net: torch.nn.Module) -> None:
    """Overwrite every parameter (zero-init ones included) so each input path has an effect."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("arch", list(TINY))
def test_output_has_input_shape_and_float32(arch: str, with_labels: bool) -> None:
    net = build(arch, label_dim=LABEL_DIM, augment_dim=AUGMENT_DIM)
    x, c_noise = inputs(arch)
    labels: dict[str, torch.Tensor] = {}
    if with_labels:
        labels = {
            "class_labels": torch.eye(LABEL_DIM)[torch.tensor([0, 1, 2, 0])],
            "augment_labels": torch.randn(4, AUGMENT_DIM),
        }
    with torch.no_grad():
        out = net(x, c_noise, **labels)
    assert out.shape == x.shape and out.dtype == torch.float32


@pytest.mark.parametrize("arch", list(TINY))
def test_out_channels_overrides_image_channels(arch: str) -> None:
    net = build(arch, out_channels=4)
    x, c_noise = inputs(arch)
    with torch.no_grad():
        assert net(x, c_noise).shape[1] == 4


@pytest.mark.parametrize("arch", list(TINY))
def test_initial_output_is_near_zero_so_initial_loss_is_one(arch: str) -> None:
    net = build(arch)
    x, c_noise = inputs(arch)
    with torch.no_grad():
        out = net(x * 10, c_noise * 10)
    if arch in SONG:  # last convs scaled by 1e-5
        assert 0 < out.abs().max() < 1e-3
    else:  # exactly zero output layer
        assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("arch", list(TINY))
def test_missing_augment_and_class_labels_equal_zeros(arch: str) -> None:
    net = build(arch, label_dim=LABEL_DIM, augment_dim=AUGMENT_DIM)
    randomize(net)
    x, c_noise = inputs(arch)
    zeros = {
        "class_labels": torch.zeros(4, LABEL_DIM),
        "augment_labels": torch.zeros(4, AUGMENT_DIM),
    }
    with torch.no_grad():
        assert torch.allclose(net(x, c_noise), net(x, c_noise, **zeros), atol=1e-6)
        other = net(x, c_noise, augment_labels=torch.ones(4, AUGMENT_DIM))
    assert not torch.allclose(net(x, c_noise), other)


@pytest.mark.parametrize("arch", list(TINY))
def test_a_few_adam_steps_reduce_loss_on_a_fixed_batch(arch: str) -> None:
    net = build(arch).train()
    for module in net.modules():  # deterministic: no dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    x, c_noise = inputs(arch)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = (net(x, c_noise) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def paper_size(network: Network, **kwargs: Any) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return network.build(**kwargs)


def test_ddpmpp_cifar10_config_f_has_about_56m_parameters() -> None:
    net = paper_size(DDPMpp(channel_mult=(2, 2, 2)), img_resolution=32, img_channels=3)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(56e6, rel=0.05)


def test_paper_attention_block_counts() -> None:
    """Table 8: DDPM++ 4 encoder + 2 decoder; ADM 9 + 13 (mid blocks counted as decoder)."""

    def heads(net: torch.nn.Module) -> list[int]:
        return [m.num_heads for m in net.modules() if isinstance(m, UNetBlock) and m.num_heads]

    song = paper_size(DDPMpp(channel_mult=(2, 2, 2)), img_resolution=32, img_channels=3)
    adm = paper_size(ADM(), img_resolution=64, img_channels=3, label_dim=1000, out_channels=6)
    assert heads(song) == [1] * 6
    assert len(heads(adm)) == 22 and set(heads(adm)) == {6, 9, 12}  # 192·mult / 64 at 32, 16, 8
    assert sum(p.numel() for p in adm.parameters()) == pytest.approx(296e6, rel=0.01)


@pytest.mark.parametrize("resample_filter", [(1, 1), (1, 3, 3, 1)])
def test_fir_resampling_halves_and_doubles_and_keeps_constants(
    resample_filter: tuple[int, ...],
) -> None:
    ones = torch.ones(1, 2, 8, 8)
    down = Conv2d(2, 2, 0, Init("xavier_uniform"), resample="down", resample_filter=resample_filter)
    up = Conv2d(2, 2, 0, Init("xavier_uniform"), resample="up", resample_filter=resample_filter)
    small, big = down(ones), up(ones)
    assert small.shape[-1] == 4 and big.shape[-1] == 16
    assert torch.allclose(small[..., 1:-1, 1:-1], torch.ones(1)) and small.min() > 0
    assert torch.allclose(big[..., 1:-1, 1:-1], torch.ones(1))


@pytest.mark.parametrize(("channels", "groups"), [(1, 1), (4, 1), (16, 4), (18, 3), (256, 32)])
def test_group_norm_groups_fit_small_channel_counts(channels: int, groups: int) -> None:
    assert group_norm(channels, 1e-6).num_groups == groups


def test_resolution_must_halve_at_every_level() -> None:
    with pytest.raises(InputError, match="not divisible"):
        DDPMpp(channel_mult=(1, 2, 2, 2)).build(img_resolution=12, img_channels=1)


def test_schema_rejects_unknown_fields_and_registry_lists_every_arch() -> None:
    with pytest.raises(ValidationError):
        DDPMpp(model_chanels=64)  # type: ignore[call-arg]
    assert DDPMpp().channel_mult_noise == 1 and NCSNpp().channel_mult_noise == 2
    assert NCSNpp().resample_filter == (1, 3, 3, 1) and NCSNpp().encoder_type == "residual"
    described = networks.describe()
    assert set(described) == {"ddpmpp", "ncsnpp", "adm", "mlp"}
    assert described["adm"]["params"]["channel_mult"] == (1, 2, 3, 4)
