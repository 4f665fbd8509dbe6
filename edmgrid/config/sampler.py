"""The sampling half of the design space: solver, time steps, σ(t), s(t) (Table 1, rows 1–4)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field, model_validator

from edmgrid.design.scaling import NoScaling, Scaling, scalings
from edmgrid.design.schedule import Linear, Schedule, schedules
from edmgrid.design.solver import Heun, Solver, solvers
from edmgrid.design.timesteps import EDMSteps, SigmaList, Timesteps, timesteps
from edmgrid.registry import Strict

if TYPE_CHECKING:  # type checkers see the base class; pydantic validates the tagged union
    SolverChoice = Solver
    TimestepsChoice = Timesteps
    ScheduleChoice = Schedule
    ScalingChoice = Scaling
else:
    SolverChoice = solvers.union()
    TimestepsChoice = timesteps.union()
    ScheduleChoice = schedules.union()
    ScalingChoice = scalings.union()


#: A default σ_max above this is extreme: Table 1's defaults are 80 (EDM) to 152 (VP).
EXTREME_SIGMA_MAX = 1000.0


class SamplerSpec(Strict):
    """One point of the sampler design space; the defaults are EDM's deterministic sampler."""

    model_config = ConfigDict(frozen=True)

    solver: SolverChoice = Field(default_factory=Heun)
    timesteps: TimestepsChoice = Field(default_factory=EDMSteps)
    schedule: ScheduleChoice = Field(default_factory=Linear)
    scaling: ScalingChoice = Field(default_factory=NoScaling)

    def sigma_range(self) -> tuple[float, float]:
        """[σ_min, σ_max] asked for: the time steps' bounds, else their defaults (Table 1).

        The sampler further clamps it to the denoiser's range.
        """
        default_min, default_max = self.timesteps.default_range(self.schedule)
        ts = self.timesteps
        return (
            default_min if ts.sigma_min is None else ts.sigma_min,
            default_max if ts.sigma_max is None else ts.sigma_max,
        )

    def extreme_default_sigma_max(self) -> float | None:
        """The default σ_max when it is extreme (over EXTREME_SIGMA_MAX, e.g. 31623 of
        ``uniform`` steps on a γ schedule clipped at 1e-9, Chen 2023) and not set (a ``sigmas``
        list sets its own); else None."""
        if self.timesteps.sigma_max is not None or isinstance(self.timesteps, SigmaList):
            return None
        sigma_max = self.sigma_range()[1]
        return sigma_max if sigma_max > EXTREME_SIGMA_MAX else None

    @model_validator(mode="after")
    def _nonempty_range(self) -> SamplerSpec:
        sigma_min, sigma_max = self.sigma_range()
        if not 0 < sigma_min < sigma_max < math.inf:
            lo, hi = self.timesteps.default_range(self.schedule)
            raise ValueError(
                f"the σ range [{sigma_min:g}, {sigma_max:g}] is empty or unbounded; set "
                "timesteps.sigma_min < timesteps.sigma_max, both finite (unset bounds take "
                f"the {self.timesteps.name} defaults [{lo:g}, {hi:g}])"
            )
        return self
