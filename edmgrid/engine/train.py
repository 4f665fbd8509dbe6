"""Training (EDM §5, official ``training_loop`` semantics), cached by the training config's hash.

One loss term per image: λ(σ)·‖D(y + n; σ) − y‖² with σ ~ p_train, n ~ N(0, σ²I), y the
(augmented) image; summed over pixels and averaged over the batch. Adam(0.9, 0.999, 1e−8) with
a linear learning-rate ramp-up, NaN/Inf gradient sanitising, optional norm clipping, and an EMA
with a half-life in images and a ramp-up ratio.

The keys (``training_key``, ``checkpoint_path``) are read by the driver of a run; the module
loads torch only when it trains or builds a network.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edmgrid.config.job import JobSpec
from edmgrid.config.model import TrainedModel
from edmgrid.engine.data import Dataset, load_data
from edmgrid.engine.progress import Progress
from edmgrid.errors import JobError
from edmgrid.files import atomic_write, content_hash, load_cached
from edmgrid.lazy import torch

if TYPE_CHECKING:
    from edmgrid.engine.denoiser import PrecondDenoiser


def training_key(job: JobSpec) -> str | None:
    """Content hash of what training depends on (data and model, less its sampling
    precision), or None for no training."""
    if not isinstance(job.model, TrainedModel):
        return None
    model = job.model.model_dump(mode="json", exclude={"sampling_precision"})
    return content_hash({"data": job.data.model_dump(mode="json"), "model": model})


def checkpoint_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "checkpoints" / f"{key}.pt"


def build_network(model: TrainedModel, dataset: Dataset) -> PrecondDenoiser:
    """D = precond ∘ F for the data set's shape (one-hot labels when ``cond``)."""
    from edmgrid.engine.denoiser import PrecondDenoiser

    channels, resolution = (
        (dataset.x.shape[1], dataset.x.shape[-1]) if dataset.is_image else (dataset.x.shape[1], 1)
    )
    net = model.network.build(
        img_resolution=resolution,
        img_channels=channels,
        label_dim=dataset.label_dim if model.training.cond else 0,
        augment_dim=model.augment.augment_dim,
    )
    return PrecondDenoiser(net, model.precond)


def load_trained(job: JobSpec, dataset: Dataset, cache_dir: Path) -> PrecondDenoiser:
    """The EMA network of the job's checkpoint (``weights_only`` load), in eval mode; a missing
    or unreadable (then quarantined) checkpoint is trained first."""

    assert isinstance(job.model, TrainedModel)
    key = training_key(job)
    assert key is not None
    path = checkpoint_path(cache_dir, key)
    state = load_cached(path, cache_dir)
    if state is None:
        train(job, cache_dir)
        state = torch.load(path, weights_only=True)
    denoiser = build_network(job.model, dataset)
    denoiser.load_state_dict(state["ema"])
    return denoiser.eval().requires_grad_(False)


#: Steps the loss shown in the progress display is averaged over.
RUNNING_LOSS_STEPS = 20


def train(job: JobSpec, cache_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Train the job's model unless its checkpoint exists (and can be read); return a summary
    row."""

    model = job.model
    assert isinstance(model, TrainedModel)
    key = training_key(job)
    assert key is not None
    path = checkpoint_path(cache_dir, key)
    cached = load_cached(path, cache_dir)
    if cached is not None:
        return {**cached["meta"], "cached": True}
    dataset = load_data(job.data)
    ema, meta = fit(model, dataset, progress)
    state = {"ema": ema.state_dict(), "meta": meta}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return {**meta, "cached": False}


def fit(
    model: TrainedModel, dataset: Dataset, progress: Progress | None = None
) -> tuple[PrecondDenoiser, dict[str, Any]]:
    """The training loop; returns the EMA denoiser and a summary (losses, images, seconds)."""
    hp = model.training
    torch.manual_seed(hp.seed)
    gen = torch.Generator().manual_seed(hp.seed)
    denoiser = build_network(model, dataset).train()
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=hp.lr, betas=(0.9, 0.999), eps=1e-8)
    total = round(hp.duration_kimg * 1000)
    n, batch = len(dataset.x), hp.batch_size
    view = (-1,) + (1,) * (dataset.x.ndim - 1)
    eye = torch.eye(dataset.label_dim) if hp.cond else None
    seen, step, start, last_loss = 0, 0, time.perf_counter(), math.nan
    losses: list[float] = []
    while seen < total:
        index = torch.randint(n, (batch,), generator=gen)
        y = dataset.x[index]
        if hp.xflip and dataset.is_image:  # dataset x-flips (Table 7), leaky by construction
            flip = torch.rand(batch, generator=gen) < 0.5
            y = torch.where(flip.reshape(view), y.flip(-1), y)
        y, augment_labels = model.augment(y, gen) if dataset.is_image else (y, None)
        labels = (
            eye[dataset.labels[index]] if eye is not None and dataset.labels is not None else None
        )
        sigma = model.p_train.sample(batch, gen).reshape(view)
        noise = torch.randn(y.shape, generator=gen) * sigma
        D = denoiser(y + noise, sigma.flatten(), labels, augment_labels)
        loss = (model.loss_weight(sigma) * (D - y) ** 2).sum() / batch
        if not torch.isfinite(loss):
            raise JobError(
                f"training diverged: non-finite loss at step {step} (image {seen}); "
                f"last finite loss {last_loss:.4g}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:  # linear ramp-up from cur_nimg = 0
            group["lr"] = hp.lr * min(seen / max(hp.lr_rampup_kimg * 1000, 1e-8), 1)
        for p in params:
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        if hp.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
        optimizer.step()
        seen += batch
        step += 1
        update_ema(ema, denoiser, hp.ema_halflife_kimg, hp.ema_rampup_ratio, seen, batch)
        last_loss = float(loss.detach())
        losses.append(last_loss)
        if progress:
            recent = losses[-RUNNING_LOSS_STEPS:]
            progress(min(seen, total), total, f"loss {sum(recent) / len(recent):.4g}")
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10) :]
    meta = {
        "steps": step,
        "images": seen,
        "loss_final": sum(tail) / len(tail),
        "train_seconds": seconds,
        "images_per_second": seen / seconds,
        "parameters": sum(p.numel() for p in params),
    }
    return ema, meta


def update_ema(
    ema: torch.nn.Module,
    net: torch.nn.Module,
    halflife_kimg: float,
    rampup_ratio: float | None,
    seen: int,
    batch: int,
) -> None:
    """ema ← lerp(θ, ema, β), β = 0.5^{batch/H}, H = min(half-life, ratio·images) (official)."""
    halflife = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife = min(halflife, seen * rampup_ratio)
    beta = 0.5 ** (batch / max(halflife, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
