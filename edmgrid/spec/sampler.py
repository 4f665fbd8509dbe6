"""The sampling half of the design space: solver, time steps, σ(t), s(t) (Table 1, rows 1–4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from edmgrid.design.scaling import NoScaling, Scaling, scalings
from edmgrid.design.schedule import Linear, Schedule, schedules
from edmgrid.design.solver import Heun, Solver, solvers
from edmgrid.design.timesteps import EDMSteps, Timesteps, timesteps

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


class SamplerSpec(BaseModel):
    """One point of the sampler design space; the defaults are EDM's deterministic sampler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    solver: SolverChoice = Field(default_factory=Heun)
    timesteps: TimestepsChoice = Field(default_factory=EDMSteps)
    schedule: ScheduleChoice = Field(default_factory=Linear)
    scaling: ScalingChoice = Field(default_factory=NoScaling)
