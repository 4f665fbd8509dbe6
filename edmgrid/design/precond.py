"""Preconditioning: D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)) (EDM Table 1, Eq. 7).

Each choice gives the four coefficients, the σ range its network supports, and round_sigma
(the nearest noise level the network was trained on; identity except for iDDPM).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from edmgrid.design.schedule import VP
from edmgrid.design.timesteps import iddpm_u
from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

preconds = Registry("precond", "preconditioning c_skip, c_out, c_in, c_noise (Table 1)")

Coefficients = tuple["Tensor", "Tensor", "Tensor", "Tensor"]


class Precond(Choice, ABC):
    """c_skip, c_out, c_in, c_noise as functions of σ, and the supported σ range: a new
    preconditioning is a registered subclass with a ``name`` literal and ``coefficients``."""

    name: str

    def sigma_range(self) -> tuple[float, float]:
        """The [σ_min, σ_max] the network supports; samplers clamp their range to it."""
        return 0.0, math.inf

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return sigma

    @abstractmethod
    def coefficients(self, sigma: Tensor) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise) at ``sigma``, each broadcastable against it (Eq. 7)."""


@preconds.register
class VPPrecond(Precond):
    """VP: c_skip = 1, c_out = −σ, c_in = 1/sqrt(σ²+1), c_noise = (M−1)·σ⁻¹(σ)."""

    name: Literal["vp"] = "vp"
    beta_d: float = Field(19.9, gt=0)
    beta_min: float = Field(0.1, ge=0)
    M: int = Field(1000, ge=2)
    epsilon_t: float = Field(1e-5, gt=0, lt=1)

    def _vp(self) -> VP:
        return VP(beta_d=self.beta_d, beta_min=self.beta_min)

    def sigma_range(self) -> tuple[float, float]:
        """[σ(ε_t), σ(1)] in float32, as the official network computes it: σ(ε_t)² ≈ 1e−6 is
        exp(·) − 1 at float32's resolution 2⁻²³ near 1, so σ_min = 2⁻¹⁰ = 0.0009765625, not the
        float64 0.0010005."""
        ends = self._vp().sigma(
            torch.tensor([self.epsilon_t, 1.0], dtype=torch.float32, device="cpu")
        )
        return float(ends[0]), float(ends[1])

    def coefficients(self, sigma: Tensor) -> Coefficients:
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self._vp().sigma_inv(sigma)
        return torch.ones_like(sigma), -sigma, c_in, c_noise


@preconds.register
class VEPrecond(Precond):
    """VE: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2)."""

    name: Literal["ve"] = "ve"
    sigma_min: float = Field(0.02, gt=0)
    sigma_max: float = Field(100.0, gt=0)

    def sigma_range(self) -> tuple[float, float]:
        return self.sigma_min, self.sigma_max

    def coefficients(self, sigma: Tensor) -> Coefficients:
        one = torch.ones_like(sigma)
        return one, sigma, one, (0.5 * sigma).log()


@preconds.register
class IDDPMPrecond(Precond):
    """iDDPM: c_skip = 1, c_out = −σ, c_in = 1/sqrt(σ²+1), c_noise = M−1−argmin_j |u_j − σ|."""

    name: Literal["iddpm"] = "iddpm"
    C_1: float = Field(0.001, gt=0)
    C_2: float = Field(0.008, ge=0)
    M: int = Field(1000, ge=2)

    def u(self, device: torch.device | None = None) -> Tensor:
        """u_0 > … > u_M = 0, computed in float32 like the official network buffer (on
        ``device``, default the CPU)."""
        return iddpm_u(self.M, self.C_1, self.C_2, torch.float32).to(device or "cpu")

    def sigma_range(self) -> tuple[float, float]:
        u = self.u()
        return float(u[self.M - 1]), float(u[0])

    def index(self, sigma: Tensor) -> Tensor:
        """j = argmin_j |u_j − σ| over the whole buffer, compared in float32 (as official: a σ
        below u_{M−1}/2, outside the network's range, rounds to u_M = 0 and c_noise = −1)."""
        u = self.u(sigma.device)
        return (sigma.float().reshape(-1, 1) - u.reshape(1, -1)).abs().argmin(1)

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.u(sigma.device)[self.index(sigma)].to(sigma.dtype).reshape(sigma.shape)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        c_noise = (self.M - 1 - self.index(sigma)).to(sigma.dtype).reshape(sigma.shape)
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


@preconds.register
class EDMPrecond(Precond):
    """EDM: c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/sqrt(σ²+σ_d²), c_in = 1/sqrt(σ²+σ_d²), ¼ln σ."""

    name: Literal["edm"] = "edm"
    sigma_data: float = Field(0.5, gt=0)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4
