"""Preconditioning: D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)) (EDM Table 1, Eq. 7).

Each choice gives the four coefficients, the σ range its network supports, and round_sigma
(the nearest noise level the network was trained on; identity except for iDDPM).
"""

from __future__ import annotations

import math
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


class Precond(Choice):
    """c_skip, c_out, c_in, c_noise as functions of σ, and the supported σ range."""

    name: str

    def sigma_range(self) -> tuple[float, float]:
        """The [σ_min, σ_max] the network supports; samplers clamp their range to it."""
        return 0.0, math.inf

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return sigma

    def coefficients(self, sigma: Tensor) -> Coefficients:
        raise NotImplementedError


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
        ends = self._vp().sigma(
            torch.tensor([self.epsilon_t, 1.0], dtype=torch.float64, device="cpu")
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

    def u(self) -> Tensor:
        """u_0 > … > u_{M−1}, computed in float32 like the official network buffer."""
        return iddpm_u(self.M, self.C_1, self.C_2, torch.float32)[: self.M]

    def sigma_range(self) -> tuple[float, float]:
        u = self.u()
        return float(u[-1]), float(u[0])

    def index(self, sigma: Tensor) -> Tensor:
        """j = argmin_j |u_j − σ|, compared in float32."""
        return (sigma.float().reshape(-1, 1) - self.u().reshape(1, -1)).abs().argmin(1)

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.u()[self.index(sigma)].to(sigma.dtype).reshape(sigma.shape)

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
