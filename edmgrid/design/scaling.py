"""s(t): the signal scaling (EDM Table 1, row s(t)).

A scaling is a function of the schedule's σ(t): s = f(σ), s' = f'(σ)·σ'(t).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

scalings = Registry("scaling", "s(t): signal scaling (Table 1)")


class Scaling(Choice, ABC):
    """s(t) and s'(t), given σ(t) and σ'(t) of the schedule and its input scale b: a new
    scaling is a registered subclass with a ``name`` literal, ``s`` and ``s_deriv``."""

    name: str

    @abstractmethod
    def s(self, sigma: Tensor, b: float) -> Tensor:
        """s at noise level σ = σ(t) (float64, same shape)."""

    @abstractmethod
    def s_deriv(self, sigma: Tensor, sigma_deriv: Tensor, b: float) -> Tensor:
        """ds/dt = f'(σ)·σ'(t), given σ(t) and σ'(t)."""


@scalings.register
class NoScaling(Scaling):
    """s(t) = 1 (VE, iDDPM, EDM)."""

    name: Literal["none"] = "none"

    def s(self, sigma: Tensor, b: float) -> Tensor:
        return torch.ones_like(sigma)

    def s_deriv(self, sigma: Tensor, sigma_deriv: Tensor, b: float) -> Tensor:
        return torch.zeros_like(sigma)


@scalings.register
class VPScaling(Scaling):
    """VP: s(t) = 1/sqrt(σ(t)² + 1), s'(t) = −σσ's³."""

    name: Literal["vp"] = "vp"

    def s(self, sigma: Tensor, b: float) -> Tensor:
        return 1 / (sigma**2 + 1).sqrt()

    def s_deriv(self, sigma: Tensor, sigma_deriv: Tensor, b: float) -> Tensor:
        return -sigma * sigma_deriv * self.s(sigma, b) ** 3


@scalings.register
class GammaScaling(Scaling):
    """Chen 2023: s(t) = sqrt(γ(t)) = 1/sqrt((bσ(t))² + 1), with b the schedule's input scale."""

    name: Literal["gamma"] = "gamma"

    def s(self, sigma: Tensor, b: float) -> Tensor:
        return 1 / ((b * sigma) ** 2 + 1).sqrt()

    def s_deriv(self, sigma: Tensor, sigma_deriv: Tensor, b: float) -> Tensor:
        return -(b**2) * sigma * sigma_deriv * self.s(sigma, b) ** 3
