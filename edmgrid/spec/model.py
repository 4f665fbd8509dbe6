"""The model axis: which denoiser D(x; σ) a job samples from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edmgrid.registry import Choice, Registry

models = Registry("model", "the denoiser D(x; σ)", key="kind")


class ModelSpec(Choice):
    """A denoiser source."""

    kind: str


@models.register
class AnalyticModel(ModelSpec):
    """The ideal denoiser of the data set: no training, exact sampler ablations."""

    kind: Literal["analytic"] = "analytic"
    chunk: int = Field(4096, ge=1)
