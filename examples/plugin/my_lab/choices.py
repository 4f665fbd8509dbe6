"""Two design choices of one's own, registered with the decorators of the built-in ones.

Named by a space as ``plugins: [my_lab.choices]`` (importable from the space file's folder).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from edmgrid.design.ode import ProbabilityFlow
from edmgrid.design.schedule import Schedule, schedules
from edmgrid.design.solver import Callback, RandnLike, Solver, StepNoise, report_step, solvers

if TYPE_CHECKING:
    from torch import Tensor


@schedules.register
class Power(Schedule):
    """σ(t) = t^p: p = ½ is VE's σ(t) = √t, p = 1 is EDM's σ(t) = t (Table 1)."""

    name: Literal["power"] = "power"
    p: float = Field(2.0, gt=0)

    def sigma(self, t: Tensor) -> Tensor:
        return t**self.p

    def sigma_deriv(self, t: Tensor) -> Tensor:
        return self.p * t ** (self.p - 1)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return sigma ** (1 / self.p)


@solvers.register
class Kutta3(Solver):
    """Kutta's third-order Runge–Kutta method with Algorithm 2's churn; Euler into t_N = 0."""

    name: Literal["kutta3"] = "kutta3"

    def solve(
        self,
        ode: ProbabilityFlow,
        x: Tensor,
        t_steps: Tensor,
        randn_like: RandnLike,
        callback: Callback | None = None,
    ) -> Tensor:
        num_steps, noise = len(t_steps) - 1, StepNoise(randn_like)
        for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
            x, t = self.churn(ode, x, t_cur, num_steps, noise)
            h = float(t_next - t)
            k1, denoised = ode.flow(x, t)
            report_step(callback, i, ode, x, t_cur, t, denoised)
            if i == num_steps - 1:
                x = x + h * k1
                continue
            k2 = ode.derivative(x + h / 2 * k1, t + h / 2)
            k3 = ode.derivative(x + h * (2 * k2 - k1), t + h)
            x = x + h / 6 * (k1 + 4 * k2 + k3)
        return x
