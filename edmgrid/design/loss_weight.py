"""λ(σ): the loss weight of E_σ E_{y,n} λ(σ)‖D(y+n; σ) − y‖² (EDM Eq. 8, Table 1)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

loss_weights = Registry("loss_weight", "λ(σ): loss weight per noise level (Table 1)")


class LossWeight(Choice, ABC):
    """λ(σ): a new loss weight is a registered subclass with a ``name`` literal and ``__call__``."""

    name: str

    @abstractmethod
    def __call__(self, sigma: Tensor) -> Tensor:
        """λ at each of ``sigma``'s noise levels (same shape)."""


class InverseSigmaSquared(LossWeight):
    """λ(σ) = 1/σ² (the ε-prediction MSE of VP, VE and iDDPM)."""

    def __call__(self, sigma: Tensor) -> Tensor:
        return 1 / sigma**2


@loss_weights.register
class VPWeight(InverseSigmaSquared):
    """VP: λ(σ) = 1/σ²."""

    name: Literal["vp"] = "vp"


@loss_weights.register
class VEWeight(InverseSigmaSquared):
    """VE: λ(σ) = 1/σ²."""

    name: Literal["ve"] = "ve"


@loss_weights.register
class IDDPMWeight(InverseSigmaSquared):
    """iDDPM: λ(σ) = 1/σ² (the L_simple term; L_vlb is not modelled)."""

    name: Literal["iddpm"] = "iddpm"


@loss_weights.register
class EDMWeight(LossWeight):
    """EDM: λ(σ) = (σ² + σ_d²)/(σ·σ_d)², so that λ·c_out² = 1."""

    name: Literal["edm"] = "edm"
    sigma_data: float = Field(0.5, gt=0)

    def __call__(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
