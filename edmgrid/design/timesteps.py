"""Time step discretisation: the σ_i, i < N, a sampler visits (EDM Table 1, row "Time steps").

Each choice returns N noise levels σ_0 > … > σ_{N−1} in float64; the sampler maps them to
t_i = σ⁻¹(round_sigma(σ_i)) and appends t_N = 0 (official ``ablation_sampler``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from edmgrid.design.schedule import VP, Schedule, vp_betas, vp_sigma
from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

timesteps = Registry("timesteps", "discretisation of the σ range into N steps (Table 1)")


class Timesteps(Choice):
    """N steps over [σ_min, σ_max]; unset bounds take the discretisation's defaults."""

    name: str
    num_steps: int = Field(18, ge=2)
    sigma_min: float | None = Field(None, gt=0)
    sigma_max: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Timesteps:
        if (
            self.sigma_min is not None
            and self.sigma_max is not None
            and self.sigma_min >= self.sigma_max
        ):
            raise ValueError(f"sigma_min ({self.sigma_min}) must be < sigma_max ({self.sigma_max})")
        return self

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        raise NotImplementedError

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        raise NotImplementedError

    def _i(self) -> Tensor:
        return torch.arange(self.num_steps, dtype=torch.float64)


@timesteps.register
class VPSteps(Timesteps):
    """VP: t_i = 1 + i/(N−1)·(ε_s − 1), σ_i = σ_VP(t_i) with β re-derived from the σ range."""

    name: Literal["vp"] = "vp"
    epsilon_s: float = Field(1e-3, gt=0, lt=1)

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        return vp_sigma(self.epsilon_s), vp_sigma(1.0)

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        beta_d, beta_min = vp_betas(sigma_min, sigma_max, self.epsilon_s)
        t = 1 + self._i() / (self.num_steps - 1) * (self.epsilon_s - 1)
        return VP(beta_d=beta_d, beta_min=beta_min).sigma(t)


@timesteps.register
class VESteps(Timesteps):
    """VE: σ_i² = σ_max²·(σ_min²/σ_max²)^{i/(N−1)}, a geometric sequence."""

    name: Literal["ve"] = "ve"

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        return 0.02, 100.0

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        t = sigma_max**2 * (sigma_min**2 / sigma_max**2) ** (self._i() / (self.num_steps - 1))
        return t.sqrt()


def iddpm_u(M: int, C_1: float, C_2: float, dtype: torch.dtype | None = None) -> Tensor:
    """iDDPM noise levels u_0 > … > u_M = 0 by the recursion of Table 1.

    The sampler computes it in float64 (``dtype`` None), the official network buffer in float32.
    """
    dtype = torch.float64 if dtype is None else dtype
    j = torch.arange(M + 1, dtype=dtype)
    alpha_bar = (0.5 * math.pi * j / M / (C_2 + 1)).sin() ** 2
    u = torch.zeros(M + 1, dtype=dtype)
    for k in range(M, 0, -1):
        u[k - 1] = ((u[k] ** 2 + 1) / (alpha_bar[k - 1] / alpha_bar[k]).clamp(min=C_1) - 1).sqrt()
    return u


@timesteps.register
class IDDPMSteps(Timesteps):
    """iDDPM + DDIM: σ_i = u_{j(i)} over the u_j within [σ_min, σ_max] (j0 = 8 at σ_max = 81).

    The index is rounded half-to-even, as the official ``torch.round`` does (Table 1: ⌊·+½⌋).
    """

    name: Literal["iddpm"] = "iddpm"
    C_1: float = Field(0.001, gt=0)
    C_2: float = Field(0.008, ge=0)
    M: int = Field(1000, ge=2)

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        return 0.002, 81.0

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        u = iddpm_u(self.M, self.C_1, self.C_2)
        u = u[(u >= sigma_min) & (u <= sigma_max)]
        if len(u) < 1:
            raise ValueError(f"no iDDPM level u_j lies in [{sigma_min}, {sigma_max}]")
        index = ((len(u) - 1) / (self.num_steps - 1) * self._i()).round().long()
        return u[index]


@timesteps.register
class EDMSteps(Timesteps):
    """EDM Eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ."""

    name: Literal["edm"] = "edm"
    rho: float = Field(7.0, gt=0)

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        return 0.002, 80.0

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        lo, hi = sigma_min ** (1 / self.rho), sigma_max ** (1 / self.rho)
        return (hi + self._i() / (self.num_steps - 1) * (lo - hi)) ** self.rho


@timesteps.register
class UniformSteps(Timesteps):
    """Uniform in t over [σ⁻¹(σ_min), σ⁻¹(σ_max)] of the chosen σ(t); defaults t ∈ [ε_s, 1]."""

    name: Literal["uniform"] = "uniform"
    epsilon_s: float = Field(1e-3, gt=0, lt=1)

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        ends = schedule.sigma(torch.tensor([self.epsilon_s, 1.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        ends = schedule.sigma_inv(torch.tensor([sigma_max, sigma_min], dtype=torch.float64))
        t = ends[0] + self._i() / (self.num_steps - 1) * (ends[1] - ends[0])
        return schedule.sigma(t)
