"""ODE/SDE solvers over a time grid t_0 > … > t_N = 0 (EDM Algorithms 1–3).

Every solver has one signature, ``solve(ode, x, t_steps, randn_like) -> x``, and the
stochastic "churn" of Algorithm 2 (S_churn, S_min, S_max, S_noise). The derivative is
evaluated at (x̂, t̂); the last step into t_N = 0 is always an Euler step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor

from edmgrid.design.ode import ProbabilityFlow
from edmgrid.registry import Choice, Registry

solvers = Registry("solver", "ODE solver with the stochastic churn of Algorithm 2")

RandnLike = Callable[[Tensor], Tensor]


class Solver(Choice):
    """A solver with Algorithm 2's churn: γ_i = min(S_churn/N, √2−1) where S_min ≤ σ_i ≤ S_max."""

    name: str
    S_churn: float = Field(0.0, ge=0)
    S_min: float = Field(0.0, ge=0)
    S_max: float = Field(math.inf, ge=0)
    S_noise: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Solver:
        if self.S_min > self.S_max:
            raise ValueError(f"S_min ({self.S_min}) must be <= S_max ({self.S_max})")
        return self

    def churn(
        self, ode: ProbabilityFlow, x: Tensor, t: Tensor, num_steps: int, randn_like: RandnLike
    ) -> tuple[Tensor, Tensor]:
        """Raise the noise level of x from σ(t) to σ(t̂) = (1+γ)σ(t) (Algorithm 2, lines 4–6)."""
        sigma = ode.sigma(t)
        gamma = min(self.S_churn / num_steps, math.sqrt(2) - 1)
        if not self.S_min <= float(sigma) <= self.S_max:
            gamma = 0.0
        t_hat = ode.t_of_sigma(sigma * (1 + gamma))
        sigma_hat, s_hat = ode.sigma(t_hat), ode.s(t_hat)
        noise = (sigma_hat**2 - sigma**2).clamp(min=0).sqrt() * s_hat * self.S_noise
        return s_hat / ode.s(t) * x + noise * randn_like(x), t_hat

    def solve(
        self, ode: ProbabilityFlow, x: Tensor, t_steps: Tensor, randn_like: RandnLike
    ) -> Tensor:
        raise NotImplementedError


@solvers.register
class Euler(Solver):
    """Euler's method (Algorithm 1 with a first-order step; the original VP/VE/DDIM samplers)."""

    name: Literal["euler"] = "euler"

    def solve(
        self, ode: ProbabilityFlow, x: Tensor, t_steps: Tensor, randn_like: RandnLike
    ) -> Tensor:
        num_steps = len(t_steps) - 1
        for t_cur, t_next in itertools.pairwise(t_steps):
            x_hat, t_hat = self.churn(ode, x, t_cur, num_steps, randn_like)
            x = x_hat + (t_next - t_hat) * ode.derivative(x_hat, t_hat)
        return x


@solvers.register
class Heun(Solver):
    """General 2nd-order Runge–Kutta (App. D.2, Algorithm 3): α = 1 is Heun (Algorithm 2)."""

    name: Literal["heun"] = "heun"
    alpha: float = Field(1.0, gt=0)

    def solve(
        self, ode: ProbabilityFlow, x: Tensor, t_steps: Tensor, randn_like: RandnLike
    ) -> Tensor:
        num_steps, a = len(t_steps) - 1, self.alpha
        for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
            x_hat, t_hat = self.churn(ode, x, t_cur, num_steps, randn_like)
            h = t_next - t_hat
            d_cur = ode.derivative(x_hat, t_hat)
            if i == num_steps - 1:  # Euler into t_N = 0
                x = x_hat + h * d_cur
                continue
            d_prime = ode.derivative(x_hat + a * h * d_cur, t_hat + a * h)
            x = x_hat + h * ((1 - 1 / (2 * a)) * d_cur + 1 / (2 * a) * d_prime)
        return x
