"""Computing the metrics of :mod:`edmgrid.config.metrics` on a sampling run.

``check`` (before any sampling: can the job give the metric?) and ``compute`` (its
{column: value}) dispatch on the metric's class; a plugin's metric registers its own with
``@compute.register`` (and ``@check.register`` if it needs inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, singledispatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edmgrid.config.data import Toy2D
from edmgrid.config.job import JobSpec
from edmgrid.config.metrics import FD, FID, FDRaw, Metric, ODEError
from edmgrid.config.sampler import SamplerSpec
from edmgrid.engine.data import Dataset
from edmgrid.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from edmgrid.engine.denoiser import Denoiser
    from edmgrid.engine.fid import FeatureExtractor


@dataclass(frozen=True)
class Evaluation:
    """What a metric sees: the samples, the data, and how to re-sample from the same latents."""

    samples: Tensor  # float64, [n, *sample_shape], on the CPU
    dataset: Dataset
    denoiser: Denoiser
    seeds: list[int]
    sigma_first: float  # σ(t_0) of the run
    sigma_last: float  # σ(t_{N−1}), the last nonzero level
    cache_dir: Path
    device: torch.device  # the worker's: where networks (classifier, Inception) run
    resample: Callable[[SamplerSpec], Tensor]  # the same latents through another sampler
    generate: Callable[[list[int]], Tensor]  # this run's sampler from the latents of other seeds


@singledispatch
def check(metric: Metric, job: JobSpec) -> None:
    """Fail before any sampling if ``job`` cannot give ``metric`` (default: it can)."""


@singledispatch
def compute(metric: Metric, ev: Evaluation) -> dict[str, Any]:
    """The metric's result columns on the run ``ev``."""
    raise TypeError(
        f"no computation for metric '{metric.name}': register one with @compute.register"
    )


def rms_distance(a: Tensor, b: Tensor) -> float:
    """sqrt(mean((a − b)²)) over every sample and element."""
    return float((a - b).pow(2).mean().sqrt())


@compute.register
def _ode_error(metric: ODEError, ev: Evaluation) -> dict[str, Any]:
    from edmgrid.engine.sample import sigma_bounds  # torch, lazily

    spec = metric.reference(ev.sigma_last, ev.sigma_first)
    lo, hi = sigma_bounds(ev.denoiser, spec)  # clamped to the denoiser's range
    reference = ev.resample(spec)
    return {
        "ode_error": rms_distance(ev.samples, reference),
        "ode_error_sigma_min": lo,
        "ode_error_sigma_max": hi,
    }


@compute.register
def _fd_raw(metric: FDRaw, ev: Evaluation) -> dict[str, Any]:
    from edmgrid.engine.fid import feature_statistics, frechet_distance  # torch, lazily

    mu1, s1 = feature_statistics(ev.samples.flatten(1).numpy())
    mu2, s2 = feature_statistics(ev.dataset.x.flatten(1).numpy())
    return {"fd_raw": frechet_distance(mu1, s1, mu2, s2)}


@compute.register
def _fd(metric: FD, ev: Evaluation) -> dict[str, Any]:
    from edmgrid.engine.classifier import features, trained_classifier  # torch, lazily
    from edmgrid.engine.fid import feature_statistics, frechet_distance

    classifier = trained_classifier(ev.dataset, ev.cache_dir, ev.device)
    samples = ev.samples.clamp(-1, 1) if ev.dataset.is_image else ev.samples
    mu1, s1 = feature_statistics(features(classifier, samples))
    mu2, s2 = feature_statistics(features(classifier, ev.dataset.x))
    return {"fd": frechet_distance(mu1, s1, mu2, s2)}


@check.register
def _check_fid(metric: FID, job: JobSpec) -> None:
    from edmgrid.engine.fid import load_reference_npz  # torch, lazily

    if isinstance(job.data, Toy2D):
        raise InputError("fid needs an image data set, not toy2d", path="metrics")
    if metric.protocol == "paper" and not _is_range(job.seed_list):
        raise InputError(
            f"fid protocol 'paper' needs one contiguous seed range (e.g. 0-49999), "
            f"got {job.seeds!r}",
            path="seeds",
        )
    extractor(metric)
    if metric.reference is not None:
        load_reference_npz(metric.reference)


def extractor(metric: FID) -> FeatureExtractor:
    """The Inception feature extractor (a DataError at once if the weights are missing)."""
    from edmgrid.engine.fid import resolve_inception_path  # torch, lazily

    path = resolve_inception_path(metric.inception)
    return _extractor(path.resolve(), path.stat().st_mtime_ns)


@compute.register
def _fid(metric: FID, ev: Evaluation) -> dict[str, Any]:
    from edmgrid.engine.fid import (  # torch, lazily
        fid_from_images,
        load_reference_npz,
        paper_seed_ranges,
        quantize,
        reference_statistics,
        statistics_hash,
    )

    features = extractor(metric)
    if metric.reference is not None:
        ref_mu, ref_sigma = load_reference_npz(metric.reference)
    else:
        images = quantize(ev.dataset.x).numpy()
        ref_mu, ref_sigma, _ = reference_statistics(images, features, ev.cache_dir)
    n, first = len(ev.seeds), ev.seeds[0]
    runs = [fid_from_images(quantize(ev.samples), ref_mu, ref_sigma, features)]
    seeds = [_seed_text(ev.seeds)]
    if metric.protocol == "paper":
        for r in paper_seed_ranges(n)[1:]:
            chunks = _generated(ev, list(range(first + r.start, first + r.stop)))
            runs.append(fid_from_images(chunks, ref_mu, ref_sigma, features))
            seeds.append(f"{first + r.start}-{first + r.stop - 1}")
    return {
        "fid": min(runs),
        "fid_runs": runs,
        "fid_seeds": seeds,
        "fid_n": n,
        "fid_extractor": features.extractor_id,
        "fid_reference_hash": statistics_hash(ref_mu, ref_sigma),
    }


@lru_cache(maxsize=1)
def _extractor(path: Path, mtime: int) -> FeatureExtractor:
    """Loaded once per process and weights file: every FID job of a grid shares it."""
    from edmgrid.engine.device import worker_device
    from edmgrid.engine.fid import load_inception  # torch, lazily

    return load_inception(path, worker_device())


def _generated(ev: Evaluation, seeds: list[int], chunk: int = 1000) -> Iterator[Tensor]:
    """uint8 images of ``seeds``, ``chunk`` at a time, so 50,000 are never held at once."""
    from edmgrid.engine.fid import quantize  # torch, lazily

    for lo in range(0, len(seeds), chunk):
        yield quantize(ev.generate(seeds[lo : lo + chunk]))


def _seed_text(seeds: list[int]) -> str:
    """'0-49999' for a contiguous range, else the seeds joined by commas."""
    return f"{seeds[0]}-{seeds[-1]}" if _is_range(seeds) else ",".join(map(str, seeds))


def _is_range(seeds: list[int]) -> bool:
    return seeds == list(range(seeds[0], seeds[0] + len(seeds)))
