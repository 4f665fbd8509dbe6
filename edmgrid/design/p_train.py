"""p_train(σ): the distribution of noise levels during training (EDM Table 1; Chen 2023)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from edmgrid.design.precond import IDDPMPrecond
from edmgrid.design.schedule import VP, Cosine, GammaSchedule, LinearGamma, Sigmoid
from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

p_trains = Registry("p_train", "p_train(σ): training noise level distribution (Table 1)")


class PTrain(Choice, ABC):
    """Draws one σ per training image, on the generator's device (the CPU without one): a new
    p_train(σ) is a registered subclass with a ``name`` literal and ``sample``."""

    name: str

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n noise levels σ ~ p_train (float32, shape [n]), drawn from ``generator``."""


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64, device=_device(generator))


@p_trains.register
class VPTrain(PTrain):
    """VP: σ = σ_VP(t), t ~ U(ε_t, 1)."""

    name: Literal["vp"] = "vp"
    beta_d: float = Field(19.9, gt=0)
    beta_min: float = Field(0.1, ge=0)
    epsilon_t: float = Field(1e-5, gt=0, lt=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        t = 1 + _uniform(n, generator) * (self.epsilon_t - 1)
        return VP(beta_d=self.beta_d, beta_min=self.beta_min).sigma(t).float()


@p_trains.register
class VETrain(PTrain):
    """VE: ln σ ~ U(ln σ_min, ln σ_max)."""

    name: Literal["ve"] = "ve"
    sigma_min: float = Field(0.02, gt=0)
    sigma_max: float = Field(100.0, gt=0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = _uniform(n, generator)
        return (self.sigma_min * (self.sigma_max / self.sigma_min) ** u).float()


@p_trains.register
class IDDPMTrain(PTrain):
    """iDDPM: σ = u_j, j ~ U{0, …, M−1}."""

    name: Literal["iddpm"] = "iddpm"
    C_1: float = Field(0.001, gt=0)
    C_2: float = Field(0.008, ge=0)
    M: int = Field(1000, ge=2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = _device(generator)
        u = IDDPMPrecond(C_1=self.C_1, C_2=self.C_2, M=self.M).u(device)
        return u[torch.randint(self.M, (n,), generator=generator, device=device)]


@p_trains.register
class EDMTrain(PTrain):
    """EDM: ln σ ~ N(P_mean, P_std²)."""

    name: Literal["edm"] = "edm"
    P_mean: float = -1.2
    P_std: float = Field(1.2, gt=0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, generator=generator, dtype=torch.float64, device=_device(generator))
        return (self.P_mean + self.P_std * z).exp().float()


T_MIN = 1e-5  # t ~ U(0, 1) is drawn from [T_MIN, 1] so that σ(t) > 0 and λ(σ) stays finite


class GammaTrain(PTrain, GammaSchedule):
    """Chen 2023: σ = σ_γ(t)/b, t ~ U(0, 1)."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        t = T_MIN + _uniform(n, generator) * (1 - T_MIN)
        return self.sigma(t).float()


@p_trains.register
class CosineTrain(GammaTrain, Cosine):
    """Chen 2023 cosine γ(t), t ~ U(0, 1), input scale b."""

    name: Literal["cosine"] = "cosine"


@p_trains.register
class SigmoidTrain(GammaTrain, Sigmoid):
    """Chen 2023 sigmoid γ(t), t ~ U(0, 1), input scale b."""

    name: Literal["sigmoid"] = "sigmoid"


@p_trains.register
class LinearGammaTrain(GammaTrain, LinearGamma):
    """Chen 2023 γ(t) = 1 − t, t ~ U(0, 1), input scale b."""

    name: Literal["linear_gamma"] = "linear_gamma"
