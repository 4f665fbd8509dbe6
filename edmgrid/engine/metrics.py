"""Metrics of a sampling run; each is registered by the name of its result column."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from torch import Tensor

from edmgrid.engine.data import Dataset
from edmgrid.engine.denoiser import Denoiser
from edmgrid.engine.fid import feature_statistics, frechet_distance
from edmgrid.registry import Choice, Registry
from edmgrid.spec.sampler import SamplerSpec

metrics = Registry("metric", "evaluation metric (a result column)")


@dataclass(frozen=True)
class Evaluation:
    """What a metric sees: the samples, the data, and how to re-sample from the same latents."""

    samples: Tensor  # float64, [n, *sample_shape]
    dataset: Dataset
    denoiser: Denoiser
    seeds: list[int]
    sigma_first: float  # σ(t_0) of the run
    sigma_last: float  # σ(t_{N−1}), the last nonzero level
    cache_dir: Path
    resample: Callable[[SamplerSpec], Tensor]  # the same latents through another sampler


class Metric(Choice):
    """A metric: ``compute`` returns {column: value}."""

    name: str

    def compute(self, ev: Evaluation) -> dict[str, float]:
        raise NotImplementedError


@metrics.register
class ODEError(Metric):
    """RMS distance to a high-accuracy solution of the same ODE from the same latents.

    The reference is EDM Heun with ``reference_steps`` steps over the run's own [σ_{N−1}, σ_0],
    so both solve dx/dσ = (x − D(x; σ))/σ between the same end points.
    """

    name: Literal["ode_error"] = "ode_error"
    reference_steps: int = Field(256, ge=2)

    def compute(self, ev: Evaluation) -> dict[str, float]:
        spec = SamplerSpec.model_validate(
            {
                "timesteps": {
                    "name": "edm",
                    "num_steps": self.reference_steps,
                    "sigma_min": ev.sigma_last,
                    "sigma_max": ev.sigma_first,
                }
            }
        )
        reference = ev.resample(spec)
        return {"ode_error": float((ev.samples - reference).pow(2).mean().sqrt())}


@metrics.register
class FDRaw(Metric):
    """Fréchet distance between samples and data in data space (float64 statistics)."""

    name: Literal["fd_raw"] = "fd_raw"

    def compute(self, ev: Evaluation) -> dict[str, float]:
        mu1, s1 = feature_statistics(ev.samples.flatten(1).numpy())
        mu2, s2 = feature_statistics(ev.dataset.x.flatten(1).numpy())
        return {"fd_raw": frechet_distance(mu1, s1, mu2, s2)}


@metrics.register
class FD(Metric):
    """Fréchet distance of samples and data in a small classifier's features (digits' FID).

    The classifier is trained once per data set on its labels and cached by content hash.
    """

    name: Literal["fd"] = "fd"

    def compute(self, ev: Evaluation) -> dict[str, float]:
        from edmgrid.engine.classifier import features, trained_classifier

        classifier = trained_classifier(ev.dataset, ev.cache_dir)
        samples = ev.samples.clamp(-1, 1) if ev.dataset.is_image else ev.samples
        mu1, s1 = feature_statistics(features(classifier, samples))
        mu2, s2 = feature_statistics(features(classifier, ev.dataset.x))
        return {"fd": frechet_distance(mu1, s1, mu2, s2)}
