"""Denoisers D(x; σ) with the official ``net(x, sigma, class_labels)`` convention.

Any callable ``D(x, sigma, class_labels=None)`` is a denoiser. It may carry the attributes of
the official EDM networks, which the sampler honours (``ablation_sampler`` semantics):
``sigma_min`` and ``sigma_max`` (the σ range it supports, missing: [0, ∞)), ``round_sigma``
(σ ↦ the nearest noise level it supports, missing: none), ``label_dim`` (the number of classes
it is conditioned on, missing: 0, unconditional). edmgrid's own denoisers carry the same.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from edmgrid.design.precision import DEFAULT, Precision, forward_precision
from edmgrid.design.precond import Precond


class Denoiser(Protocol):
    """D(x; σ): σ is a 0-d tensor or one value per sample; returns a tensor shaped like x.

    The sampler passes x and σ in float64, and ``class_labels`` only to a conditional
    denoiser (``label_dim`` > 0), so ``D(x, sigma)`` is enough for an unconditional one.
    """

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor: ...


def sigma_limits(denoiser: Denoiser) -> tuple[float, float]:
    """The [σ_min, σ_max] a denoiser supports: its ``sigma_min``, ``sigma_max`` (else 0, ∞)."""
    return (
        float(getattr(denoiser, "sigma_min", 0.0)),
        float(getattr(denoiser, "sigma_max", math.inf)),
    )


def round_sigma(denoiser: Denoiser, sigma: Tensor) -> Tensor:
    """σ rounded by the denoiser's ``round_sigma`` (else as it is), in σ's dtype and device."""
    rounding = getattr(denoiser, "round_sigma", None)
    if rounding is None:
        return sigma
    return torch.as_tensor(rounding(sigma), dtype=sigma.dtype, device=sigma.device)


def label_dim(denoiser: Denoiser) -> int:
    """Number of classes a denoiser is conditioned on (its ``label_dim``; 0: unconditional)."""
    return int(getattr(denoiser, "label_dim", 0) or 0)


class AnalyticDenoiser:
    """The ideal denoiser of a finite data set {y_i}: D(x; σ) = Σ_i softmax_i(−‖x−y_i‖²/2σ²)·y_i.

    Computed in float64 with an online softmax over chunks of the data, so memory stays at
    ``batch × chunk`` however large the data set (EDM App. B.3, Eq. 57); on the data's device,
    where x must be.
    """

    sigma_min, sigma_max, label_dim = 0.0, math.inf, 0  # every σ > 0, no rounding

    def __init__(self, data: Tensor, chunk: int = 4096) -> None:
        self.y = data.reshape(len(data), -1).double()
        self.y_sq = (self.y**2).sum(1)
        self.chunk = chunk

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        flat = x.reshape(len(x), -1).double()
        inv_var = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).pow(-2)
        inv_var = inv_var.expand(len(flat))
        # logits_i = −‖x − y_i‖²/2σ² up to the per-row constant −‖x‖²/2σ², which softmax ignores
        scaled = flat * inv_var[:, None]
        if len(self.y) <= self.chunk:
            logits = (scaled @ self.y.T).addr_(inv_var, self.y_sq, alpha=-0.5)
            return (logits.softmax(1) @ self.y).reshape(x.shape)
        m = torch.full((len(flat), 1), -math.inf, dtype=torch.float64, device=flat.device)
        z = torch.zeros_like(m)
        acc = torch.zeros_like(flat)
        for lo in range(0, len(self.y), self.chunk):
            y, y_sq = self.y[lo : lo + self.chunk], self.y_sq[lo : lo + self.chunk]
            logits = (scaled @ y.T).addr_(inv_var, y_sq, alpha=-0.5)
            m_new = torch.maximum(m, logits.amax(1, keepdim=True))
            w = logits.sub_(m_new).exp_()
            scale = (m - m_new).exp_()
            z = z.mul_(scale).add_(w.sum(1, keepdim=True))
            acc = acc.mul_(scale).addmm_(w, y)
            m = m_new
        return (acc / z).reshape(x.shape)


class PrecondDenoiser(torch.nn.Module):
    """D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise) with a float32 network F (Eq. 7).

    Like the official preconditioners, it carries ``sigma_min``, ``sigma_max`` (the
    preconditioner's range), ``round_sigma`` and ``label_dim`` (the network's).
    """

    def __init__(self, net: torch.nn.Module, precond: Precond) -> None:
        super().__init__()
        self.net, self.precond = net, precond
        self.sigma_min, self.sigma_max = precond.sigma_range()
        self.label_dim = int(getattr(net, "label_dim", 0))

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.precond.round_sigma(sigma)

    def forward(
        self,
        x: Tensor,
        sigma: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(len(x)) if len(sigma) == 1 else sigma
        c_skip, c_out, c_in, c_noise = self.precond.coefficients(sigma)
        view = (-1,) + (1,) * (x.ndim - 1)
        F = self.net(c_in.reshape(view) * x, c_noise, class_labels, augment_labels)
        return c_skip.reshape(view) * x + c_out.reshape(view) * F.float()


class TorchDenoiser:
    """A network denoiser called without autograd, in batches the caller chooses, on x's
    device (the network's) with its forward in ``precision``."""

    def __init__(self, net: PrecondDenoiser, precision: Precision = DEFAULT) -> None:
        self.net, self.precision = net, precision
        self.sigma_min, self.sigma_max, self.label_dim = net.sigma_min, net.sigma_max, net.label_dim

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.net.round_sigma(sigma)

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        with torch.inference_mode(), forward_precision(self.precision, x.device):
            return self.net(x, sigma, class_labels)
