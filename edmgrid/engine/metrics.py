"""Metrics of a sampling run; each is registered by the name of its result column."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from torch import Tensor

from edmgrid.engine.data import Dataset
from edmgrid.engine.denoiser import Denoiser
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


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ and Σ = (Σ f fᵀ − N μμᵀ)/(N−1) in float64 (official ``fid.py``)."""
    f = features.astype(np.float64).reshape(len(features), -1)
    mu = f.mean(0)
    return mu, (f.T @ f - len(f) * np.outer(mu, mu)) / (len(f) - 1)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), the trace root via the PSD form Σ₁^½Σ₂Σ₁^½."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ s2 @ root1).clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(cross).sum())


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
        mu1, s1 = gaussian_statistics(ev.samples.numpy())
        mu2, s2 = gaussian_statistics(ev.dataset.x.numpy())
        return {"fd_raw": frechet_distance(mu1, s1, mu2, s2)}
