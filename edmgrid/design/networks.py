"""F: the raw network inside D(x;σ) = c_skip·x + c_out·F(c_in·x; c_noise) (EDM §5, App. F.2).

Every built module is called as ``F(x, noise_labels, class_labels=None, augment_labels=None)``
with x of shape [B,C,H,W] ([B,D] for ``mlp``), noise_labels = c_noise of shape [B], one-hot
class labels [B, label_dim] and augmentation labels [B, augment_dim]. Missing class labels
count as zeros; missing augmentation labels skip that (bias-free) term, which is the same.

This module holds the choices (their hyper-parameters, as in Table 8); ``build`` makes the
torch module from the layers and U-Nets of :mod:`edmgrid.design.unet`, so that reading a spec
does not load torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveInt

from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import nn

networks = Registry("network", "architecture of the raw network F", key="arch")


class Network(Choice, ABC):
    """Architecture of F; ``build`` makes the torch module for a dataset's shape. A new one is
    a registered subclass with an ``arch`` literal and ``build``."""

    arch: str

    @abstractmethod
    def build(
        self,
        *,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        out_channels: int | None = None,
    ) -> nn.Module:
        """F for images [B, img_channels, img_resolution, img_resolution], called as the module
        docstring says; ``out_channels`` defaults to ``img_channels``."""


class SongUNetNetwork(Network):
    """SongUNet options shared by DDPM++ and NCSN++ (EDM networks.py defaults)."""

    model_channels: PositiveInt = 128
    channel_mult: tuple[PositiveInt, ...] = Field((1, 2, 2, 2), min_length=1)
    channel_mult_emb: PositiveInt = 4
    num_blocks: PositiveInt = 4
    attn_resolutions: tuple[PositiveInt, ...] = (16,)
    dropout: float = Field(0.10, ge=0, lt=1)
    label_dropout: float = Field(0.0, ge=0, lt=1)
    channel_mult_noise: PositiveInt
    embedding_type: Literal["positional", "fourier"]
    encoder_type: Literal["standard", "residual"]
    resample_filter: tuple[PositiveInt, ...] = Field(min_length=1)

    def build(
        self,
        *,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        out_channels: int | None = None,
    ) -> nn.Module:
        from edmgrid.design.unet import BlockConfig, Init, SongMapping, UNet, noise_embedding

        init = Init("xavier_uniform")
        noise_channels = self.model_channels * self.channel_mult_noise
        emb_channels = self.model_channels * self.channel_mult_emb
        block = BlockConfig(
            emb_channels=emb_channels,
            dropout=self.dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=self.resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=Init("xavier_uniform", weight=1e-5),
            init_attn=Init("xavier_uniform", weight=math.sqrt(0.2)),
            channels_per_head=None,
        )
        mapping = SongMapping(
            embedding=noise_embedding(self.embedding_type, noise_channels, endpoint=True),
            noise_channels=noise_channels,
            emb_channels=emb_channels,
            label_dim=label_dim,
            augment_dim=augment_dim,
            label_dropout=self.label_dropout,
            init=init,
        )
        return UNet(
            mapping=mapping,
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=out_channels or img_channels,
            model_channels=self.model_channels,
            channel_mult=self.channel_mult,
            num_blocks=self.num_blocks,
            attn_resolutions=self.attn_resolutions,
            block=block,
            stem_channels=self.model_channels,
            attn_all_decoder_blocks=False,
            encoder_type=self.encoder_type,
        )


@networks.register
class DDPMpp(SongUNetNetwork):
    """DDPM++ (Song et al. 2021) as in EDM Table 8 / App. F.2: box filter, positional embedding."""

    arch: Literal["ddpmpp"] = "ddpmpp"
    channel_mult_noise: PositiveInt = 1
    embedding_type: Literal["positional", "fourier"] = "positional"
    encoder_type: Literal["standard", "residual"] = "standard"
    resample_filter: tuple[PositiveInt, ...] = Field((1, 1), min_length=1)


@networks.register
class NCSNpp(SongUNetNetwork):
    """NCSN++ (Song et al. 2021) as in EDM Table 8 / App. F.2: bilinear, Fourier, residual skips."""

    arch: Literal["ncsnpp"] = "ncsnpp"
    channel_mult_noise: PositiveInt = 2
    embedding_type: Literal["positional", "fourier"] = "fourier"
    encoder_type: Literal["standard", "residual"] = "residual"
    resample_filter: tuple[PositiveInt, ...] = Field((1, 3, 3, 1), min_length=1)


@networks.register
class ADM(Network):
    """ADM U-Net (Dhariwal & Nichol 2021) as in EDM Table 8 / App. F.2 (ImageNet-64)."""

    arch: Literal["adm"] = "adm"
    model_channels: PositiveInt = 192
    channel_mult: tuple[PositiveInt, ...] = Field((1, 2, 3, 4), min_length=1)
    channel_mult_emb: PositiveInt = 4
    num_blocks: PositiveInt = 3
    attn_resolutions: tuple[PositiveInt, ...] = (32, 16, 8)
    dropout: float = Field(0.10, ge=0, lt=1)
    label_dropout: float = Field(0.0, ge=0, lt=1)
    channels_per_head: PositiveInt = 64

    def build(
        self,
        *,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        out_channels: int | None = None,
    ) -> nn.Module:
        from edmgrid.design.unet import BlockConfig, DhariwalMapping, Init, UNet

        init = Init("kaiming_uniform", weight=math.sqrt(1 / 3), bias=math.sqrt(1 / 3))
        init_zero = Init("kaiming_uniform", weight=0.0, bias=0.0)
        emb_channels = self.model_channels * self.channel_mult_emb
        block = BlockConfig(
            emb_channels=emb_channels,
            dropout=self.dropout,
            skip_scale=1.0,
            eps=1e-5,
            resample_filter=(1, 1),
            resample_proj=False,
            adaptive_scale=True,
            init=init,
            init_zero=init_zero,
            init_attn=init,
            channels_per_head=self.channels_per_head,
        )
        mapping = DhariwalMapping(
            noise_channels=self.model_channels,
            emb_channels=emb_channels,
            label_dim=label_dim,
            augment_dim=augment_dim,
            label_dropout=self.label_dropout,
            init=init,
            init_zero=init_zero,
        )
        return UNet(
            mapping=mapping,
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=out_channels or img_channels,
            model_channels=self.model_channels,
            channel_mult=self.channel_mult,
            num_blocks=self.num_blocks,
            attn_resolutions=self.attn_resolutions,
            block=block,
            stem_channels=self.model_channels * self.channel_mult[0],
            attn_all_decoder_blocks=True,
        )


@networks.register
class MLP(Network):
    """Small MLP for low-dimensional toy data (not in EDM; for quick design-space studies)."""

    arch: Literal["mlp"] = "mlp"
    hidden: PositiveInt = 128
    depth: PositiveInt = 3
    embedding_type: Literal["positional", "fourier"] = "positional"
    emb_channels: PositiveInt = Field(32, ge=4, multiple_of=2)
    combine: Literal["concat", "add"] = "concat"

    def build(
        self,
        *,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        out_channels: int | None = None,
    ) -> nn.Module:
        """img_channels is the data dimension D; img_resolution is ignored."""
        from edmgrid.design.unet import ToyMLP, noise_embedding

        return ToyMLP(
            in_features=img_channels,
            out_features=out_channels or img_channels,
            hidden=self.hidden,
            depth=self.depth,
            embedding=noise_embedding(self.embedding_type, self.emb_channels, endpoint=True),
            emb_channels=self.emb_channels,
            combine=self.combine,
            label_dim=label_dim,
            augment_dim=augment_dim,
        )
