"""σ(t): the noise level schedule (EDM Table 1, row σ(t); Chen 2023 γ(t) families).

Each schedule gives σ(t), σ'(t) and σ⁻¹(σ) on float64 tensors. Chen's γ(t) schedules enter
the EDM framework as σ(t) = sqrt((1−γ)/γ)/b, with b the input scale (σ_eff = σ/b).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

schedules = Registry("schedule", "σ(t): noise level as a function of time (Table 1)")


class Schedule(Choice, ABC):
    """σ(t) with its derivative and inverse: a new schedule is a registered subclass with a
    ``name`` literal, ``sigma``, ``sigma_deriv`` and ``sigma_inv`` (float64 tensors in and out)."""

    name: str

    def bind(self, sigma_min: float, sigma_max: float) -> Schedule:
        """The schedule used for a sampling run over [σ_min, σ_max] (VP re-derives β from it)."""
        return self

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """σ(t), increasing in t."""

    @abstractmethod
    def sigma_deriv(self, t: Tensor) -> Tensor:
        """σ'(t) = dσ/dt."""

    @abstractmethod
    def sigma_inv(self, sigma: Tensor) -> Tensor:
        """t = σ⁻¹(σ)."""


def vp_betas(sigma_min: float, sigma_max: float, epsilon_s: float) -> tuple[float, float]:
    """β_d, β_min such that VP σ(ε_s) = σ_min and σ(1) = σ_max (official ablation sampler)."""
    beta_d = (
        2 * (math.log(sigma_min**2 + 1) / epsilon_s - math.log(sigma_max**2 + 1)) / (epsilon_s - 1)
    )
    return beta_d, math.log(sigma_max**2 + 1) - 0.5 * beta_d


def vp_sigma(t: float, beta_d: float = 19.9, beta_min: float = 0.1) -> float:
    """VP σ(t) of one float t: what ``VP.sigma`` gives, without tensors (to check specs)."""
    return math.sqrt(math.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


@schedules.register
class VP(Schedule):
    """VP: σ(t) = sqrt(exp(½β_d t² + β_min t) − 1) (Song et al. 2021).

    With β_d, β_min unset, they are re-derived from the sampler's σ range so that
    σ(ε_s) = σ_min and σ(1) = σ_max, as the official ablation sampler does.
    """

    name: Literal["vp"] = "vp"
    beta_d: float | None = Field(None, gt=0)
    beta_min: float | None = Field(None, ge=0)
    epsilon_s: float = Field(1e-3, gt=0, lt=1)

    def bind(self, sigma_min: float, sigma_max: float) -> VP:
        if self.beta_d is not None and self.beta_min is not None:
            return self
        beta_d, beta_min = vp_betas(sigma_min, sigma_max, self.epsilon_s)
        return self.model_copy(update={"beta_d": beta_d, "beta_min": beta_min})

    def _betas(self) -> tuple[float, float]:
        return (
            19.9 if self.beta_d is None else self.beta_d,
            0.1 if self.beta_min is None else self.beta_min,
        )

    def sigma(self, t: Tensor) -> Tensor:
        beta_d, beta_min = self._betas()
        return ((0.5 * beta_d * t**2 + beta_min * t).exp() - 1).sqrt()

    def sigma_deriv(self, t: Tensor) -> Tensor:
        beta_d, beta_min = self._betas()
        sigma = self.sigma(t)
        return 0.5 * (beta_min + beta_d * t) * (sigma + 1 / sigma)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        beta_d, beta_min = self._betas()
        return ((beta_min**2 + 2 * beta_d * (sigma**2 + 1).log()).sqrt() - beta_min) / beta_d


@schedules.register
class VE(Schedule):
    """VE: σ(t) = sqrt(t) (Song et al. 2021)."""

    name: Literal["ve"] = "ve"

    def sigma(self, t: Tensor) -> Tensor:
        return t.sqrt()

    def sigma_deriv(self, t: Tensor) -> Tensor:
        return 0.5 / t.sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return sigma**2


@schedules.register
class Linear(Schedule):
    """EDM: σ(t) = t (Table 1, "ours")."""

    name: Literal["linear"] = "linear"

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def sigma_deriv(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return sigma


GAMMA_CLIP_MIN = 1e-9  # Chen 2023, Algorithm 1: γ(t) is clipped to [1e-9, 1]


class GammaSchedule(Schedule):
    """A Chen 2023 γ(t) schedule mapped to σ(t) = sqrt((1−γ(t))/γ(t))/b (b = input_scale); a
    new one gives ``gamma``, ``gamma_deriv`` and ``gamma_inv``."""

    input_scale: float = Field(1.0, gt=0)

    @abstractmethod
    def gamma(self, t: Tensor) -> Tensor:
        """γ(t) ∈ (0, 1], decreasing from γ(0) ≈ 1 (clean) towards 0 (noise)."""

    @abstractmethod
    def gamma_deriv(self, t: Tensor) -> Tensor:
        """γ'(t) = dγ/dt."""

    @abstractmethod
    def gamma_inv(self, gamma: Tensor) -> Tensor:
        """t = γ⁻¹(γ)."""

    def _gamma_clipped(self, t: Tensor) -> Tensor:
        return self.gamma(t).clamp(GAMMA_CLIP_MIN, 1.0)

    def sigma(self, t: Tensor) -> Tensor:
        g = self._gamma_clipped(t)
        return ((1 - g) / g).sqrt() / self.input_scale

    def sigma_deriv(self, t: Tensor) -> Tensor:
        # σ = sqrt(1/γ − 1)/b  ⇒  σ' = −γ'/(2 γ² b² σ)
        g, sigma = self._gamma_clipped(t), self.sigma(t)
        return -self.gamma_deriv(t) / (2 * g**2 * self.input_scale**2 * sigma)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return self.gamma_inv(1 / (1 + (self.input_scale * sigma) ** 2))


def _f64(x: float | Tensor) -> Tensor:
    """``x`` in float64 on its own device; a number becomes a 0-d CPU tensor, which combines
    with a tensor on any device (never one on torch's default device)."""
    if isinstance(x, float | int):
        return torch.tensor(x, dtype=torch.float64, device="cpu")
    return x.to(torch.float64)


@schedules.register
class Cosine(GammaSchedule):
    """Chen 2023: γ(t) = (v_e − cos(π(t(e−s)+s)/2)^{2τ})/(v_e − v_s), v = cos(π·/2)^{2τ}."""

    name: Literal["cosine"] = "cosine"
    start: float = 0.0
    end: float = 1.0
    tau: float = Field(1.0, gt=0)

    def _v(self, x: float | Tensor) -> Tensor:
        return (torch.pi * _f64(x) / 2).cos() ** (2 * self.tau)

    def gamma(self, t: Tensor) -> Tensor:
        v_s, v_e = self._v(self.start), self._v(self.end)
        return (v_e - self._v(t * (self.end - self.start) + self.start)) / (v_e - v_s)

    def gamma_deriv(self, t: Tensor) -> Tensor:
        v_s, v_e = self._v(self.start), self._v(self.end)
        u = torch.pi * (t * (self.end - self.start) + self.start) / 2
        dv = 2 * self.tau * u.cos() ** (2 * self.tau - 1) * -u.sin() * torch.pi / 2
        return -dv * (self.end - self.start) / (v_e - v_s)

    def gamma_inv(self, gamma: Tensor) -> Tensor:
        v_s, v_e = self._v(self.start), self._v(self.end)
        v = (v_e - gamma * (v_e - v_s)).clamp(0, 1)
        u = v ** (1 / (2 * self.tau))
        return (2 * u.acos() / torch.pi - self.start) / (self.end - self.start)


@schedules.register
class Sigmoid(GammaSchedule):
    """Chen 2023: γ(t) = (v_e − sigmoid((t(e−s)+s)/τ))/(v_e − v_s), v = sigmoid(·/τ)."""

    name: Literal["sigmoid"] = "sigmoid"
    start: float = -3.0
    end: float = 3.0
    tau: float = Field(1.0, gt=0)

    def _v(self, x: float | Tensor) -> Tensor:
        return (_f64(x) / self.tau).sigmoid()

    def gamma(self, t: Tensor) -> Tensor:
        v_s, v_e = self._v(self.start), self._v(self.end)
        return (v_e - self._v(t * (self.end - self.start) + self.start)) / (v_e - v_s)

    def gamma_deriv(self, t: Tensor) -> Tensor:
        v_s, v_e = self._v(self.start), self._v(self.end)
        v = self._v(t * (self.end - self.start) + self.start)
        return -v * (1 - v) * (self.end - self.start) / self.tau / (v_e - v_s)

    def gamma_inv(self, gamma: Tensor) -> Tensor:
        v_s, v_e = self._v(self.start), self._v(self.end)
        v = v_e - gamma * (v_e - v_s)
        return (self.tau * v.logit() - self.start) / (self.end - self.start)


@schedules.register
class LinearGamma(GammaSchedule):
    """Chen 2023: γ(t) = 1 − t."""

    name: Literal["linear_gamma"] = "linear_gamma"

    def gamma(self, t: Tensor) -> Tensor:
        return 1 - t

    def gamma_deriv(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def gamma_inv(self, gamma: Tensor) -> Tensor:
        return 1 - gamma
