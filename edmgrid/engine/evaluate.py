"""Run one evaluation job: build the denoiser, sample every seed, compute the metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import singledispatch
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edmgrid.config.job import JobSpec, model_key, model_settings
from edmgrid.config.model import (
    AnalyticModel,
    EntrypointModel,
    ModelSpec,
    PickleModel,
    TrainedModel,
)
from edmgrid.config.sampler import SamplerSpec
from edmgrid.engine.data import Dataset, load_data
from edmgrid.engine.denoiser import AnalyticDenoiser, Denoiser, TorchDenoiser
from edmgrid.engine.device import worker_device
from edmgrid.engine.metrics import Evaluation, check, compute
from edmgrid.engine.models import load_entrypoint, load_network_pickle, network_denoiser
from edmgrid.engine.progress import Progress
from edmgrid.engine.sample import (
    CountingDenoiser,
    fit_steps,
    plan,
    sample,
    seed_inputs,
)
from edmgrid.engine.train import load_trained
from edmgrid.errors import JobError
from edmgrid.files import atomic_write, content_hash, file_lock, load_cached

#: Samples per denoiser call; results do not depend on it (one generator per seed).
MAX_BATCH = 512
#: Samples beyond this multiple of the data's largest |x| are absurd: the row is ``suspect``.
SUSPECT_RANGE = 4.0


def build_denoiser(job: JobSpec, dataset: Dataset, cache_dir: Path) -> Denoiser:
    """The job's denoiser (``denoiser_of`` its model choice)."""
    return denoiser_of(job.model, job, dataset, cache_dir)


@singledispatch
def denoiser_of(model: ModelSpec, job: JobSpec, dataset: Dataset, cache_dir: Path) -> Denoiser:
    """The denoiser of ``model`` for ``dataset`` (``cache_dir`` holds checkpoints); a plugin's
    model kind registers its own with ``@denoiser_of.register``."""
    raise TypeError(f"no denoiser for model kind '{model.kind}': register one")


@denoiser_of.register
def _analytic(model: AnalyticModel, job: JobSpec, dataset: Dataset, cache_dir: Path) -> Denoiser:
    return AnalyticDenoiser(dataset.x.to(worker_device()), chunk=model.chunk)


@denoiser_of.register
def _pickle(model: PickleModel, job: JobSpec, dataset: Dataset, cache_dir: Path) -> Denoiser:
    return network_denoiser(
        load_network_pickle(model.path), dataset, model.path, model.sampling_precision
    )


@denoiser_of.register
def _entrypoint(
    model: EntrypointModel, job: JobSpec, dataset: Dataset, cache_dir: Path
) -> Denoiser:
    net = load_entrypoint(model.target, model.kwargs)
    return network_denoiser(net, dataset, model.target, model.sampling_precision)


@denoiser_of.register
def _trained(model: TrainedModel, job: JobSpec, dataset: Dataset, cache_dir: Path) -> Denoiser:
    with torch.device("cpu"):  # built on the host, then moved with its checkpoint's weights
        net = load_trained(job, dataset, cache_dir)
    return TorchDenoiser(net.to(worker_device()), model.sampling_precision)


#: The denoiser last built in this process, by (model key, cache dir).
_LOADED: dict[tuple[str, Path], Denoiser] = {}


def load_denoiser(job: JobSpec, dataset: Dataset, cache_dir: Path) -> Denoiser:
    """``build_denoiser``, remembering the last model built in this process.

    Workers get the jobs of one model in a row (``run.scheduler.Picker``), so each loads a
    checkpoint once however many evaluations use it.
    """
    key = (model_key(job), cache_dir)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = build_denoiser(job, dataset, cache_dir)
    return _LOADED[key]


def sample_seeds(
    denoiser: Denoiser,
    spec: SamplerSpec,
    seeds: list[int],
    shape: tuple[int, ...],
    device: torch.device,
    progress: Progress | None = None,
) -> Tensor:
    """Samples for every seed, solved on ``device`` in batches of at most MAX_BATCH, each
    seed's inputs and noise as ``seed_inputs`` gives them; returned on the CPU (float64), where
    they are cached and measured."""
    out = []
    for lo in range(0, len(seeds), MAX_BATCH):
        batch = seeds[lo : lo + MAX_BATCH]
        x_T, labels, rng = seed_inputs(denoiser, batch, shape, device)
        out.append(sample(denoiser, x_T, spec, labels, randn_like=rng.randn_like).cpu())
        if progress:
            progress(lo + len(batch), len(seeds))
    return torch.cat(out)


def cached_tensor(cache_dir: Path, key: dict[str, Any], make: Callable[[], Tensor]) -> Tensor:
    """A tensor cached on disk by the content hash of ``key`` (reference solutions, fitted steps).

    Computed once under a file lock: concurrent workers that need the same tensor wait for
    the first one instead of repeating its work. An unreadable file is quarantined and made again.
    """
    path = cache_dir / "tensors" / f"{content_hash(key)}.pt"
    with file_lock(path.with_name(f"{path.name}.lock")):
        cached: Tensor | None = load_cached(path, cache_dir)
        if cached is not None:
            return cached
        x = make()
        atomic_write(path, lambda tmp: torch.save(x, tmp))
    return x


def fitted_sampler(
    job: JobSpec, denoiser: Denoiser, dataset: Dataset, cache_dir: Path, device: torch.device
) -> SamplerSpec:
    """The job's sampler with its time steps fitted to the model (``fit_steps``), what the fit
    computes cached on disk per model."""

    def cached(key: dict[str, Any], make: Callable[[], Tensor]) -> Tensor:
        return cached_tensor(cache_dir, {**model_settings(job), **key}, make)

    return fit_steps(denoiser, job.sampler, dataset.sample_shape, device, cached)


def evaluate(job: JobSpec, cache_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Check the worker's device and that the metrics can be had, sample the job's seeds on
    that device, check the samples are finite, and compute the metrics."""
    device = worker_device()
    for metric in job.metrics:
        check(metric, job)
    dataset = load_data(job.data)
    denoiser = load_denoiser(job, dataset, cache_dir)
    sampler = fitted_sampler(job, denoiser, dataset, cache_dir, device)
    counter = CountingDenoiser(denoiser)
    seeds, shape = job.seed_list, dataset.sample_shape
    samples = sample_seeds(counter, sampler, seeds, shape, device, progress)
    if not torch.isfinite(samples).all():
        bad = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
        raise JobError(f"sampler produced non-finite values in {bad} of {len(seeds)} samples")
    sigma_steps = plan(denoiser, sampler).sigma_steps

    def resample(spec: SamplerSpec) -> Tensor:
        key = {**model_settings(job), "sampler": spec.model_dump(mode="json"), "seeds": job.seeds}
        return cached_tensor(
            cache_dir, key, lambda: sample_seeds(denoiser, spec, seeds, shape, device)
        )

    ev = Evaluation(
        samples=samples,
        dataset=dataset,
        denoiser=denoiser,
        seeds=seeds,
        sigma_first=float(sigma_steps[0]),
        sigma_last=float(sigma_steps[-2]),
        cache_dir=cache_dir,
        device=device,
        resample=resample,
        generate=lambda other: sample_seeds(denoiser, sampler, other, shape, device),
    )
    row: dict[str, Any] = {
        "nfe": counter.evaluations / len(seeds),
        "num_samples": len(seeds),
        "sigma_max_used": ev.sigma_first,
        "sigma_min_used": ev.sigma_last,
    }
    if sampler.timesteps is not job.sampler.timesteps:  # fitted to the model
        row["fitted_sigmas"] = json.dumps(sigma_steps[:-1].tolist())
        row.update(job.sampler.timesteps.fit_columns())
    for metric in job.metrics:
        for column, value in compute(metric, ev).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise JobError(f"metric {column} is not finite ({value})")
            row[column] = value
    row["suspect"] = suspect(job, samples, dataset, row)
    return row


def suspect(job: JobSpec, samples: Tensor, dataset: Dataset, row: dict[str, Any]) -> str | None:
    """Why a finished run's numbers cannot be right, or None: samples beyond SUSPECT_RANGE ×
    max|data| (saying how many), or a metric beyond its ``bounds``. (Non-finite samples or
    metrics fail the job instead: there are no numbers to keep.)"""
    scale = float(dataset.x.abs().max())
    reasons = []
    reach = samples.abs().flatten(1).amax(1)
    beyond = int((reach > SUSPECT_RANGE * scale).sum())
    if beyond:
        reasons.append(
            f"samples reach |x| = {float(reach.max()):.4g} > {SUSPECT_RANGE:g} × max|data| "
            f"{scale:.4g} ({beyond} of {len(reach)})"
        )
    for metric in job.metrics:
        for column, bound in metric.bounds(scale).items():
            value = row.get(column)
            if isinstance(value, float) and value > bound:
                reasons.append(f"{column} = {value:.4g} > its bound {bound:.4g}")
    return "; ".join(reasons) or None


def draw_samples(job: JobSpec, cache_dir: Path, n: int) -> tuple[Dataset, Tensor]:
    """The data set and the samples of the job's first ``n`` seeds (the same as in its run)."""
    device = worker_device()
    dataset = load_data(job.data)
    denoiser = build_denoiser(job, dataset, cache_dir)
    sampler = fitted_sampler(job, denoiser, dataset, cache_dir, device)
    return dataset, sample_seeds(denoiser, sampler, job.seed_list[:n], dataset.sample_shape, device)
