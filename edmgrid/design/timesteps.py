"""Time step discretisation: the σ_i, i < N, a sampler visits (EDM Table 1, row "Time steps").

Each choice returns N noise levels σ_0 > … > σ_{N−1} in float64 on the CPU (scalars the
solver reads on the host, whatever device the samples are on); the sampler maps them to
t_i = σ⁻¹(round_sigma(σ_i)) and appends t_N = 0 (official ``ablation_sampler``). A
discretisation that depends on the model (GITS) is fitted to it first (``Timesteps.fit``).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveFloat, model_validator

from edmgrid.design.ode import Denoise, ProbabilityFlow
from edmgrid.design.scaling import NoScaling
from edmgrid.design.schedule import VP, Linear, Schedule, vp_betas, vp_sigma
from edmgrid.design.solver import Heun, Step
from edmgrid.lazy import torch
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from torch import Tensor

timesteps = Registry("timesteps", "discretisation of the σ range into N steps (Table 1)")


#: ``cached(key, make)``: ``make()``'s tensor, kept under ``key`` where there is a cache.
Cache = Callable[[dict[str, Any], Callable[[], "Tensor"]], "Tensor"]


def uncached(key: dict[str, Any], make: Callable[[], Tensor]) -> Tensor:
    """No cache: ``make()`` every time."""
    return make()


@dataclass(frozen=True)
class FitContext:
    """What ``Timesteps.fit`` may ask of the model it fits to (``engine.sample.fit_steps``).

    ``inputs(seeds)``: the latents x_T of ``seeds`` and the model's D(x; σ) (float64) with
    their class labels bound. ``cached(key, make)``: ``make()``'s tensor, kept per model and
    ``key`` where the caller has a cache (``edmgrid run``: on disk).
    """

    sigma_min: float  # the σ range asked for, clamped to the model's
    sigma_max: float
    round_sigma: Callable[[Tensor], Tensor]
    sample_shape: tuple[int, ...]
    inputs: Callable[[Sequence[int]], tuple[Tensor, Denoise]]
    cached: Cache = uncached


class Timesteps(Choice, ABC):
    """N steps over [σ_min, σ_max]; unset bounds take the discretisation's defaults.

    A new discretisation is a registered subclass with a ``name`` literal, ``default_range``
    and ``sigma_steps``; one that depends on the model also overrides ``fit``.
    """

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

    @abstractmethod
    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        """(σ_min, σ_max) when the spec leaves them unset (Table 1's defaults)."""

    @abstractmethod
    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        """The N levels σ_0 > … > σ_{N−1} over [σ_min, σ_max] (float64) under σ(t)
        ``schedule``."""

    def fit(self, model: FitContext) -> Timesteps:
        """The discretisation fitted to ``model``, before sampling: this one unless the steps
        depend on the model."""
        return self

    def fit_columns(self) -> dict[str, Any]:
        """Row columns that say what ``fit`` cost (none unless it fits)."""
        return {}

    def _i(self) -> Tensor:
        return torch.arange(self.num_steps, dtype=torch.float64, device="cpu")


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

    The sampler computes it in float64 (``dtype`` None), the official network buffer in float32;
    on the CPU (a recursion of M scalar steps), for the caller to move.
    """
    dtype = torch.float64 if dtype is None else dtype
    j = torch.arange(M + 1, dtype=dtype, device="cpu")
    alpha_bar = (0.5 * math.pi * j / M / (C_2 + 1)).sin() ** 2
    u = torch.zeros(M + 1, dtype=dtype, device="cpu")
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
        return edm_sigmas(self.num_steps, self.rho, sigma_min, sigma_max)


def edm_sigmas(n: int, rho: float, sigma_min: float, sigma_max: float) -> Tensor:
    """EDM Eq. 5 with n steps, float64."""
    i = torch.arange(n, dtype=torch.float64, device="cpu")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i / (n - 1) * (lo - hi)) ** rho


@timesteps.register
class UniformSteps(Timesteps):
    """Uniform in t over [σ⁻¹(σ_min), σ⁻¹(σ_max)] of the chosen σ(t); defaults t ∈ [ε_s, 1]."""

    name: Literal["uniform"] = "uniform"
    epsilon_s: float = Field(1e-3, gt=0, lt=1)

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        ends = schedule.sigma(
            torch.tensor([self.epsilon_s, 1.0], dtype=torch.float64, device="cpu")
        )
        return float(ends[0]), float(ends[1])

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        ends = schedule.sigma_inv(
            torch.tensor([sigma_max, sigma_min], dtype=torch.float64, device="cpu")
        )
        t = ends[0] + self._i() / (self.num_steps - 1) * (ends[1] - ends[0])
        return schedule.sigma(t)


@timesteps.register
class SigmaList(Timesteps):
    """Given noise levels σ_0 > … > σ_{N−1}: a published schedule, or fitted ones (GITS)."""

    name: Literal["sigmas"] = "sigmas"
    sigmas: tuple[PositiveFloat, ...] = Field(min_length=2)

    @model_validator(mode="before")
    @classmethod
    def _count(cls, data: Any) -> Any:
        if isinstance(data, dict) and "sigmas" in data and "num_steps" not in data:
            data = {**data, "num_steps": len(data["sigmas"])}
        return data

    @model_validator(mode="after")
    def _decreasing(self) -> SigmaList:
        if self.num_steps != len(self.sigmas):
            raise ValueError(
                f"num_steps ({self.num_steps}) must be len(sigmas) ({len(self.sigmas)})"
            )
        if any(a <= b for a, b in itertools.pairwise(self.sigmas)):
            raise ValueError("sigmas must be strictly decreasing")
        if self.sigma_min is not None or self.sigma_max is not None:
            raise ValueError("sigmas set their own range: leave sigma_min and sigma_max unset")
        return self

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        return self.sigmas[-1], self.sigmas[0]

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        if (sigma_min, sigma_max) != self.default_range(schedule):
            raise ValueError(
                f"the denoiser supports σ in [{sigma_min:g}, {sigma_max:g}] only, "
                f"not the whole list [{self.sigmas[-1]:g}, {self.sigmas[0]:g}]"
            )
        return torch.tensor(self.sigmas, dtype=torch.float64, device="cpu")


#: Calibration latents (GITS) use the seeds from here on, apart from those of any run.
CALIBRATION_SEED = 1 << 31


@timesteps.register
class GITSSteps(Timesteps):
    """Geometry-inspired time scheduling (Chen et al. 2024, "On the Trajectory Regularity of
    ODE-based Diffusion Sampling"): N of the ``fine_steps`` EDM steps (Eq. 5, ρ), chosen by
    dynamic programming as the path of least total Euler local error along the model's own
    trajectories from ``calibration_samples`` latents (a Heun teacher on the fine steps).

    The steps depend on the model: ``fit`` chooses them and gives them as ``sigmas``.
    """

    name: Literal["gits"] = "gits"
    fine_steps: int = Field(128, ge=3)
    rho: float = Field(7.0, gt=0)
    calibration_samples: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _enough_fine_steps(self) -> GITSSteps:
        if self.fine_steps < self.num_steps:
            raise ValueError(
                f"fine_steps ({self.fine_steps}) must be >= num_steps ({self.num_steps})"
            )
        return self

    def default_range(self, schedule: Schedule) -> tuple[float, float]:
        return 0.002, 80.0

    @property
    def calibration_evaluations(self) -> int:
        """Denoiser evaluations of the fit: Heun's two per fine step and calibration sample
        (fewer where the model's discrete noise levels merge fine steps)."""
        return 2 * (self.fine_steps - 1) * self.calibration_samples

    def fit_columns(self) -> dict[str, Any]:
        return {"calibration_evaluations": self.calibration_evaluations}

    def fine_sigmas(self, sigma_min: float, sigma_max: float) -> Tensor:
        """The candidate steps: EDM Eq. 5 with ``fine_steps`` steps."""
        return edm_sigmas(self.fine_steps, self.rho, sigma_min, sigma_max)

    def sigma_steps(self, schedule: Schedule, sigma_min: float, sigma_max: float) -> Tensor:
        raise ValueError(
            "gits time steps depend on the model: fit them first with "
            "edmgrid.engine.sample.fit_steps (edmgrid run does so for every job)"
        )

    def fit(self, model: FitContext) -> SigmaList:
        """The ``num_steps`` of the fine steps (at noise levels the model supports) with the
        least calibration cost, which is kept per model and settings, whatever ``num_steps``."""
        sigmas = model.round_sigma(self.fine_sigmas(model.sigma_min, model.sigma_max))
        sigmas = sigmas.unique_consecutive()
        if len(sigmas) < self.num_steps:
            raise ValueError(f"the model has {len(sigmas)} noise levels in range, < num_steps")
        key = {"calibration": self.model_dump(mode="json", exclude={"num_steps"})}
        return self.choose(sigmas, model.cached(key, lambda: self.calibration_cost(model, sigmas)))

    def calibration_cost(self, model: FitContext, sigmas: Tensor) -> Tensor:
        """The Euler local errors between the fine ``sigmas`` along the teacher's paths from the
        calibration latents, summed over them. The teacher runs in batches of at most 2²⁴
        values, on the latents' device; the cost [G, G] is on the CPU."""
        seeds = range(CALIBRATION_SEED, CALIBRATION_SEED + self.calibration_samples)
        batch = max(1, (1 << 24) // (len(sigmas) * math.prod(model.sample_shape)))
        cost = torch.zeros(len(sigmas), len(sigmas), dtype=torch.float64, device="cpu")
        for lo in range(0, len(seeds), batch):
            x_T, denoise = model.inputs(seeds[lo : lo + batch])
            states, slopes = self.teacher(denoise, x_T.double() * sigmas[0], sigmas)
            cost += self.local_errors(sigmas, states, slopes).cpu()
        return cost

    @staticmethod
    def teacher(denoise: Denoise, x: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
        """States x(σ_k) of EDM Heun (σ(t) = t, s = 1) along ``sigmas`` from x(σ_0) = ``x``, and
        the slopes dx/dσ = (x − D(x; σ))/σ at all but the last state."""
        states, slopes = [], []

        def record(step: Step) -> None:
            states.append(step["x"])
            slopes.append((step["x"] - step["denoised"]) / step["sigma"])

        ode = ProbabilityFlow(Linear(), NoScaling(), denoise, round_sigma=lambda sigma: sigma)
        with torch.no_grad():
            states.append(Heun().solve(ode, x, sigmas, torch.randn_like, record))
        return torch.stack(states), torch.stack(slopes)

    @staticmethod
    def local_errors(sigmas: Tensor, x: Tensor, d: Tensor) -> Tensor:
        """E_ij = Σ_n ‖x_i + (σ_j − σ_i)·d_i − x_j‖² for i < j, +inf elsewhere: the error of one
        Euler step from the teacher's state x_i at σ_i to σ_j, summed over a batch.

        ``x``: the teacher's states [G, n, …] at the G ``sigmas``; ``d``: its slopes
        dx/dσ = (x − D(x; σ))/σ at the first G − 1 of them.
        """
        G, sigmas = len(sigmas), sigmas.to(x.device)
        errors = torch.full((G, G), math.inf, dtype=torch.float64, device=x.device)
        for i in range(G - 1):
            h = (sigmas[i + 1 :] - sigmas[i]).reshape(-1, *[1] * (x.dim() - 1))
            errors[i, i + 1 :] = (x[i] + h * d[i] - x[i + 1 :]).pow(2).flatten(1).sum(1)
        return errors

    def choose(self, sigmas: Tensor, cost: Tensor) -> SigmaList:
        """The ``num_steps`` of the G ``sigmas`` from the first to the last whose consecutive
        pairs (i, j) have the least total ``cost[i, j]`` (dynamic programming, O(N·G²))."""
        G, N = len(sigmas), self.num_steps
        best = torch.full((G,), math.inf, dtype=torch.float64, device="cpu")
        best[0] = 0.0  # best[j]: least cost of k steps from σ_0 that end at σ_j
        came_from = []
        for _ in range(N - 1):
            best, prev = (best[:, None] + cost).min(0)
            came_from.append(prev)
        path = [G - 1]
        for prev in reversed(came_from):
            path.append(int(prev[path[-1]]))
        return SigmaList(sigmas=tuple(float(sigmas[j]) for j in reversed(path)))
