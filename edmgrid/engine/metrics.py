"""Metrics of a sampling run; each is registered by the name of its result column.

The computing code (``edmgrid.engine.fid``, the classifier) is imported where it is used, so
that checking a spec needs neither torch nor Inception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from edmgrid.engine.data import Dataset, Toy2D
from edmgrid.errors import SpecError
from edmgrid.registry import Choice, Registry
from edmgrid.spec.sampler import SamplerSpec

if TYPE_CHECKING:
    from torch import Tensor

    from edmgrid.engine.denoiser import Denoiser
    from edmgrid.engine.fid import FeatureExtractor
    from edmgrid.spec.job import JobSpec

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
    generate: Callable[[list[int]], Tensor]  # this run's sampler from the latents of other seeds


class Metric(Choice):
    """A metric: ``compute`` returns {column: value}."""

    name: str

    def check(self, job: JobSpec) -> None:
        """Fail before any sampling if the job cannot give this metric (default: it can)."""

    def shared_work(self, job: JobSpec) -> str | None:
        """A key of the cached work this metric shares with other jobs (computed by the first
        job that needs it), or None. A scheduling hint: jobs that need the same work are not
        started side by side while it is being done."""
        return None

    def compute(self, ev: Evaluation) -> dict[str, Any]:
        raise NotImplementedError


def rms_distance(a: Tensor, b: Tensor) -> float:
    """sqrt(mean((a − b)²)) over every sample and element."""
    return float((a - b).pow(2).mean().sqrt())


@metrics.register
class ODEError(Metric):
    """RMS distance to a high-accuracy solution of the same ODE from the same latents.

    The reference is EDM Heun with ``reference_steps`` steps over the run's own [σ_{N−1}, σ_0],
    so both solve dx/dσ = (x − D(x; σ))/σ between the same end points.
    """

    name: Literal["ode_error"] = "ode_error"
    reference_steps: int = Field(256, ge=2)

    def reference(self, sigma_last: float, sigma_first: float) -> SamplerSpec:
        """The reference sampler of a run whose σ_{N−1}, σ_0 are ``sigma_last``, ``sigma_first``."""
        return SamplerSpec.model_validate(
            {
                "timesteps": {
                    "name": "edm",
                    "num_steps": self.reference_steps,
                    "sigma_min": sigma_last,
                    "sigma_max": sigma_first,
                }
            }
        )

    def shared_work(self, job: JobSpec) -> str | None:
        """The reference solution: one per data, model, seeds and σ range (the time steps'
        choice and bounds, whatever the number of steps)."""
        from edmgrid.spec.job import content_hash

        timesteps = job.sampler.timesteps.model_dump(mode="json", exclude={"num_steps"})
        dump = job.model_dump(mode="json", include={"data", "model", "seeds"})
        return content_hash({**dump, "timesteps": timesteps, "metric": self.model_dump()})

    def compute(self, ev: Evaluation) -> dict[str, float]:
        reference = ev.resample(self.reference(ev.sigma_last, ev.sigma_first))
        return {"ode_error": rms_distance(ev.samples, reference)}


@metrics.register
class FDRaw(Metric):
    """Fréchet distance between samples and data in data space (float64 statistics)."""

    name: Literal["fd_raw"] = "fd_raw"

    def compute(self, ev: Evaluation) -> dict[str, float]:
        from edmgrid.engine.fid import feature_statistics, frechet_distance

        mu1, s1 = feature_statistics(ev.samples.flatten(1).numpy())
        mu2, s2 = feature_statistics(ev.dataset.x.flatten(1).numpy())
        return {"fd_raw": frechet_distance(mu1, s1, mu2, s2)}


@metrics.register
class FD(Metric):
    """Fréchet distance of samples and data in a small classifier's features (digits' FID).

    The classifier is trained once per data set on its labels and cached by content hash.
    """

    name: Literal["fd"] = "fd"

    def shared_work(self, job: JobSpec) -> str | None:
        """The data set's classifier."""
        from edmgrid.spec.job import content_hash

        return content_hash({"fd": job.data.model_dump(mode="json")})

    def compute(self, ev: Evaluation) -> dict[str, float]:
        from edmgrid.engine.classifier import features, trained_classifier
        from edmgrid.engine.fid import feature_statistics, frechet_distance

        classifier = trained_classifier(ev.dataset, ev.cache_dir)
        samples = ev.samples.clamp(-1, 1) if ev.dataset.is_image else ev.samples
        mu1, s1 = feature_statistics(features(classifier, samples))
        mu2, s2 = feature_statistics(features(classifier, ev.dataset.x))
        return {"fd": frechet_distance(mu1, s1, mu2, s2)}


@metrics.register
class FID(Metric):
    """Fréchet Inception Distance (EDM App. F.1) with Inception-v3 weights from a local file.

    The reference is ``reference`` (an ``.npz`` with ``mu``/``sigma``) or else the statistics of
    every data set image, computed once and cached by content hash. ``protocol: paper`` takes
    three runs of n = len(seeds) images on the job's seeds and the two ranges after them (seeds
    0-49999 give the paper's 0–49999, 50000–99999, 100000–149999) and reports the minimum.
    Weights: ``inception``, else ``$EDMGRID_INCEPTION`` (which ``edmgrid run --inception`` sets).
    """

    name: Literal["fid"] = "fid"
    input_paths = ("inception", "reference")
    inception: str | None = None
    reference: str | None = None
    protocol: Literal["single", "paper"] = "single"

    def check(self, job: JobSpec) -> None:
        from edmgrid.engine.fid import load_reference_npz

        if isinstance(job.data, Toy2D):
            raise SpecError("fid needs an image data set, not toy2d", path="metrics")
        if self.protocol == "paper" and not _is_range(job.seed_list):
            raise SpecError(
                f"fid protocol 'paper' needs one contiguous seed range (e.g. 0-49999), "
                f"got {job.seeds!r}",
                path="seeds",
            )
        self.extractor()
        if self.reference is not None:
            load_reference_npz(self.reference)

    def shared_work(self, job: JobSpec) -> str | None:
        """The data set's reference statistics (none to compute with a given ``reference``)."""
        from edmgrid.spec.job import content_hash

        if self.reference is not None:
            return None
        return content_hash({"fid": job.data.model_dump(mode="json"), "weights": self.inception})

    def extractor(self) -> FeatureExtractor:
        """The Inception feature extractor (a DataError at once if the weights are missing)."""
        from edmgrid.engine.fid import resolve_inception_path

        path = resolve_inception_path(self.inception)
        return _extractor(path.resolve(), path.stat().st_mtime_ns)

    def compute(self, ev: Evaluation) -> dict[str, Any]:
        from edmgrid.engine.fid import (
            fid_from_images,
            load_reference_npz,
            paper_seed_ranges,
            quantize,
            reference_statistics,
            statistics_hash,
        )

        extractor = self.extractor()
        if self.reference is not None:
            ref_mu, ref_sigma = load_reference_npz(self.reference)
        else:
            images = quantize(ev.dataset.x).numpy()
            ref_mu, ref_sigma, _ = reference_statistics(images, extractor, ev.cache_dir)
        n, first = len(ev.seeds), ev.seeds[0]
        runs = [fid_from_images(quantize(ev.samples), ref_mu, ref_sigma, extractor)]
        seeds = [_seed_text(ev.seeds)]
        if self.protocol == "paper":
            for r in paper_seed_ranges(n)[1:]:
                chunks = _generated(ev, list(range(first + r.start, first + r.stop)))
                runs.append(fid_from_images(chunks, ref_mu, ref_sigma, extractor))
                seeds.append(f"{first + r.start}-{first + r.stop - 1}")
        return {
            "fid": min(runs),
            "fid_runs": runs,
            "fid_seeds": seeds,
            "fid_n": n,
            "fid_extractor": extractor.extractor_id,
            "fid_reference_hash": statistics_hash(ref_mu, ref_sigma),
        }


@lru_cache(maxsize=1)
def _extractor(path: Path, mtime: int) -> FeatureExtractor:
    """Loaded once per process and weights file: every FID job of a grid shares it."""
    from edmgrid.engine.fid import load_inception
    from edmgrid.engine.models import default_device

    return load_inception(path, default_device())


def _generated(ev: Evaluation, seeds: list[int], chunk: int = 1000) -> Iterator[Tensor]:
    """uint8 images of ``seeds``, ``chunk`` at a time, so 50,000 are never held at once."""
    from edmgrid.engine.fid import quantize

    for lo in range(0, len(seeds), chunk):
        yield quantize(ev.generate(seeds[lo : lo + chunk]))


def _seed_text(seeds: list[int]) -> str:
    """'0-49999' for a contiguous range, else the seeds joined by commas."""
    return f"{seeds[0]}-{seeds[-1]}" if _is_range(seeds) else ",".join(map(str, seeds))


def _is_range(seeds: list[int]) -> bool:
    return seeds == list(range(seeds[0], seeds[0] + len(seeds)))
