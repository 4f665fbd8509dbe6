"""Models of other libraries' conventions as denoisers ``D(x, sigma, class_labels)``.

- ``KDiffusionDenoiser``: k-diffusion's ``model(x, sigma, **extra) -> D(x; σ)``, σ one value
  per sample. Its ``sigma_min``/``sigma_max`` (k-diffusion's ``DiscreteSchedule`` has them) bound
  the sampler; a quantizing discrete model (``sigmas`` table, ``quantize``) rounds σ to its table.
- ``EpsilonDenoiser``: a discrete-time ε-prediction network with its ᾱ table (diffusers'
  ``UNet2DModel`` and ``scheduler.alphas_cumprod``, DDPM, CompVis). With x_t = √ᾱ_j·y + √(1−ᾱ_j)·ε,
  x = x_t/√ᾱ_j = y + σ_j·ε has the noise level σ_j = √((1−ᾱ_j)/ᾱ_j) of the EDM view (App. C.3),
  and D(x; σ_j) = x − σ_j·ε̂(x/√(σ_j²+1), j). That is the VP/iDDPM preconditioning of
  Table 1: c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), c_noise = j.

Both take ``dtype``: x and σ are cast to it before the call (float32 for most networks; None
keeps the sampler's float64), and D comes back in x's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _one_per_sample(sigma: Tensor, x: Tensor) -> Tensor:
    """σ as one value per sample, [N]."""
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(len(x))


def _nearest_in_log(table: Tensor, sigma: Tensor) -> Tensor:
    """Index of the entry of ``table`` nearest to each σ in log σ (k-diffusion's ``quantize``)."""
    distance = sigma.reshape(-1, 1).log() - table.to(sigma).log().reshape(1, -1)
    return distance.abs().argmin(1).reshape(sigma.shape)


class KDiffusionDenoiser:
    """A k-diffusion-style model ``model(x, sigma, **extra)`` as a denoiser.

    ``extra`` goes to every call; class labels (one-hot, when ``label_dim`` > 0) are passed as
    the keyword ``label_key``. σ bounds and rounding come from the model's attributes.
    """

    def __init__(
        self,
        model: Any,
        *,
        label_dim: int = 0,
        label_key: str = "class_labels",
        dtype: torch.dtype | None = None,
        **extra: Any,
    ) -> None:
        self.model, self.extra, self.label_key, self.dtype = model, extra, label_key, dtype
        self.label_dim = label_dim
        self.sigma_min = float(getattr(model, "sigma_min", 0.0))
        self.sigma_max = float(getattr(model, "sigma_max", float("inf")))
        table = getattr(model, "sigmas", None)
        self.table = table if getattr(model, "quantize", False) else None

    def round_sigma(self, sigma: Tensor) -> Tensor:
        if self.table is None:
            return sigma
        return self.table.to(sigma)[_nearest_in_log(self.table, sigma)]

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        extra = dict(self.extra)
        if class_labels is not None:
            extra[self.label_key] = class_labels
        inputs = x if self.dtype is None else x.to(self.dtype)
        return self.model(inputs, _one_per_sample(sigma, inputs), **extra).to(x.dtype)


class EpsilonDenoiser:
    """A discrete-time ε-predictor ``eps_model(x_t, timestep, **extra)`` with its ᾱ table.

    ``alphas_cumprod[j]`` = ᾱ_j for j = 0 … T−1. σ_min, σ_max are σ_0 and σ_{T−1}. With
    ``quantize`` (the default), ``round_sigma`` snaps σ to the nearest σ_j in log σ, so that the
    sampler's steps are noise levels the network was trained on and its timestep is the integer
    j; without, a σ between σ_j and σ_{j+1} gets the fractional timestep interpolated linearly in
    log σ (k-diffusion's ``sigma_to_t``). An output with a ``sample`` attribute (diffusers'
    ``UNet2DOutput``) is unwrapped.
    """

    def __init__(
        self,
        eps_model: Any,
        alphas_cumprod: Tensor,
        *,
        quantize: bool = True,
        label_dim: int = 0,
        label_key: str = "class_labels",
        dtype: torch.dtype | None = None,
        **extra: Any,
    ) -> None:
        alphas = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if alphas.ndim != 1 or len(alphas) < 2 or not bool(((alphas > 0) & (alphas < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-d table of at least 2 values in (0, 1)")
        self.sigmas = ((1 - alphas) / alphas).sqrt()
        if not bool((self.sigmas.diff() > 0).all()):
            raise ValueError("alphas_cumprod must decrease with the timestep")
        self.eps_model, self.extra, self.quantize = eps_model, extra, quantize
        self.label_dim, self.label_key, self.dtype = label_dim, label_key, dtype
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def round_sigma(self, sigma: Tensor) -> Tensor:
        if not self.quantize:
            return sigma
        return self.sigmas.to(sigma)[_nearest_in_log(self.sigmas, sigma)]

    def timestep(self, sigma: Tensor) -> Tensor:
        """j of σ: the nearest index (``quantize``), else interpolated linearly in log σ."""
        if self.quantize:
            return _nearest_in_log(self.sigmas, sigma)
        log_sigmas = self.sigmas.to(sigma).log()
        log_sigma = sigma.log().clamp(log_sigmas[0], log_sigmas[-1])
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(
            0, len(log_sigmas) - 2
        )
        w = (log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])
        return low + w

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        extra = dict(self.extra)
        if class_labels is not None:
            extra[self.label_key] = class_labels
        sigma = _one_per_sample(sigma, x)
        view = (-1,) + (1,) * (x.ndim - 1)
        x_t = x / (sigma**2 + 1).sqrt().reshape(view)
        t = self.timestep(sigma.to(torch.float64)).to(x.device)
        if self.dtype is not None:
            x_t, t = x_t.to(self.dtype), t.to(self.dtype) if t.is_floating_point() else t
        eps = self.eps_model(x_t, t, **extra)
        eps = getattr(eps, "sample", eps)
        return x - sigma.reshape(view) * eps.to(x.dtype)
