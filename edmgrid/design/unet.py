"""The torch modules behind the registered networks F (``edmgrid.design.networks``).

The U-Nets follow the official EDM layout (DDPM++/NCSN++ after Song et al. 2021, ADM after
Dhariwal & Nichol 2021): xavier/kaiming init, a (near-)zero last layer in every residual
branch and at the output, so that F ≈ 0 and the initial EDM loss is ≈ 1 at every σ. The toy
MLP follows the same conventions for [B, D] points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from edmgrid.errors import InputError

InitMode = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]
Resample = Literal["none", "up", "down"]


# ----------------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True)
class Init:
    """Weight init: ``mode`` scaled by ``weight`` for weights and by ``bias`` for biases."""

    mode: InitMode
    weight: float = 1.0
    bias: float = 0.0

    def tensor(self, shape: tuple[int, ...], fan_in: int, fan_out: int, gain: float) -> Tensor:
        if self.mode == "xavier_uniform":
            std, uniform = math.sqrt(6 / (fan_in + fan_out)), True
        elif self.mode == "xavier_normal":
            std, uniform = math.sqrt(2 / (fan_in + fan_out)), False
        elif self.mode == "kaiming_uniform":
            std, uniform = math.sqrt(3 / fan_in), True
        else:
            std, uniform = math.sqrt(1 / fan_in), False
        noise = torch.rand(shape) * 2 - 1 if uniform else torch.randn(shape)
        return noise * (std * gain)


class Linear(nn.Module):
    """Fully connected layer with EDM's initialisation."""

    def __init__(self, in_features: int, out_features: int, init: Init, bias: bool = True) -> None:
        super().__init__()
        fans = (in_features, out_features)
        self.weight = nn.Parameter(init.tensor((out_features, in_features), *fans, init.weight))
        self.bias = nn.Parameter(init.tensor((out_features,), *fans, init.bias)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F_.linear(x, self.weight, self.bias)


class Conv2d(nn.Module):
    """k×k convolution (k=0: none), optionally with 2× resampling by the FIR filter f⊗f/(Σf)².

    Up: transposed depthwise filter with gain 4, then the conv. Down: filter with stride 2, then
    the conv; ``fused`` instead runs the conv at full resolution and filters its output.
    """

    resample_filter: Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        init: Init,
        *,
        bias: bool = True,
        resample: Resample = "none",
        resample_filter: tuple[int, ...] = (1, 1),
        fused: bool = False,
    ) -> None:
        super().__init__()
        if fused and (resample != "down" or not kernel):
            raise ValueError("fused resampling needs a kernel and resample='down'")
        self.resample, self.fused = resample, fused
        self.w_pad, self.f_pad = kernel // 2, (len(resample_filter) - 1) // 2
        fans = (in_channels * kernel * kernel, out_channels * kernel * kernel)
        shape = (out_channels, in_channels, kernel, kernel)
        self.weight = nn.Parameter(init.tensor(shape, *fans, init.weight)) if kernel else None
        self.bias = (
            nn.Parameter(init.tensor((out_channels,), *fans, init.bias))
            if kernel and bias
            else None
        )
        f = torch.tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if resample != "none" else None)

    def _filter(self, x: Tensor, *, padding: int) -> Tensor:
        f = self.resample_filter
        assert f is not None
        c = x.shape[1]
        if self.resample == "up":
            return F_.conv_transpose2d(
                x, 4 * f.expand(c, -1, -1, -1), groups=c, stride=2, padding=padding
            )
        return F_.conv2d(x, f.expand(c, -1, -1, -1), groups=c, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.fused:
            assert w is not None
            x = self._filter(F_.conv2d(x, w, padding=self.w_pad + self.f_pad), padding=0)
        else:
            if self.resample != "none":
                x = self._filter(x, padding=self.f_pad)
            if w is not None:
                x = F_.conv2d(x, w, padding=self.w_pad)
        return x if self.bias is None else x + self.bias.reshape(1, -1, 1, 1)


def group_norm(num_channels: int, eps: float) -> nn.GroupNorm:
    """GroupNorm with min(32, C//4) groups (at least 1, lowered until it divides C)."""
    groups = max(1, min(32, num_channels // 4))
    while num_channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, num_channels, eps=eps)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids [cos(x·f_k), sin(x·f_k)], f_k = (1/10000)^(k/(C/2 − endpoint))."""

    freqs: Tensor

    def __init__(self, num_channels: int, *, endpoint: bool, max_positions: int = 10000) -> None:
        super().__init__()
        half = num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32) / (half - int(endpoint))
        self.register_buffer("freqs", (1 / max_positions) ** exponent, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        arg = torch.outer(x, self.freqs.to(x.dtype))
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2π f x), sin(2π f x)] with fixed f ~ N(0,1)·scale."""

    freqs: Tensor

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        arg = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def noise_embedding(
    embedding_type: Literal["positional", "fourier"], num_channels: int, *, endpoint: bool
) -> nn.Module:
    """The noise-level embedding of c_noise: DDPM++ positional or NCSN++ Fourier."""
    if embedding_type == "fourier":
        return FourierEmbedding(num_channels)
    return PositionalEmbedding(num_channels, endpoint=endpoint)


def class_input(
    class_labels: Tensor | None,
    *,
    ref: Tensor,
    label_dim: int,
    label_dropout: float,
    training: bool,
) -> Tensor:
    """One-hot labels (zeros if absent); in training each row is dropped with prob label_dropout."""
    if class_labels is None:
        return ref.new_zeros(ref.shape[0], label_dim)
    if training and label_dropout:
        keep = torch.rand(class_labels.shape[0], 1, device=class_labels.device) >= label_dropout
        return class_labels * keep.to(class_labels.dtype)
    return class_labels


# ----------------------------------------------------------------------------------------------
# U-Net (shared by DDPM++, NCSN++ and ADM)


@dataclass(frozen=True)
class BlockConfig:
    """The settings a U-Net gives all of its residual blocks."""

    emb_channels: int
    dropout: float
    skip_scale: float
    eps: float
    resample_filter: tuple[int, ...]
    resample_proj: bool  # 1×1 conv on a resampled skip even if the width is unchanged
    adaptive_scale: bool  # embedding as scale/shift (ADM) rather than an added bias
    init: Init
    init_zero: Init
    init_attn: Init
    channels_per_head: int | None  # None: a single attention head


class UNetBlock(nn.Module):
    """Pre-activation residual block with embedding, optional 2× resampling and self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cfg: BlockConfig,
        *,
        resample: Resample = "none",
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.skip_scale, self.adaptive_scale = cfg.skip_scale, cfg.adaptive_scale
        f = cfg.resample_filter
        self.norm0 = group_norm(in_channels, cfg.eps)
        self.conv0 = Conv2d(
            in_channels, out_channels, 3, cfg.init, resample=resample, resample_filter=f
        )
        self.affine = Linear(
            cfg.emb_channels, out_channels * (2 if cfg.adaptive_scale else 1), cfg.init
        )
        self.norm1 = group_norm(out_channels, cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv1 = Conv2d(out_channels, out_channels, 3, cfg.init_zero)
        self.skip = None
        if out_channels != in_channels or resample != "none":
            kernel = 1 if cfg.resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels, out_channels, kernel, cfg.init, resample=resample, resample_filter=f
            )
        self.num_heads = 0
        if attention:
            cph = cfg.channels_per_head
            self.num_heads = 1 if cph is None else max(1, out_channels // cph)
            if out_channels % self.num_heads:
                raise InputError(
                    f"{out_channels} channels do not split into {self.num_heads} heads"
                )
            self.norm2 = group_norm(out_channels, cfg.eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, cfg.init_attn)
            self.proj = Conv2d(out_channels, out_channels, 1, cfg.init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F_.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F_.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F_.silu(self.norm1(h + params))
        h = self.conv1(self.dropout(h))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attention(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attention(self, x: Tensor) -> Tensor:
        """Multi-head self-attention over the H·W positions, softmax in float32."""
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.float().transpose(-1, -2).unbind(1)  # each [B, heads, HW, c_head]
        out = F_.scaled_dot_product_attention(q, k, v)
        return out.transpose(-1, -2).reshape(b, c, h, w).to(x.dtype)


class UNet(nn.Module):
    """Encoder–decoder with concatenated skips, num_blocks blocks per level down, num_blocks+1 up.

    ``mapping`` turns (noise_labels, class_labels, augment_labels) into the block embedding.
    """

    def __init__(
        self,
        *,
        mapping: nn.Module,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: tuple[int, ...],
        num_blocks: int,
        attn_resolutions: tuple[int, ...],
        block: BlockConfig,
        stem_channels: int,
        attn_all_decoder_blocks: bool,
        encoder_type: Literal["standard", "residual"] = "standard",
    ) -> None:
        super().__init__()
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise InputError(
                f"img_resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1} "
                f"(channel_mult has {len(channel_mult)} levels)"
            )
        self.mapping, self.label_dim = mapping, int(getattr(mapping, "label_dim", 0))
        self.stem = Conv2d(in_channels, stem_channels, 3, block.init)
        self.down = nn.ModuleList()  # per level > 0: the downsampling block
        self.aux_residual = nn.ModuleList()  # per level > 0 (NCSN++): image pyramid projection
        self.enc = nn.ModuleList()  # per level: num_blocks blocks
        skips, cout, caux = [stem_channels], stem_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level:
                self.down.append(UNetBlock(cout, cout, block, resample="down"))
                skips.append(cout)
                if encoder_type == "residual":
                    self.aux_residual.append(
                        Conv2d(
                            caux,
                            cout,
                            3,
                            block.init,
                            resample="down",
                            resample_filter=block.resample_filter,
                            fused=True,
                        )
                    )
                    caux = cout
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(
                    UNetBlock(cout, model_channels * mult, block, attention=res in attn_resolutions)
                )
                cout = model_channels * mult
                skips.append(cout)
            self.enc.append(blocks)

        self.mid = nn.ModuleList(
            [UNetBlock(cout, cout, block, attention=True), UNetBlock(cout, cout, block)]
        )
        self.up = nn.ModuleList()  # per level < last, coarse to fine: the upsampling block
        self.dec = nn.ModuleList()  # per level, coarse to fine: num_blocks + 1 blocks
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level < len(channel_mult) - 1:
                self.up.append(UNetBlock(cout, cout, block, resample="up"))
            blocks = nn.ModuleList()
            for idx in range(num_blocks + 1):
                attn = res in attn_resolutions and (attn_all_decoder_blocks or idx == num_blocks)
                blocks.append(
                    UNetBlock(cout + skips.pop(), model_channels * mult, block, attention=attn)
                )
                cout = model_channels * mult
            self.dec.append(blocks)
        self.out_norm = group_norm(cout, block.eps)
        self.out_conv = Conv2d(cout, out_channels, 3, block.init_zero)

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        emb = self.mapping(noise_labels, class_labels, augment_labels)
        aux = x
        x = self.stem(x)
        skips = [x]
        for level, blocks in enumerate(cast(list[nn.ModuleList], self.enc)):
            if level:
                x = self.down[level - 1](x, emb)
                if len(self.aux_residual):
                    x = aux = (x + self.aux_residual[level - 1](aux)) / math.sqrt(2)
                skips.append(x)
            for enc_block in blocks:
                x = enc_block(x, emb)
                skips.append(x)
        for mid_block in self.mid:
            x = mid_block(x, emb)
        for level, blocks in enumerate(cast(list[nn.ModuleList], self.dec)):
            if level:
                x = self.up[level - 1](x, emb)
            for dec_block in blocks:
                x = dec_block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.out_conv(F_.silu(self.out_norm(x)))


class SongMapping(nn.Module):
    """DDPM++/NCSN++ mapping: [sin, cos] noise features + labels·√label_dim + augment → 2 layers."""

    def __init__(
        self,
        *,
        embedding: nn.Module,
        noise_channels: int,
        emb_channels: int,
        label_dim: int,
        augment_dim: int,
        label_dropout: float,
        init: Init,
    ) -> None:
        super().__init__()
        self.map_noise, self.label_dim, self.label_dropout = embedding, label_dim, label_dropout
        self.map_label = Linear(label_dim, noise_channels, init) if label_dim else None
        self.map_augment = (
            Linear(augment_dim, noise_channels, init, bias=False) if augment_dim else None
        )
        self.map_layer0 = Linear(noise_channels, emb_channels, init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init)

    def forward(
        self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None
    ) -> Tensor:
        cos, sin = self.map_noise(noise_labels).chunk(2, dim=1)
        emb = torch.cat([sin, cos], dim=1)
        if self.map_label is not None:
            labels = class_input(
                class_labels,
                ref=emb,
                label_dim=self.label_dim,
                label_dropout=self.label_dropout,
                training=self.training,
            )
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return F_.silu(self.map_layer1(F_.silu(self.map_layer0(emb))))


class DhariwalMapping(nn.Module):
    """ADM embedding: positional features (+ zero-init augment) → 2 layers, + labels after."""

    def __init__(
        self,
        *,
        noise_channels: int,
        emb_channels: int,
        label_dim: int,
        augment_dim: int,
        label_dropout: float,
        init: Init,
        init_zero: Init,
    ) -> None:
        super().__init__()
        self.label_dim, self.label_dropout = label_dim, label_dropout
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=False)
        self.map_augment = (
            Linear(augment_dim, noise_channels, init_zero, bias=False) if augment_dim else None
        )
        self.map_layer0 = Linear(noise_channels, emb_channels, init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init)
        label_init = Init("kaiming_normal", weight=math.sqrt(label_dim))
        self.map_label = (
            Linear(label_dim, emb_channels, label_init, bias=False) if label_dim else None
        )

    def forward(
        self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None
    ) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F_.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_input(
                class_labels,
                ref=emb,
                label_dim=self.label_dim,
                label_dropout=self.label_dropout,
                training=self.training,
            )
            emb = emb + self.map_label(labels)
        return F_.silu(emb)


class ToyMLP(nn.Module):
    """MLP on [B, D] points, conditioned on a noise embedding (+ label/augment projections)."""

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        hidden: int,
        depth: int,
        embedding: nn.Module,
        emb_channels: int,
        combine: Literal["concat", "add"],
        label_dim: int,
        augment_dim: int,
    ) -> None:
        super().__init__()
        init = Init("xavier_uniform")
        self.map_noise, self.label_dim = embedding, label_dim
        self.map_label = Linear(label_dim, emb_channels, init) if label_dim else None
        self.map_augment = (
            Linear(augment_dim, emb_channels, init, bias=False) if augment_dim else None
        )
        self.map_emb = Linear(emb_channels, hidden, init) if combine == "add" else None
        first = in_features + (emb_channels if combine == "concat" else 0)
        self.layers = nn.ModuleList(
            [Linear(first if i == 0 else hidden, hidden, init) for i in range(depth)]
        )
        self.out = Linear(hidden, out_features, Init("xavier_uniform", weight=0.0))

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            labels = class_input(
                class_labels,
                ref=emb,
                label_dim=self.label_dim,
                label_dropout=0.0,
                training=self.training,
            )
            emb = emb + self.map_label(labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        h = x if self.map_emb is not None else torch.cat([x, emb], dim=1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i == 0 and self.map_emb is not None:
                h = h + self.map_emb(emb)
            h = F_.silu(h)
        return self.out(h)
