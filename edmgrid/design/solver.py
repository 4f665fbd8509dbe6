"""ODE/SDE solvers over a time grid t_0 > … > t_N = 0 (EDM Algorithms 1–3, and multistep).

Every solver has one signature, ``solve(ode, x, t_steps, randn_like, callback) -> x``; the last
step into t_N = 0 is always an Euler step. Euler and Heun carry the stochastic "churn" of
Algorithm 2 (S_churn, S_min, S_max, S_noise) and evaluate the derivative at (x̂, t̂); the
multistep solvers (DPM-Solver++, iPNDM) are deterministic and work in x̃ = x/s and σ.
``callback``, as in k-diffusion's samplers, sees every step's state and denoised estimate.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, TypedDict

from pydantic import Field, model_validator

from edmgrid.design.ode import ProbabilityFlow
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

solvers = Registry("solver", "ODE solver with the stochastic churn of Algorithm 2")

RandnLike = Callable[["Tensor"], "Tensor"]


class Step(TypedDict):
    """What ``callback`` is told after step i's denoiser evaluation (k-diffusion's keys):
    the state x̂_i the denoiser saw, σ(t_i), σ(t̂_i) (= σ(t_i) without churn) and
    D(x̂_i/s; σ̂_i)."""

    i: int
    x: Tensor
    sigma: Tensor
    sigma_hat: Tensor
    denoised: Tensor


Callback = Callable[[Step], None]


@dataclass(frozen=True)
class SearchRange:
    """The default search range [low, high] of a tunable solver field; ``log``: searched on a
    log scale (Table 5's grids of S_min and S_max are geometric)."""

    low: float
    high: float
    log: bool = False


class StepNoise:
    """The churn noise of one solve: step i uses the i-th draw of ``randn_like``.

    The official sampler draws at every step, used or not; so that each seed's stream gives
    the same noise as there, the draws of the steps without churn are made too, but only
    when a later step needs noise. Draws that no step uses, all of them when S_churn = 0,
    are left out: they would change no sample, and cost as much as a cheap denoiser call.
    """

    def __init__(self, randn_like: RandnLike) -> None:
        self.randn_like, self.pending = randn_like, 0

    def skip(self) -> None:
        """A step without churn: its draw is owed."""
        self.pending += 1

    def draw(self, x: Tensor) -> Tensor:
        """The noise of this step, after the owed draws (discarded)."""
        for _ in range(self.pending):
            self.randn_like(x)
        self.pending = 0
        return self.randn_like(x)


class Solver(Choice, ABC):
    """A solver with Algorithm 2's churn: γ_i = min(S_churn/N, √2−1) where S_min ≤ σ_i ≤ S_max.

    A new solver is a registered subclass with a ``name`` literal and ``solve``; a
    deterministic one rejects S_churn > 0 (see ``Multistep``).
    """

    name: str
    S_churn: float = Field(0.0, ge=0)
    S_min: float = Field(0.0, ge=0)
    S_max: float = Field(math.inf, ge=0)
    S_noise: float = Field(1.0, gt=0)

    #: Algorithm 2's churn parameters, the fields a stochastic-sampler search tunes, with
    #: default ranges that span Table 5's grid (S_noise up to 1.011).
    TUNABLE: ClassVar[dict[str, SearchRange]] = {
        "S_churn": SearchRange(0.0, 100.0),
        "S_min": SearchRange(0.0, 10.0, log=True),
        "S_max": SearchRange(0.2, 80.0, log=True),
        "S_noise": SearchRange(1.0, 1.011),
    }
    #: γ's bound: the churn at most doubles the noise variance, σ̂² ≤ 2σ² (Algorithm 2).
    GAMMA_MAX: ClassVar[float] = math.sqrt(2) - 1

    @model_validator(mode="after")
    def _ordered(self) -> Solver:
        if self.S_min > self.S_max:
            raise ValueError(f"S_min ({self.S_min}) must be <= S_max ({self.S_max})")
        return self

    @classmethod
    def gamma_of(cls, S_churn: float, num_steps: int) -> float:
        """γ = min(S_churn/N, √2−1) (Algorithm 2, line 4)."""
        return min(S_churn / num_steps, cls.GAMMA_MAX)

    @classmethod
    def churn_saturation(cls, num_steps: int) -> float:
        """The S_churn from which γ is clamped at √2−1 for N steps: larger ones sample alike."""
        return num_steps * cls.GAMMA_MAX

    def churn(
        self, ode: ProbabilityFlow, x: Tensor, t: Tensor, num_steps: int, noise: StepNoise
    ) -> tuple[Tensor, Tensor]:
        """Raise the noise level of x from σ(t) to σ(t̂) = (1+γ)σ(t) (Algorithm 2, lines 4–6)."""
        sigma = ode.sigma(t)
        gamma = self.gamma_of(self.S_churn, num_steps)
        if gamma == 0 or not self.S_min <= float(sigma) <= self.S_max:
            noise.skip()
            return x, t
        t_hat = ode.t_of_sigma(sigma * (1 + gamma))
        sigma_hat, s_hat = ode.sigma(t_hat), ode.s(t_hat)
        std = (sigma_hat**2 - sigma**2).clamp(min=0).sqrt() * s_hat * self.S_noise
        return s_hat / ode.s(t) * x + std * noise.draw(x), t_hat

    @abstractmethod
    def solve(
        self,
        ode: ProbabilityFlow,
        x: Tensor,
        t_steps: Tensor,
        randn_like: RandnLike,
        callback: Callback | None = None,
    ) -> Tensor:
        """x at t_N from x at t_0 along ``t_steps`` (float64; t_N = 0 is reached by an Euler
        step), churn noise from ``randn_like``, ``callback`` told each step (``Step``)."""


def report_step(
    callback: Callback | None,
    i: int,
    ode: ProbabilityFlow,
    x: Tensor,
    t: Tensor,
    t_hat: Tensor,
    denoised: Tensor,
) -> None:
    """Tell ``callback`` (if any) step i: the state x̂_i at t̂_i and D there (a ``Step``)."""
    if callback is not None:
        sigma, sigma_hat = ode.sigma(t), ode.sigma(t_hat)
        callback(Step(i=i, x=x, sigma=sigma, sigma_hat=sigma_hat, denoised=denoised))


@solvers.register
class Euler(Solver):
    """Euler's method (Algorithm 1 with a first-order step; the original VP/VE/DDIM samplers)."""

    name: Literal["euler"] = "euler"

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
            x_hat, t_hat = self.churn(ode, x, t_cur, num_steps, noise)
            d_cur, denoised = ode.flow(x_hat, t_hat)
            report_step(callback, i, ode, x_hat, t_cur, t_hat, denoised)
            x = x_hat.add(d_cur, alpha=float(t_next - t_hat))
        return x


@solvers.register
class Heun(Solver):
    """General 2nd-order Runge–Kutta (App. D.2, Algorithm 3): α = 1 is Heun (Algorithm 2)."""

    name: Literal["heun"] = "heun"
    alpha: float = Field(1.0, gt=0)

    def solve(
        self,
        ode: ProbabilityFlow,
        x: Tensor,
        t_steps: Tensor,
        randn_like: RandnLike,
        callback: Callback | None = None,
    ) -> Tensor:
        num_steps, a, noise = len(t_steps) - 1, self.alpha, StepNoise(randn_like)
        for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
            x_hat, t_hat = self.churn(ode, x, t_cur, num_steps, noise)
            h = float(t_next - t_hat)
            d_cur, denoised = ode.flow(x_hat, t_hat)
            report_step(callback, i, ode, x_hat, t_cur, t_hat, denoised)
            if float(t_next) == 0:  # Euler into t_N = 0 (a grid that ends above 0: all Heun)
                x = x_hat.add(d_cur, alpha=h)
                continue
            d_prime = ode.derivative(x_hat.add(d_cur, alpha=a * h), t_hat + a * h)
            x = x_hat.add(d_cur, alpha=h * (1 - 1 / (2 * a))).add_(d_prime, alpha=h / (2 * a))
        return x


class Multistep(Solver):
    """A deterministic multistep solver of dx̃/dσ = (x̃ − D(x̃; σ))/σ, with x̃ = x/s(t).

    This ODE (Eq. 4 with s = 1) is the same for every σ(t) and s(t), so the method works on
    σ_i = σ(t_i) and x̃ and is exact for any parameterisation: x = s(t_N)·x̃ at the end. It
    evaluates D once per step, at σ_0 … σ_{N−1} (NFE = N), and extrapolates a quantity of the
    last ``order`` evaluations (``node``); the first steps warm up with lower orders. The last
    step into σ_N = 0 is Euler's, x̃_N = D(x̃_{N−1}; σ_{N−1}), as in Algorithms 1–2. Churn
    would mix fresh noise into the history, so S_churn > 0 is rejected.

    ``lower_order_final`` (DPM-Solver's option): the last steps use no more nodes than steps
    remain, ending with a first-order step. It keeps high orders stable where the last steps
    are long against the earlier ones (fitted GITS steps), at the cost of the formal order.

    A new multistep solver is a registered subclass with ``name``, ``order``, ``node`` and
    ``step``.
    """

    order: int
    lower_order_final: bool = False

    @model_validator(mode="after")
    def _deterministic(self) -> Multistep:
        if self.S_churn > 0:
            raise ValueError(
                f"{self.name} is a deterministic multistep solver: S_churn must be 0, "
                f"got {self.S_churn} (use euler or heun for stochastic sampling)"
            )
        return self

    @abstractmethod
    def node(self, x: Tensor, denoised: Tensor, sigma: float) -> Tensor:
        """The quantity at (x̃_i, σ_i) that the method extrapolates."""

    @abstractmethod
    def step(self, x: Tensor, history: list[tuple[float, Tensor]], sigma_next: float) -> Tensor:
        """x̃_{i+1} from x̃_i and the nodes (σ_j, node_j), newest first, j = i, i−1, …"""

    def solve(
        self,
        ode: ProbabilityFlow,
        x: Tensor,
        t_steps: Tensor,
        randn_like: RandnLike,
        callback: Callback | None = None,
    ) -> Tensor:
        sigma_steps, s_steps = ode.sigma(t_steps), ode.s(t_steps)
        sigmas = sigma_steps.tolist()
        x = x / s_steps[0]
        history: list[tuple[float, Tensor]] = []
        steps = len(sigmas) - 2
        for i, sigma in enumerate(sigmas[:-1]):
            denoised = ode.denoise(x, sigma_steps[i])
            if callback is not None:  # the state in x = s·x̃
                report_step(callback, i, ode, x * s_steps[i], t_steps[i], t_steps[i], denoised)
            if i == steps:  # Euler into t_N = 0: x̃_N = D(x̃_{N−1}; σ_{N−1})
                x = x + (sigmas[-1] - sigma) / sigma * (x - denoised)
                break
            history = [(sigma, self.node(x, denoised, sigma)), *history[: self.order - 1]]
            order = min(len(history), steps - i) if self.lower_order_final else len(history)
            x = self.step(x, history[:order], sigmas[i + 1])
        return x * s_steps[-1]


@solvers.register
class DPMSolverPP(Multistep):
    """DPM-Solver++(kM) (Lu et al. 2022, "DPM-Solver++", Alg. 2): data-prediction multistep.

    With λ = −log σ and h = λ_{i+1} − λ_i, the exact solution is
    x̃_{i+1} = e^{−h}·x̃_i + ∫_0^h e^{−(h−u)} D(λ_i + u) du; D is extrapolated by the
    polynomial through its last k values in λ. k = 1 is DDIM; k = 2 is Algorithm 2 (the
    integral of the linear term approximated by ½h(1 − e^{−h})); k = 3 integrates the quadratic
    exactly, which makes it third order (the common 3M code weights the second divided
    difference by half of that integral and is second order).
    """

    name: Literal["dpmpp"] = "dpmpp"
    order: int = Field(2, ge=1, le=3)

    def node(self, x: Tensor, denoised: Tensor, sigma: float) -> Tensor:
        return denoised

    def step(self, x: Tensor, history: list[tuple[float, Tensor]], sigma_next: float) -> Tensor:
        (sigma, d0), *older = history
        h = math.log(sigma / sigma_next)
        i0 = -math.expm1(-h)  # ∫_0^h e^{−(h−u)} du
        x = sigma_next / sigma * x + i0 * d0
        if not older:
            return x
        h1 = math.log(older[0][0] / sigma)
        dd1 = (d0 - older[0][1]) / h1  # divided differences of D in λ
        if len(older) == 1:
            return x + (0.5 * h * i0) * dd1
        h2 = math.log(older[1][0] / older[0][0])
        dd2 = (dd1 - (older[0][1] - older[1][1]) / h2) / (h1 + h2)
        i1 = h - i0  # ∫_0^h e^{−(h−u)} u du
        i2 = h * h - 2 * i1  # ∫_0^h e^{−(h−u)} u² du
        # D(λ_i + u) ≈ D_i + dd1·u + dd2·u(u + h1)
        return x + i1 * dd1 + (i1 * h1 + i2) * dd2


#: Adams–Bashforth coefficients for equal steps, newest derivative first.
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)

#: Two-point Gauss–Legendre rule on [0, 1]: exact for the cubic Lagrange basis of order 4.
_GAUSS_LEGENDRE = ((0.5 - math.sqrt(3) / 6, 0.5), (0.5 + math.sqrt(3) / 6, 0.5))


def adams_bashforth_weights(nodes: list[float], lo: float, hi: float) -> list[float]:
    """w_j = mean over [lo, hi] of the Lagrange basis polynomial ℓ_j on ``nodes`` (≤ 4 of them).

    x(hi) ≈ x(lo) + (hi − lo)·Σ_j w_j·f(nodes_j) is the variable-step Adams–Bashforth method.
    """
    weights = [0.0] * len(nodes)
    for frac, g in _GAUSS_LEGENDRE:
        u = lo + frac * (hi - lo)
        for j, node_j in enumerate(nodes):
            basis = math.prod((u - m) / (node_j - m) for k, m in enumerate(nodes) if k != j)
            weights[j] += g * basis
    return weights


@solvers.register
class IPNDM(Multistep):
    """iPNDM (Zhang & Chen 2023, DEIS App.): Adams–Bashforth on dx̃/dσ with a lower-order start.

    Step i uses order min(i + 1, ``order``) on the derivatives d_j = (x̃_j − D_j)/σ_j. With
    ``variable_step`` false these are the equal-step coefficients of the paper, which are
    second order on a non-uniform σ grid; true integrates the Lagrange polynomial of the
    d_j over [σ_i, σ_{i+1}] (iPNDM_v, Zhou et al. 2024), of full order on any grid.
    """

    name: Literal["ipndm"] = "ipndm"
    order: int = Field(4, ge=1, le=4)
    variable_step: bool = False

    def node(self, x: Tensor, denoised: Tensor, sigma: float) -> Tensor:
        return (x - denoised) / sigma

    def step(self, x: Tensor, history: list[tuple[float, Tensor]], sigma_next: float) -> Tensor:
        sigma = history[0][0]
        if self.variable_step:
            weights = adams_bashforth_weights([s for s, _ in history], sigma, sigma_next)
        else:
            weights = list(ADAMS_BASHFORTH[len(history) - 1])
        return x + (sigma_next - sigma) * sum(
            w * d for w, (_, d) in zip(weights, history, strict=True)
        )
