"""Training (EDM §5, official ``training_loop`` semantics), cached by the training config's hash.

One loss term per image: λ(σ)·‖D(y + n; σ) − y‖² with σ ~ p_train, n ~ N(0, σ²I), y the
(augmented) image; summed over pixels and averaged over the batch. Adam(0.9, 0.999, 1e−8) with
a linear learning-rate ramp-up, NaN/Inf gradient sanitising, optional norm clipping, and an EMA
with a half-life in images and a ramp-up ratio.

Every tensor lives on the worker's device (``engine.device.worker_device``). One training may
span K devices (``train(..., devices=K)``): K processes under ``torch.distributed`` (NCCL on
GPUs, gloo on the CPU) split each batch as the official code does, ``batch_size / K`` images per
device in rounds of ``batch_gpu`` with gradient accumulation. Every process draws the whole
batch's randomness from one generator seeded alike and keeps its own slice, so the result does
not depend on K or ``batch_gpu`` beyond float rounding.

Every ``snapshot_kimg`` the EMA is saved as a snapshot and the whole state (network, EMA, Adam,
loss scaler, images seen, every RNG state of every process) as the training's resume state; a
killed or failed training resumes from it on its next run and ends bitwise equal (on the CPU) to
an uninterrupted one. Files under a results directory's ``cache/``::

    checkpoints/<key>.pt               the final EMA network (what evaluations load)
    snapshots/<key>/ema-<images>.pt    EMA snapshots (the latest ``keep_snapshots``, or all)
    snapshots/<key>/resume.pt          the latest resume state; deleted when training ends
    train_log/<key>.parquet            one row per tick (the store's ``train_log`` view)

The keys (``training_key``, ``checkpoint_path``) are read by the driver of a run; the module
loads torch only when it trains or builds a network.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edmgrid.config.job import JobSpec
from edmgrid.config.model import HOW_FIELDS, TrainedModel, TrainingSpec
from edmgrid.design.precision import autocast, matmul_precision
from edmgrid.engine.data import Dataset, load_data, to_unit
from edmgrid.engine.datafiles import ImageFiles
from edmgrid.engine.device import worker_device
from edmgrid.engine.progress import Progress
from edmgrid.errors import EdmgridError, JobError
from edmgrid.files import atomic_write, content_hash, load_cached
from edmgrid.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

    from edmgrid.engine.denoiser import PrecondDenoiser


def training_key(job: JobSpec) -> str | None:
    """Content hash of what training computes (data and model, less ``HOW_FIELDS``, the data's
    ``workers``, the evaluated ``snapshot`` and the sampling precision), or None for no training."""
    if not isinstance(job.model, TrainedModel):
        return None
    model = job.model.model_dump(
        mode="json",
        exclude={"snapshot": True, "sampling_precision": True, "training": set(HOW_FIELDS)},
    )
    data = job.data.model_dump(mode="json", exclude={"workers"})  # a streamed set's readers
    return content_hash({"data": data, "model": model})


def checkpoint_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "checkpoints" / f"{key}.pt"


def build_network(model: TrainedModel, dataset: Dataset) -> PrecondDenoiser:
    """D = precond ∘ F for the data set's shape (one-hot labels when ``cond``)."""
    from edmgrid.engine.denoiser import PrecondDenoiser

    shape = dataset.sample_shape
    net = model.network.build(
        img_resolution=shape[-1] if dataset.is_image else 1,
        img_channels=shape[0],
        label_dim=dataset.label_dim if model.training.cond else 0,
        augment_dim=model.augment.augment_dim,
    )
    return PrecondDenoiser(net, model.precond)


def load_trained(job: JobSpec, dataset: Dataset, cache_dir: Path) -> PrecondDenoiser:
    """The EMA network of the job's checkpoint (or of its ``snapshot``; ``weights_only``
    loads), in eval mode; a missing or unreadable (then quarantined) checkpoint is trained
    first."""

    model = job.model
    assert isinstance(model, TrainedModel)
    key = training_key(job)
    assert key is not None
    path = checkpoint_path(cache_dir, key)
    state = load_cached(path, cache_dir)
    if state is None:
        train(job, cache_dir)
        state = torch.load(path, weights_only=True)
    if model.snapshot is not None and round(model.snapshot * 1000) < state["meta"]["images"]:
        state = TrainingFiles(cache_dir, key, model.training).snapshot(model.snapshot)
    denoiser = build_network(model, dataset)
    denoiser.load_state_dict(state["ema"])
    return denoiser.eval().requires_grad_(False)


#: Steps the loss shown in the progress display is averaged over.
RUNNING_LOSS_STEPS = 20


def train(
    job: JobSpec, cache_dir: Path, progress: Progress | None = None, devices: int = 1
) -> dict[str, Any]:
    """Train the job's model on ``devices`` devices unless its checkpoint exists (and can be
    read), resuming from its last snapshot; return a summary row.

    ``devices``: how many the task holds: the first K GPUs this process sees (its
    ``CUDA_VISIBLE_DEVICES``), else K gloo processes on the CPU. One device trains in this
    process; more spawn one process each that rendezvous on a free localhost port.
    """

    assert isinstance(job.model, TrainedModel)
    key = training_key(job)
    assert key is not None
    cached = load_cached(checkpoint_path(cache_dir, key), cache_dir)
    if cached is not None:
        return {**cached["meta"], "cached": True}
    if devices > 1:
        split_batch(job.model.training, devices)  # fail here, not in every process
        meta = _spawn(job, cache_dir, progress, devices)
    else:
        meta = _train(job, cache_dir, progress, worker_device())
    return {**meta, "devices": devices, "cached": False}


def _train(
    job: JobSpec, cache_dir: Path, progress: Progress | None, device: torch.device
) -> dict[str, Any]:
    """Fit (resuming from the training's files) and, on rank 0, write the checkpoint."""
    model = job.model
    assert isinstance(model, TrainedModel)
    key = training_key(job)
    assert key is not None
    files = TrainingFiles(cache_dir, key, model.training)
    ema, meta = fit(model, load_data(job.data), progress, device=device, files=files)
    if _rank_world()[0] == 0:
        state = {"ema": ema.state_dict(), "meta": meta}
        atomic_write(checkpoint_path(cache_dir, key), lambda tmp: torch.save(state, tmp))
        files.finish()
    return meta


def fit(
    model: TrainedModel,
    dataset: Dataset,
    progress: Progress | None = None,
    *,
    device: torch.device | None = None,
    files: TrainingFiles | None = None,
) -> tuple[PrecondDenoiser, dict[str, Any]]:
    """The training loop on ``device`` (default the worker's), across the process group if one
    is initialised; with ``files`` it resumes from, and writes, the snapshots, resume state and
    log. Returns the EMA denoiser and a summary (losses, images, seconds)."""
    hp = model.training
    device = device or worker_device()
    rank, world = _rank_world()
    batch_gpu, rounds = split_batch(hp, world)
    per_rank = hp.batch_size // world
    torch.manual_seed(hp.seed)
    with torch.device(device):  # the network's layers make their parameters on it
        denoiser = build_network(model, dataset).train()
    if rank:  # dropout masks differ between processes (official seeding: seed·K + rank)
        torch.manual_seed(hp.seed * world + rank)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=hp.lr, betas=(0.9, 0.999), eps=1e-8)
    net: torch.nn.Module = denoiser
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(
            denoiser, device_ids=ids, broadcast_buffers=False
        )
    scaler = torch.amp.GradScaler(device.type) if hp.loss_scaling == "dynamic" else None
    ls = 1.0 if hp.loss_scaling == "dynamic" else hp.loss_scaling
    gen = torch.Generator(device).manual_seed(hp.seed)
    modules = Modules(denoiser, ema, optimizer, scaler, gen)
    run = RunState()
    if files is not None and (saved := files.resume_state()) is not None:
        run = modules.restore(saved, device, hp.seed)
    batches = Batches(model, dataset, gen, device, run.step)
    total, snapshot_images = round(hp.duration_kimg * 1000), _images(hp.snapshot_kimg)
    tick = Tick(run.seen, device)
    speed = Tick(run.seen, device)
    with matmul_precision(hp.precision, device):
        while run.seen < total:
            y, x, sigma, labels, augment_labels = batches.draw(hp.batch_size)
            weight = model.loss_weight(sigma)
            loss = torch.zeros((), device=device)
            for r in range(rounds):  # gradient accumulation over this process's slices
                part = slice(rank * per_rank + r * batch_gpu, rank * per_rank + (r + 1) * batch_gpu)
                with _sync(net, r == rounds - 1), autocast(hp.precision, device):
                    D = net(
                        x[part], sigma[part].flatten(), _at(labels, part), _at(augment_labels, part)
                    )
                part_loss = (weight[part] * (D - y[part]) ** 2).sum() / per_rank
                scaled = part_loss * ls
                (scaler.scale(scaled) if scaler else scaled).backward()
                loss += part_loss.detach()
            if world > 1:
                torch.distributed.all_reduce(loss)
                loss /= world
            step_loss = float(loss)
            if not math.isfinite(step_loss):
                raise JobError(
                    f"training diverged: non-finite loss at step {run.step} (image {run.seen}); "
                    f"last finite loss {run.last_loss:.4g}"
                )
            _update(optimizer, params, scaler, ls, hp, run.seen)
            optimizer.zero_grad(set_to_none=True)
            update_ema(
                ema, denoiser, hp.ema_halflife_kimg, hp.ema_rampup_ratio, run.seen, hp.batch_size
            )
            run.seen += hp.batch_size
            run.step += 1
            run.last_loss = step_loss
            run.losses.append(step_loss)
            tick.losses.append(step_loss)
            snapshot = run.seen // snapshot_images > (run.seen - hp.batch_size) // snapshot_images
            if snapshot or run.seen >= total or run.seen >= tick.seen + _images(hp.tick_kimg):
                run.log.append(tick.row(run, world))
                tick = Tick(run.seen, device)
                if files is not None and snapshot and run.seen < total:
                    state = modules.state(run, device)
                    if rank == 0:
                        files.save(state, run.seen // snapshot_images * snapshot_images)
                if files is not None and rank == 0:
                    files.write_log(run.log)
            if progress:
                progress(min(run.seen, total), total, speed.note(run, total))
    tail = run.losses[-max(1, len(run.losses) // 10) :]
    meta = {
        "steps": run.step,
        "images": run.seen,
        "loss_final": sum(tail) / len(tail),
        "train_seconds": run.seconds,
        "images_per_second": run.seen / run.seconds if run.seconds else math.nan,
        "parameters": sum(p.numel() for p in params),
        "resumed_from_images": run.resumed_from,
    }
    return ema, meta


def _update(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    scaler: torch.amp.GradScaler | None,
    ls: float,
    hp: TrainingSpec,
    seen: int,
) -> None:
    """One Adam step after ``seen`` images: learning rate ramped up linearly from cur_nimg = 0,
    gradients unscaled, NaN → 0 and ±Inf → ±1e5 (official), clipped if ``grad_clip``."""
    for group in optimizer.param_groups:
        group["lr"] = hp.lr * min(seen / max(hp.lr_rampup_kimg * 1000, 1e-8), 1)
    if scaler:
        scaler.unscale_(optimizer)
    for p in params:
        if p.grad is not None:
            if ls != 1:
                p.grad.div_(ls)
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    if hp.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def split_batch(hp: TrainingSpec, world: int) -> tuple[int, int]:
    """(batch_gpu, rounds): each of ``world`` devices takes ``batch_size / world`` images a
    step, in ``rounds`` forward passes of ``batch_gpu`` (official: min(batch_gpu, share))."""
    if hp.batch_size % world:
        raise JobError(
            f"training.batch_size {hp.batch_size} does not split over {world} devices: "
            f"use a multiple of {world} or another device count"
        )
    share = hp.batch_size // world
    batch_gpu = min(hp.batch_gpu or share, share)
    if share % batch_gpu:
        raise JobError(
            f"training.batch_gpu {batch_gpu} does not divide the {share} images per device: "
            "use a divisor of batch_size / devices"
        )
    return batch_gpu, share // batch_gpu


def _images(kimg: float) -> int:
    return max(1, round(kimg * 1000))


def _at(t: Tensor | None, part: slice) -> Tensor | None:
    return None if t is None else t[part]


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sync(net: torch.nn.Module, last_round: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP reduces the gradients after the last accumulation round only."""
    if last_round or not isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


class Batches:
    """A step's randomness for the whole batch, from one generator on the device: indices,
    dataset x-flips, augmentation, σ ~ p_train and noise, in that order. Every process draws
    the same and keeps its slice.

    Images live on the device (uint8 pixels converted per batch, or float points); a streamed
    data set is read by a DataLoader whose batch of step k is drawn by a generator seeded by
    (seed, k) on the CPU, so its workers read ahead and a resumed training picks up at its step.
    """

    def __init__(
        self,
        model: TrainedModel,
        dataset: Dataset,
        gen: torch.Generator,
        device: torch.device,
        step: int,
    ) -> None:
        self.model, self.dataset, self.gen, self.device = model, dataset, gen, device
        self.pixels = dataset.pixels.to(device) if dataset.pixels is not None else None
        self.x = dataset.x.to(device) if self.pixels is None and dataset.files is None else None
        self.stream: Iterator[tuple[Tensor, Tensor]] | None = None
        if dataset.files is not None:
            self.stream = _stream(dataset, model.training, step, device)
        cond = model.training.cond and dataset.labels is not None
        self.labels = dataset.labels.to(device) if cond and dataset.labels is not None else None
        self.eye = torch.eye(dataset.label_dim, device=device) if cond else None
        self.view = (-1,) + (1,) * len(dataset.sample_shape)

    def images(self, batch: int) -> tuple[Tensor, Tensor]:
        """(indices, images in [−1, 1]) of the next batch, on the device."""
        if self.stream is not None:
            index, pixels = next(self.stream)
            index = index.to(self.device)
            return index, to_unit(pixels.to(self.device, non_blocking=True))
        n = len(self.dataset)
        index = torch.randint(n, (batch,), generator=self.gen, device=self.device)
        if self.pixels is not None:
            return index, to_unit(self.pixels[index])
        assert self.x is not None
        return index, self.x[index]

    def draw(self, batch: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """(y, y + n, σ [B, 1, …], one-hot labels, augmentation labels)."""
        gen, device = self.gen, self.device
        index, y = self.images(batch)
        if self.model.training.xflip and self.dataset.is_image:  # Table 7, leaky by construction
            flip = torch.rand(batch, generator=gen, device=device) < 0.5
            y = torch.where(flip.reshape(self.view), y.flip(-1), y)
        y, augment_labels = self.model.augment(y, gen) if self.dataset.is_image else (y, None)
        labels = (
            self.eye[self.labels[index]]
            if self.eye is not None and self.labels is not None
            else None
        )
        sigma = self.model.p_train.sample(batch, gen).reshape(self.view)
        noise = torch.randn(y.shape, generator=gen, device=device) * sigma
        return y, y + noise, sigma, labels, augment_labels


class _Files:
    """A streamed data set as a map-style torch dataset: index → (index, uint8 image)."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Tensor]:
        return i, torch.from_numpy(self.files.image(i).copy())  # decoded images are read-only


class _StepIndices:
    """The image indices of steps ``step``, ``step + 1``, …: batch k from a CPU generator
    seeded by (seed, k)."""

    def __init__(self, n: int, batch: int, seed: int, step: int) -> None:
        self.n, self.batch, self.seed, self.step = n, batch, seed, step

    def __iter__(self) -> Iterator[list[int]]:
        for k in itertools.count(self.step):
            gen = torch.Generator().manual_seed(int(content_hash([self.seed, k]), 16))
            yield torch.randint(self.n, (self.batch,), generator=gen).tolist()


def _stream(
    dataset: Dataset, hp: TrainingSpec, step: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    from torch.utils.data import DataLoader

    assert dataset.files is not None
    loader: DataLoader[tuple[int, Tensor]] = DataLoader(
        _Files(dataset.files),  # type: ignore[arg-type]
        batch_sampler=_StepIndices(len(dataset), hp.batch_size, hp.seed, step),
        num_workers=dataset.workers,
        pin_memory=device.type == "cuda",
    )
    return iter(loader)


@dataclass
class RunState:
    """Where a training is: images seen, steps, every step's loss, the log, seconds trained
    (over all sessions), and which session this is (1, then 2 after the first resume …)."""

    seen: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    last_loss: float = math.nan
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    session: int = 1
    resumed_from: int | None = None


@dataclass
class Tick:
    """The steps since ``seen`` images: a log row (official ``--tick``) or the speed shown."""

    seen: int
    device: torch.device
    start: float = field(default_factory=time.perf_counter)
    losses: list[float] = field(default_factory=list)

    def row(self, run: RunState, world: int) -> dict[str, Any]:
        seconds = time.perf_counter() - self.start
        run.seconds += seconds
        return {
            "session": run.session,
            "step": run.step,
            "kimg": run.seen / 1000,
            "loss": sum(self.losses) / len(self.losses),
            "images_per_second": (run.seen - self.seen) / seconds,
            "seconds": run.seconds,
            "tick_seconds": seconds,
            "peak_memory_mib": _peak_memory_mib(self.device),
            "device": str(self.device),
            "devices": world,
        }

    def note(self, run: RunState, total: int) -> str:
        """'loss 0.123 · 12.8/200 kimg · 910 img/s · ETA 3m20s' (loss over the recent steps)."""
        recent = run.losses[-RUNNING_LOSS_STEPS:]
        rate = (run.seen - self.seen) / max(time.perf_counter() - self.start, 1e-9)
        eta = max(total - run.seen, 0) / rate
        return (
            f"loss {sum(recent) / len(recent):.4g} · {min(run.seen, total) / 1000:g}/"
            f"{total / 1000:g} kimg · {rate:.0f} img/s · ETA {_duration(eta)}"
        )


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def _peak_memory_mib(device: torch.device) -> float:
    """The device's peak allocated memory in the tick (then reset); on the CPU, the process's
    peak resident set so far."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Modules:
    """What a resume state holds besides the run: the network, EMA, Adam, the loss scaler and
    every generator (the batch generator, and each process's global CPU and CUDA RNG)."""

    denoiser: PrecondDenoiser
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    gen: torch.Generator

    def state(self, run: RunState, device: torch.device) -> dict[str, Any]:
        """The resume state (a collective: every process contributes its RNG states)."""
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        rngs: list[Any] = [rng]
        if _rank_world()[1] > 1:
            rngs = [None] * _rank_world()[1]
            torch.distributed.all_gather_object(rngs, rng)
        return {
            "net": self.denoiser.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "gen": self.gen.get_state(),
            "rng": rngs,
            "run": {k: v for k, v in vars(run).items() if k != "resumed_from"},
        }

    def restore(self, saved: dict[str, Any], device: torch.device, seed: int) -> RunState:
        """Load a resume state; a process whose RNG state is missing (the training resumes on
        more devices than it ran on) reseeds from (seed, rank, images seen)."""
        self.denoiser.load_state_dict(saved["net"])
        self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler and saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        self.gen.set_state(saved["gen"])
        run = RunState(**saved["run"])
        rank, world = _rank_world()
        if len(saved["rng"]) == world:
            torch.set_rng_state(saved["rng"][rank]["cpu"])
            if device.type == "cuda" and "cuda" in saved["rng"][rank]:
                torch.cuda.set_rng_state(saved["rng"][rank]["cuda"], device)
        else:
            torch.manual_seed(int(content_hash([seed, rank, world, run.seen]), 16))
        run.session += 1
        run.resumed_from = run.seen
        return run


class TrainingFiles:
    """A training's snapshots, resume state and log under ``cache/`` (see the module doc).

    Pruning rule: the resume state is only the latest (each replaces the one before, and it is
    deleted once the checkpoint is written); EMA snapshots are all kept, or with
    ``keep_snapshots: N`` only the N latest.
    """

    def __init__(self, cache_dir: Path, key: str, hp: TrainingSpec) -> None:
        self.cache_dir, self.key, self.hp = cache_dir, key, hp
        self.folder = cache_dir / "snapshots" / key
        self.resume = self.folder / "resume.pt"
        self.log = cache_dir / "train_log" / f"{key}.parquet"

    def ema_path(self, images: int) -> Path:
        return self.folder / f"ema-{images:012d}.pt"

    def resume_state(self) -> dict[str, Any] | None:
        state: dict[str, Any] | None = load_cached(self.resume, self.cache_dir)
        return state

    def save(self, state: dict[str, Any], images: int) -> None:
        """The EMA snapshot at ``images`` (nominal: a multiple of snapshot_kimg), then the
        resume state, then pruning: a kill in between leaves an older, whole resume state."""
        ema = {"ema": state["ema"], "meta": {"images": state["run"]["seen"], "nominal": images}}
        atomic_write(self.ema_path(images), lambda tmp: torch.save(ema, tmp))
        atomic_write(self.resume, lambda tmp: torch.save(state, tmp))
        if self.hp.keep_snapshots is not None:
            for old in sorted(self.folder.glob("ema-*.pt"))[: -self.hp.keep_snapshots]:
                old.unlink(missing_ok=True)

    def snapshot(self, kimg: float) -> dict[str, Any]:
        """The EMA snapshot at ``kimg``, or a JobError that lists the snapshots there are."""
        state = load_cached(self.ema_path(round(kimg * 1000)), self.cache_dir)
        if state is None:
            stems = sorted(p.stem for p in self.folder.glob("ema-*.pt"))
            there = ", ".join(f"{int(s.removeprefix('ema-')) / 1000:g}" for s in stems)
            kept = (
                f", keeping the latest {self.hp.keep_snapshots}" if self.hp.keep_snapshots else ""
            )
            raise JobError(
                f"model.snapshot {kimg:g}: training {self.key} has no EMA snapshot at {kimg:g} "
                f"kimg (it takes one every training.snapshot_kimg = {self.hp.snapshot_kimg:g}"
                f"{kept}); it has {there or 'none'}"
            )
        return dict(state)

    def write_log(self, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        frame = pd.DataFrame(rows).assign(training_key=self.key)
        atomic_write(self.log, lambda tmp: frame.to_parquet(tmp))

    def finish(self) -> None:
        """The training is done: its resume state is not needed any more."""
        self.resume.unlink(missing_ok=True)


def _spawn(
    job: JobSpec, cache_dir: Path, progress: Progress | None, devices: int
) -> dict[str, Any]:
    """Run ``_rank_main`` in ``devices`` processes; forward rank 0's progress; re-raise a
    training's error (the same on every rank) as one JobError."""
    import queue

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
        raise JobError(
            f"a training on {devices} devices, but this task sees "
            f"{torch.cuda.device_count()} GPUs (CUDA_VISIBLE_DEVICES={visible})"
        )
    events = mp.get_context("spawn").Queue()
    threads = (
        torch.get_num_threads()
        if torch.cuda.is_available()
        else max(1, torch.get_num_threads() // devices)
    )
    args = (devices, _free_port(), job, cache_dir, events, threads)
    context = mp.start_processes(_rank_main, args, nprocs=devices, join=False, start_method="spawn")
    outcome: dict[str, Any] = {}

    def drain(wait: float = 0.0) -> None:
        while True:
            try:
                kind, *rest = events.get(timeout=wait) if wait else events.get_nowait()
            except queue.Empty:
                return
            if kind == "progress" and progress:
                progress(*rest)
            else:
                outcome[kind] = rest[0]

    try:
        while not context.join(timeout=0.2):
            drain()
    except ProcessException as e:
        drain(0.5)
        if "error" in outcome:
            raise JobError(outcome["error"]) from None
        raise JobError(f"a training process failed: {str(e).strip().splitlines()[-1]}") from None
    drain(0.5)
    meta: dict[str, Any] = outcome["done"]
    return meta


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rank_main(
    rank: int, world: int, port: int, job: JobSpec, cache_dir: Path, events: Any, threads: int
) -> None:
    """One process of a training on ``world`` devices: GPU ``rank`` (NCCL), else the CPU
    (gloo); it dies with the process that spawned it."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan holds a GPU
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    try:

        def progress(done: int, total: int, note: str = "") -> None:
            events.put(("progress", done, total, note))

        meta = _train(job, cache_dir, progress if rank == 0 else None, device)
        if rank == 0:
            events.put(("done", meta))
    except EdmgridError as e:
        if rank == 0:
            events.put(("error", str(e)))
        raise
    finally:
        torch.distributed.destroy_process_group()


def update_ema(
    ema: torch.nn.Module,
    net: torch.nn.Module,
    halflife_kimg: float,
    rampup_ratio: float | None,
    seen: int,
    batch: int,
) -> None:
    """ema ← lerp(θ, ema, β), β = 0.5^{batch/H}, H = min(half-life, ratio·seen) (official), where
    ``seen`` counts the images before this step (so the first step copies θ: H = 0, β = 0)."""
    halflife = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife = min(halflife, seen * rampup_ratio)
    beta = 0.5 ** (batch / max(halflife, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
