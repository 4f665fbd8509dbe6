"""The probability flow ODE in terms of σ(t) and s(t) (EDM Eq. 4 / Eq. 81)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from edmgrid.design.scaling import Scaling
from edmgrid.design.schedule import Schedule

if TYPE_CHECKING:
    from torch import Tensor

#: (x, σ) -> D(x; σ), float64; class labels are bound by the caller.
Denoise = Callable[["Tensor", "Tensor"], "Tensor"]


@dataclass(frozen=True)
class ProbabilityFlow:
    """dx/dt = (σ'/σ + s'/s)·x − (σ's/σ)·D(x/s; σ)  (Eq. 4), all in float64."""

    schedule: Schedule
    scaling: Scaling
    denoise: Denoise  # float64 in, float64 out
    round_sigma: Callable[[Tensor], Tensor]

    @cached_property
    def b(self) -> float:
        """The schedule's input scale (Chen 2023), 1 for the others."""
        return float(getattr(self.schedule, "input_scale", 1.0))

    def sigma(self, t: Tensor) -> Tensor:
        return self.schedule.sigma(t)

    def s(self, t: Tensor) -> Tensor:
        return self.scaling.s(self.schedule.sigma(t), self.b)

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """t = σ⁻¹(round_sigma(σ)): the time of the nearest noise level the denoiser supports."""
        return self.schedule.sigma_inv(self.round_sigma(sigma))

    def derivative(self, x: Tensor, t: Tensor) -> Tensor:
        """dx/dt at a scalar (0-d) time t."""
        return self.flow(x, t)[0]

    def flow(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """dx/dt at a scalar (0-d) time t, and the D(x/s; σ) it is made of. The coefficients
        are computed as 0-d tensors (so an overflow gives inf/nan, reported as non-finite
        samples) and applied as Python floats."""
        sigma, dsigma = self.schedule.sigma(t), self.schedule.sigma_deriv(t)
        s = self.scaling.s(sigma, self.b)
        ds = self.scaling.s_deriv(sigma, dsigma, self.b)
        denoised = self.denoise(x if float(s) == 1 else x / s, sigma)
        scale, weight = float(dsigma / sigma + ds / s), float(dsigma * s / sigma)
        return (x * scale).sub_(denoised, alpha=weight), denoised
