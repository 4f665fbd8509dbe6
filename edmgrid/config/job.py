"""A job: one fully resolved point of the design space, identified by its content hash."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator

from edmgrid.config.data import DataSpec, datasets
from edmgrid.config.metrics import Metric, metrics
from edmgrid.config.model import AnalyticModel, ModelSpec, TrainedModel, models
from edmgrid.config.sampler import SamplerSpec
from edmgrid.config.table2 import for_data
from edmgrid.files import content_hash
from edmgrid.registry import Strict

#: Seeds of one job at most (FID uses 50,000; Table 2 averages three such sets).
MAX_SEEDS = 1_000_000


def parse_seeds(text: str) -> list[int]:
    """'0-255,300,400-401' → [0, …, 255, 300, 400, 401] (the official ``--seeds`` syntax)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", part)
        if not m:
            raise ValueError(f"bad seed range {part!r}; expected e.g. '0-255' or '0,5,10-19'")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: end < start")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise ValueError(f"more than {MAX_SEEDS} seeds; split the job's seeds")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds repeat")
    return seeds


def seed_text(seeds: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → '0-2,5,7-8' (the inverse of ``parse_seeds`` for an ordered list)."""
    parts: list[str] = []
    start = prev = None
    for seed in [*seeds, None]:
        if prev is not None and seed == prev + 1:
            prev = seed
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = seed
    return ",".join(parts)


def _check_seeds(text: str) -> str:
    parse_seeds(text)
    return text


def _seed_text(value: Any) -> Any:
    """A single seed may be written as a YAML integer (``seeds: 7``)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Seeds = Annotated[str, BeforeValidator(_seed_text), AfterValidator(_check_seeds)]
if TYPE_CHECKING:  # type checkers see the base class; pydantic validates the tagged union
    DataChoice = DataSpec
    ModelChoice = ModelSpec
    MetricChoice = Metric
else:
    DataChoice = datasets.union()
    ModelChoice = models.union()
    MetricChoice = metrics.union()


class JobSpec(Strict):
    """Data, model, sampler, metrics and seeds of one evaluation job."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    data: DataChoice
    model: ModelChoice = Field(default_factory=AnalyticModel)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    metrics: list[MetricChoice] = Field(min_length=1)
    seeds: Seeds = "0-255"

    @model_validator(mode="after")
    def _fit_table2_cell_to_data(self) -> JobSpec:
        """A Table 2 cell takes x-flip validity and σ_data from its data set (``for_data``)."""
        if isinstance(self.model, TrainedModel):
            object.__setattr__(self, "model", for_data(self.model, self.data))
        return self

    @property
    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds)

    def resolved(self) -> dict[str, Any]:
        """Every field with defaults filled in (what the job id hashes)."""
        return self.model_dump(mode="json")

    @property
    def job_id(self) -> str:
        return content_hash(self.resolved())


def replicate_key(config: dict[str, Any]) -> str:
    """One key for the replicates of a configuration (a resolved job config): they may differ in
    the training seed (``model.training.seed``) and in which seeds they sample, not in how many."""
    stripped = copy.deepcopy(config)
    training = stripped.get("model", {}).get("training")
    if isinstance(training, dict):
        training.pop("seed", None)
    if "seeds" in stripped:
        stripped["seeds"] = len(parse_seeds(stripped["seeds"]))
    return content_hash(stripped)


def model_settings(job: JobSpec) -> dict[str, Any]:
    """The job's data and model settings, which fix its denoiser."""
    return job.model_dump(mode="json", include={"data", "model"})


def model_key(job: JobSpec) -> str:
    """Jobs with one model key sample from the same denoiser (data and model config)."""
    return content_hash(model_settings(job))
