"""The search space of ``optuna-churn``: ranges of the solver's tunable churn fields, the job of
one trial, and the objective.

The fields, their default ranges and their scales are the solver's (``Solver.TUNABLE``), their
lower bounds its field constraints. S_min and S_max are sampled log-uniformly (Table 5's grids
are geometric); a lower bound of 0 is raised to ``LOG_FLOOR`` = 1e-3, below the smallest σ_i of
every discretisation's default range (EDM 0.002), where S_min acts as 0. Settings without churn
(S_churn = 0, or S_min > S_max: an empty window) all run the deterministic sampler's job, so
they share its row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import annotated_types
from optuna.distributions import BaseDistribution, FloatDistribution
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from edmgrid.config.job import JobSpec
from edmgrid.config.metrics import metrics
from edmgrid.config.model import TrainedModel
from edmgrid.config.presets import SOLVER
from edmgrid.design.solver import Solver
from edmgrid.errors import InputError

#: Algorithm 2's churn parameters, in the order they are printed.
PARAMS = tuple(Solver.TUNABLE)
#: A log-scale range's lower bound of 0 becomes LOG_FLOOR.
LOG_FLOOR = 1e-3
#: Metrics of the sample distribution; ``ode_error`` measures the distance to the ODE solution,
#: which churn can only increase, so it is not an objective.
NOT_OBJECTIVES = ("ode_error",)


def lower_bound(name: str) -> tuple[float, bool]:
    """The solver field's lower bound, and whether it is strict (``Field(gt=…)``)."""
    for constraint in Solver.model_fields[name].metadata:
        if isinstance(constraint, annotated_types.Gt):
            return float(constraint.gt), True  # type: ignore[arg-type]
        if isinstance(constraint, annotated_types.Ge):
            return float(constraint.ge), False  # type: ignore[arg-type]
    return -math.inf, False


class SearchRanges(BaseModel):
    """Search ranges [min, max] of the solver's tunable fields (``ChurnSearch``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"bounds must be finite, not [{low}, {high}]")
        if low > high:
            raise ValueError(f"min {low:g} > max {high:g}")
        assert info.field_name is not None
        bound, strict = lower_bound(info.field_name)
        if low < bound or (strict and low == bound):
            raise ValueError(f"{info.field_name} must be {'>' if strict else '>='} {bound:g}")
        return value

    def bounds(self, name: str) -> tuple[float, float]:
        return getattr(self, name)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna's distributions: log-uniform above LOG_FLOOR where the solver says so
        (S_min, S_max), else uniform."""
        out: dict[str, BaseDistribution] = {}
        for name in PARAMS:
            low, high = self.bounds(name)
            log = Solver.TUNABLE[name].log and high > max(low, LOG_FLOOR)
            out[name] = FloatDistribution(max(low, LOG_FLOOR) if log else low, high, log=log)
        return out


#: The search ranges, one field per tunable solver field, defaulting to its range there.
ChurnSearch = create_model(
    "ChurnSearch",
    __base__=SearchRanges,
    **{name: (tuple[float, float], (r.low, r.high)) for name, r in Solver.TUNABLE.items()},  # type: ignore[call-overload]
)


def search_ranges(
    section: Mapping[str, Any] | None,
    overrides: Mapping[str, tuple[float, float]],
    file: str | None = None,
) -> SearchRanges:
    """The space's ``search:`` section with the command line's ranges over it."""
    base = _validate(dict(section or {}), "search.", file)
    return _validate({**base.model_dump(), **overrides}, "--", None)


def _validate(data: dict[str, Any], prefix: str, file: str | None) -> SearchRanges:
    try:
        return ChurnSearch.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"][:1])
        reason = err["msg"].removeprefix("Value error, ")
        raise InputError(reason, file=file, path=f"{prefix}{where}") from None


def paper_preset(job: JobSpec) -> tuple[str, str]:
    """The Table 5 preset of the model's family, and why: a trained model's ``family``, else the
    sampler's σ(t) (``ve`` → the VE column); the analytic denoiser falls back to CIFAR-10 VP."""
    family = job.model.family if isinstance(job.model, TrainedModel) else None
    if family in ("vp", "ve"):
        return f"table5-cifar10-{family}", f"model family {family}"
    if job.sampler.schedule.name == "ve":
        return "table5-cifar10-ve", "σ(t) = ve"
    return "table5-cifar10-vp", f"no VP/VE family for model kind {job.model.kind}: CIFAR-10 VP"


def churn_active(params: Mapping[str, float]) -> bool:
    """Whether a setting adds noise: S_churn > 0 and a non-empty window S_min ≤ σ ≤ S_max."""
    return params["S_churn"] > 0 and params["S_min"] <= params["S_max"]


def trial_job(base: JobSpec, params: Mapping[str, float], metric: str, seeds: str) -> JobSpec:
    """The base job with the trial's churn, only the objective metric, and ``seeds``.

    A setting without churn becomes the deterministic sampler (the solver's defaults), so every
    such setting is one job.
    """
    config = base.resolved()
    solver = {k: v for k, v in config["sampler"]["solver"].items() if k not in PARAMS}
    if churn_active(params):
        solver.update({k: float(params[k]) for k in PARAMS})
    config["sampler"]["solver"] = solver
    config["metrics"] = [m for m in config["metrics"] if m["name"] == metric] or [{"name": metric}]
    config["seeds"] = seeds
    return JobSpec.model_validate(config)


def check_churn(base: JobSpec, metric: str) -> None:
    """The base job's solver must take churn (Euler, Heun; not the multistep solvers)."""
    paper = SOLVER[paper_preset(base)[0]]
    try:
        trial_job(base, paper, metric, "0")
    except ValidationError as e:
        reason = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise InputError(f"optuna-churn needs a stochastic solver: {reason}") from None


def saturation_note(search: SearchRanges, base: JobSpec) -> str | None:
    """A note when the S_churn range reaches past where γ = min(S_churn/N, √2−1) saturates."""
    steps = base.sampler.timesteps.num_steps
    saturation = Solver.churn_saturation(steps)
    if search.bounds("S_churn")[1] <= saturation:
        return None
    return (
        f"γ = min(S_churn/N, √2−1) saturates at S_churn = {saturation:.3g} for N = {steps} "
        "steps: larger S_churn values sample alike"
    )


def default_metric(job: JobSpec) -> str:
    """The job's first metric that is an objective."""
    names = [m.name for m in job.metrics if m.name not in NOT_OBJECTIVES]
    if not names:
        raise InputError("the job has no distribution metric (fd, fd_raw); pass --metric")
    return names[0]


def check_metric(metric: str) -> None:
    """``metric`` must be a registered distribution metric."""
    if metric in NOT_OBJECTIVES:
        raise InputError(
            f"--metric {metric}: the distance to the deterministic ODE solution cannot improve "
            "with churn; use a distribution metric (fd, fd_raw)"
        )
    if metric not in metrics:
        valid = ", ".join(n for n in metrics.names if n not in NOT_OBJECTIVES)
        raise InputError(f"unknown --metric {metric!r}; valid: {valid}")
