"""Training at scale: device placement, precision, DDP over gloo, snapshots that survive a
SIGKILL, snapshot evaluation and pruning, the training log."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from edmgrid.config.job import JobSpec
from edmgrid.config.space import resolve_presets
from edmgrid.engine.data import load_data
from edmgrid.engine.train import (
    TrainingFiles,
    checkpoint_path,
    fit,
    load_trained,
    train,
    training_key,
)
from edmgrid.errors import JobError

pytestmark = pytest.mark.usefixtures("one_thread")

#: A tiny digits DDPM++ without dropout (dropout masks are per process, so DDP would differ).
TINY_NET = {
    "arch": "ddpmpp",
    "model_channels": 8,
    "channel_mult": [1],
    "num_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def digits_job(**training: Any) -> JobSpec:
    model = {
        "kind": "trained",
        "network": TINY_NET,
        "augment": {"name": "edm", "p": 0.5},
        "training": {"duration_kimg": 0.064, "batch_size": 16, "lr_rampup_kimg": 0, "cond": True}
        | training,
    }
    config = {"data": {"name": "digits"}, "model": model, "metrics": [{"name": "fd_raw"}]}
    return JobSpec.model_validate(config)


def toy_job(**training: Any) -> JobSpec:
    model = {
        "kind": "trained",
        "network": {"arch": "mlp", "hidden": 32, "depth": 2},
        "training": {"batch_size": 32, "lr_rampup_kimg": 0, **training},
    }
    config = {"data": {"name": "toy2d", "n": 512}, "model": model, "metrics": [{"name": "fd_raw"}]}
    return JobSpec.model_validate(config)


def ema_of(cache: Path, job: JobSpec) -> dict[str, torch.Tensor]:
    key = training_key(job)
    assert key is not None
    return torch.load(checkpoint_path(cache, key), weights_only=True)["ema"]


@pytest.mark.parametrize("preset", ["vp-A", "ve-F", "vp-E"])
def test_a_training_step_makes_no_tensor_off_the_worker_device(preset):
    """With the default device ``meta``, a tensor made without the worker's device lands on
    meta and the step fails; x-flips, labels, augmentation and every p_train are exercised."""
    training = {"duration_kimg": 0.032, "batch_size": 16, "xflip": True, "cond": True}
    model = {"preset": preset, "budget": "tiny", "training": training}
    config = {"data": {"name": "digits"}, "model": model, "metrics": [{"name": "fd_raw"}]}
    job = JobSpec.model_validate(resolve_presets(config))
    data = load_data(job.data)
    torch.set_default_device("meta")
    try:
        ema, meta = fit(job.model, data, device=torch.device("cpu"))  # type: ignore[arg-type]
    finally:
        torch.set_default_device(None)
    assert {p.device.type for p in ema.parameters()} == {"cpu"}
    assert meta["steps"] == 2 and meta["loss_final"] > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_autocasts_the_network_but_keeps_weights_and_ema_fp32(
    tmp_path, precision
):
    fp32 = train(digits_job(), tmp_path / "a")
    low = train(digits_job(precision=precision, loss_scaling=128.0), tmp_path / "b")
    assert low["loss_final"] != fp32["loss_final"]  # the forward pass ran in low precision
    assert low["loss_final"] == pytest.approx(fp32["loss_final"], rel=0.05)
    ema = ema_of(tmp_path / "b", digits_job(precision=precision, loss_scaling=128.0))
    assert {t.dtype for t in ema.values() if t.is_floating_point()} == {torch.float32}


def test_dynamic_loss_scaling_trains_in_fp16(tmp_path):
    row = train(digits_job(precision="fp16", loss_scaling="dynamic"), tmp_path)
    assert row["steps"] == 4 and row["loss_final"] > 0


def test_how_fields_and_the_evaluated_snapshot_do_not_change_the_training_key():
    base = training_key(toy_job())
    same = toy_job(batch_gpu=8, tick_kimg=1, snapshot_kimg=2, keep_snapshots=3)
    assert training_key(same) == base
    snap = toy_job().model_copy(
        update={"model": toy_job().model.model_copy(update={"snapshot": 1})}
    )
    assert training_key(snap) == base and snap.job_id != toy_job().job_id
    assert training_key(toy_job(precision="bf16")) != base


def test_a_batch_gpu_that_does_not_divide_the_share_fails_naming_the_field(tmp_path):
    with pytest.raises(JobError, match=r"training.batch_gpu 5 does not divide the 32 images"):
        train(toy_job(duration_kimg=0.064, batch_gpu=5), tmp_path)


def test_two_gloo_processes_equal_one_process_with_the_same_total_batch(tmp_path):
    """DDP over 2 CPU processes, each in 2 accumulation rounds of 4 images, against one process
    with the whole batch of 16: the EMA networks and the losses agree to float rounding."""
    job = digits_job(batch_gpu=4, ema_halflife_kimg=0.01)
    one = train(job, tmp_path / "one")
    two = train(job, tmp_path / "two", devices=2)
    assert (two["devices"], two["steps"], two["images"]) == (2, one["steps"], one["images"])
    assert two["loss_final"] == pytest.approx(one["loss_final"], rel=1e-5)
    a, b = ema_of(tmp_path / "one", job), ema_of(tmp_path / "two", job)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5, msg=name)


def test_a_batch_that_does_not_split_over_the_devices_fails_before_spawning(tmp_path):
    with pytest.raises(JobError, match=r"training.batch_size 15 does not split over 2 devices"):
        train(toy_job(duration_kimg=0.03, batch_size=15), tmp_path, devices=2)


@pytest.mark.slow
def test_a_training_that_diverges_on_every_rank_fails_with_the_ranks_reason(tmp_path):
    job = toy_job(duration_kimg=0.064, batch_size=16, lr=1e30)
    with pytest.raises(JobError, match=r"^training diverged: non-finite loss at step 2 "):
        train(job, tmp_path, devices=2)
    assert not checkpoint_path(tmp_path, training_key(job) or "").exists()


#: A toy training of 500 steps with a snapshot and a log row every 20: a kill ~50 ms after a
#: session's first snapshot lands before the end even on a loaded machine.
RESUMABLE = {"duration_kimg": 16, "snapshot_kimg": 0.64, "tick_kimg": 0.64}

RUNNER = """
import json, sys, torch
torch.set_num_threads(1)
from edmgrid.config.job import JobSpec
from edmgrid.engine.train import train
job = JobSpec.model_validate(json.loads(sys.argv[1]))
train(job, __import__("pathlib").Path(sys.argv[2]))
"""


def test_a_training_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
    job = toy_job(**RESUMABLE)
    key = training_key(job)
    assert key is not None
    cache = tmp_path / "killed"
    files = TrainingFiles(cache, key, job.model.training)  # type: ignore[union-attr]
    argv = [sys.executable, "-c", RUNNER, json.dumps(job.resolved()), str(cache)]
    rng, kills = random.Random(12), 0
    while kills < 3:
        seen = files.resume.stat().st_mtime_ns if files.resume.exists() else 0
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        while proc.poll() is None and (
            not files.resume.exists() or files.resume.stat().st_mtime_ns == seen
        ):
            time.sleep(0.005)  # until this session has written a snapshot of its own
        time.sleep(rng.uniform(0, 0.05))
        assert proc.poll() is None, "the training ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert not checkpoint_path(cache, key).exists()
    resumed = train(job, cache)  # the re-run, here in-process
    uninterrupted = train(job, tmp_path / "whole")
    a, b = ema_of(cache, job), ema_of(tmp_path / "whole", job)
    assert all(torch.equal(a[n], b[n]) for n in a)  # bitwise
    assert resumed["loss_final"] == uninterrupted["loss_final"]
    assert resumed["resumed_from_images"] > 0 and uninterrupted["resumed_from_images"] is None
    assert not files.resume.exists()  # removed once the checkpoint is written

    import pandas as pd

    log = pd.read_parquet(files.log)
    whole = pd.read_parquet(TrainingFiles(tmp_path / "whole", key, files.hp).log)
    assert log["kimg"].tolist() == whole["kimg"].tolist()  # every tick once, in order
    assert log["loss"].tolist() == whole["loss"].tolist()
    assert set(log["session"]) == {1, 2, 3, 4} and set(whole["session"]) == {1}
    assert log["session"].is_monotonic_increasing


def test_snapshots_are_evaluated_by_kimg_and_pruned_to_the_latest_kept(tmp_path):
    job = toy_job(duration_kimg=2.048, snapshot_kimg=0.512, keep_snapshots=2)
    train(job, tmp_path)
    key = training_key(job)
    assert key is not None
    files = TrainingFiles(tmp_path, key, job.model.training)  # type: ignore[union-attr]
    kept = sorted(p.name for p in files.folder.glob("ema-*.pt"))
    assert kept == ["ema-000000001024.pt", "ema-000000001536.pt"]  # 0.512 pruned, 2.048 final
    model = job.model

    def at(kimg: float | None) -> JobSpec:
        return job.model_copy(update={"model": model.model_copy(update={"snapshot": kimg})})

    data = load_data(job.data)
    snapshot = load_trained(at(1.536), data, tmp_path).state_dict()
    saved = torch.load(files.ema_path(1536), weights_only=True)["ema"]
    assert all(torch.equal(snapshot[n], saved[n]) for n in saved)
    final = load_trained(at(2.048), data, tmp_path).state_dict()
    assert all(torch.equal(final[n], ema_of(tmp_path, job)[n]) for n in final)
    assert not all(torch.equal(final[n], snapshot[n]) for n in final)
    with pytest.raises(JobError, match=r"no EMA snapshot at 0.512 kimg .* it has 1.024, 1.536$"):
        load_trained(at(0.512), data, tmp_path)


def test_a_space_grids_over_snapshots_with_one_training_and_logs_its_ticks(tmp_path):
    """The curve of a training: fd at kimg 0.128, 0.192 (snapshots) and 0.256 (the end), from
    one training whose per-tick log is the ``train_log`` view."""
    from fake_training import toy_space

    from edmgrid.run.executors import SerialExecutor
    from edmgrid.run.runner import run_space
    from edmgrid.run.store import Store

    model = {"kind": "trained", "network": {"arch": "mlp", "hidden": 8, "depth": 1}}
    model["training"] = {
        "duration_kimg": 0.256,
        "batch_size": 32,
        "tick_kimg": 0.032,
        "snapshot_kimg": 0.064,
    }
    grid = {"model.snapshot": [0.128, 0.192, 0.256]}
    store = Store(tmp_path / "r")
    run_space(toy_space(tmp_path, "t", grid, model=model), store, executor=SerialExecutor())
    runs = store.query("SELECT model_snapshot, fd_raw, status FROM runs ORDER BY 1")
    assert runs["model_snapshot"].tolist() == [0.128, 0.192, 0.256]
    assert set(runs["status"]) == {"done"} and runs["fd_raw"].nunique() == 3
    assert len(store.query("SELECT * FROM trainings")) == 1
    log = store.query("SELECT * FROM train_log ORDER BY kimg")
    assert log["kimg"].tolist() == pytest.approx([0.032 * k for k in range(1, 9)])
    columns = {"loss", "images_per_second", "seconds", "peak_memory_mib", "session", "device"}
    assert columns <= set(log.columns) and (log["peak_memory_mib"] > 0).all()
    assert log["seconds"].is_monotonic_increasing and set(log["session"]) == {1}


def edm_zip(folder: Path, n: int = 24) -> Path:
    """An EDM dataset zip of ``n`` random 8×8 RGB images with labels 0–2."""
    import zipfile

    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    path = folder / "dataset.zip"
    with zipfile.ZipFile(path, "w") as zf:
        pairs = []
        for i in range(n):
            name = f"00000/img{i:08d}.png"
            with zf.open(name, "w") as f:
                PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(f, "png")
            pairs.append([name, i % 3])
        zf.writestr("dataset.json", json.dumps({"labels": pairs}))
    return path


def image_job(path: Path, training: dict[str, Any] | None = None, **data: Any) -> JobSpec:
    model = {
        "kind": "trained",
        "network": {**TINY_NET, "model_channels": 4},
        "augment": {"name": "edm", "p": 0.5},
        "training": {"duration_kimg": 0.032, "batch_size": 8, "lr_rampup_kimg": 0, "cond": True}
        | (training or {}),
    }
    spec = {"name": "edm_zip", "path": str(path), **data}
    return JobSpec.model_validate({"data": spec, "model": model, "metrics": [{"name": "fd_raw"}]})


def test_image_files_are_held_as_uint8_and_give_the_float_path_batches(tmp_path):
    from edmgrid.engine.data import Dataset, to_unit
    from edmgrid.engine.train import Batches

    job = image_job(edm_zip(tmp_path))
    data = load_data(job.data)
    assert data.pixels is not None and data.pixels.dtype == torch.uint8 and data._x is None
    assert data.sample_shape == (3, 8, 8) and len(data) == 24  # no float copy made for it
    floats = Dataset(to_unit(data.pixels), data.labels, data.label_dim)
    device = torch.device("cpu")
    a = Batches(job.model, data, torch.Generator().manual_seed(3), device, 0)  # type: ignore[arg-type]
    b = Batches(job.model, floats, torch.Generator().manual_seed(3), device, 0)  # type: ignore[arg-type]
    for _ in range(3):
        for u, v in zip(a.draw(8), b.draw(8), strict=True):
            assert u is not None and v is not None and torch.equal(u, v)
    assert torch.equal(data.x, floats.x) and data.x.dtype == torch.float32


def test_a_streamed_data_set_reads_its_batches_through_dataloader_workers(tmp_path):
    from edmgrid.engine.train import Batches

    path = edm_zip(tmp_path)
    streamed, in_memory = (
        load_data(image_job(path, stream=True, workers=2).data),
        load_data(image_job(path).data),
    )
    assert streamed.pixels is None and streamed.files is not None
    job = image_job(path, stream=True, workers=2)
    assert training_key(job) == training_key(image_job(path, stream=True, workers=0))
    assert training_key(job) != training_key(image_job(path))
    batches = Batches(job.model, streamed, torch.Generator(), torch.device("cpu"), step=5)  # type: ignore[arg-type]
    index, images = batches.images(8)
    assert in_memory.pixels is not None
    assert torch.equal(images, in_memory.x[index])  # the images at the drawn indices
    again = Batches(job.model, streamed, torch.Generator(), torch.device("cpu"), step=5)  # type: ignore[arg-type]
    assert torch.equal(again.images(8)[0], index)  # step 5's batch, whatever ran before
    assert torch.equal(streamed.x, in_memory.x)  # decoded in full on first use


def test_a_failed_streamed_training_resumes_from_its_snapshot_bitwise(tmp_path, monkeypatch):
    from edmgrid.engine import train as train_mod

    job = image_job(edm_zip(tmp_path), {"snapshot_kimg": 0.016}, stream=True, workers=0)
    whole = train(job, tmp_path / "whole")
    real, calls = train_mod.update_ema, []

    def failing(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 3:  # the step after the snapshot at 16 images
            raise RuntimeError("node lost")
        real(*args)

    monkeypatch.setattr(train_mod, "update_ema", failing)
    with pytest.raises(RuntimeError, match="node lost"):
        train(job, tmp_path / "failed")
    monkeypatch.setattr(train_mod, "update_ema", real)
    resumed = train(job, tmp_path / "failed")
    assert resumed["resumed_from_images"] == 16 and resumed["loss_final"] == whole["loss_final"]
    a, b = ema_of(tmp_path / "whole", job), ema_of(tmp_path / "failed", job)
    assert all(torch.equal(a[n], b[n]) for n in a)
