"""The worker's device: every tensor of sampling and metrics made there, per-seed noise that
does not depend on batch or device, sampling precision, and a GPU worker that cannot use its GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from edmgrid.config.job import JobSpec
from edmgrid.config.space import resolve_presets
from edmgrid.design.precision import forward_precision
from edmgrid.engine import classifier as classifier_module
from edmgrid.engine import evaluate as evaluate_module
from edmgrid.engine import fid as fid_module
from edmgrid.engine.device import SIMULATED_GPUS, describe_device, pinned_gpus, worker_device
from edmgrid.engine.evaluate import evaluate, sample_seeds
from edmgrid.engine.metrics import _extractor
from edmgrid.engine.sample import SeedRNG, seed_inputs
from edmgrid.engine.train import train
from edmgrid.errors import JobError
from edmgrid.run.jobs import Task, run_job
from edmgrid.run.store import Store

#: An entry-point network: class-conditional, with weights, of the digits' shape.
TINYNET = """
import torch


class Tiny(torch.nn.Module):
    img_channels, img_resolution, label_dim = 1, 8, 10

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.embed = torch.nn.Linear(10, 1)

    def forward(self, x, sigma, class_labels=None):
        shift = self.embed(class_labels).reshape(-1, 1, 1, 1)
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2) + 0.01 * (self.conv(x) + shift)


def tiny():
    return Tiny()
"""

CHURN = {"solver": {"name": "heun", "S_churn": 5.0}, "timesteps": {"name": "edm", "num_steps": 4}}


def _job(model: dict[str, Any], metrics: list[dict[str, Any]], **over: Any) -> JobSpec:
    config = {
        "data": {"name": "digits"},
        "model": model,
        "sampler": CHURN,
        "metrics": metrics,
        "seeds": "0-5",
        **over,
    }
    return JobSpec.model_validate(resolve_presets(config))


class _Extractor(fid_module.FeatureExtractor):
    """16 random projections of 8×8 pooled pixels: a tiny stand-in for Inception."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(192, 16)

    @property
    def extractor_id(self) -> str:
        return "random-16"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1).float(), size=(8, 8))
        return torch.tanh(self.proj(x.reshape(len(x), -1) / 255))


@pytest.fixture
def meta_default() -> Iterator[None]:
    """torch's default device is ``meta``: a tensor made without naming a device lands there,
    and meets the worker's (CPU) tensors in an error."""
    torch.set_default_device("meta")
    yield
    torch.set_default_device("cpu")


@pytest.fixture
def entrypoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "tinynet.py").write_text(TINYNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tinynet:tiny"


def test_sampling_and_every_metric_make_no_tensor_off_the_workers_device(
    meta_default: None,
    entrypoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    assert worker_device() == torch.device("cpu")
    monkeypatch.setattr(classifier_module, "STEPS", 5)  # the fd classifier: placement only
    with torch.device("cpu"):
        extractor = _Extractor()
    monkeypatch.setattr(fid_module, "load_inception", lambda path, device: extractor.to(device))
    _extractor.cache_clear()
    weights = tmp_path / "random.pth"
    weights.touch()
    metrics = [
        {"name": "ode_error", "reference_steps": 8},
        {"name": "fd_raw"},
        {"name": "fd"},
        {"name": "fid", "inception": str(weights)},
    ]
    plain = {"solver": {"name": "heun"}, "timesteps": {"name": "edm", "num_steps": 4}}
    row = evaluate(_job({"kind": "analytic"}, metrics, sampler=plain), tmp_path)
    assert {"ode_error", "fd_raw", "fd", "fid"} <= set(row)
    gits = {"solver": {"name": "euler"}, "timesteps": {"name": "gits", "num_steps": 3}}
    fitted = _job({"kind": "analytic"}, [{"name": "fd_raw"}], sampler=gits)
    assert "fitted_sigmas" in evaluate(fitted, tmp_path)
    model = {"kind": "entrypoint", "target": entrypoint, "sampling_precision": "bf16"}
    assert evaluate(_job(model, [{"name": "fd_raw"}]), tmp_path)["fd_raw"] > 0


@pytest.mark.parametrize("schedule", ["cosine", "sigmoid", "linear_gamma"])
def test_chen_schedules_make_no_tensor_off_the_workers_device(
    schedule: str, meta_default: None, tmp_path: Path, one_thread: None
) -> None:
    sampler = {
        "solver": {"name": "heun"},
        "schedule": {"name": schedule},
        "timesteps": {"name": "uniform", "num_steps": 4, "sigma_max": 80.0},
    }
    row = evaluate(_job({"kind": "analytic"}, [{"name": "fd_raw"}], sampler=sampler), tmp_path)
    assert row["fd_raw"] > 0


def test_a_trained_class_conditional_network_samples_on_the_workers_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    model = {
        "preset": "vp-E",
        "budget": "tiny",
        "training": {"duration_kimg": 0.128, "cond": True},
    }
    job = _job(model, [{"name": "fd_raw"}])
    train(job, tmp_path)  # training's own placement is engine.train's (tests/test_training.py)
    torch.set_default_device("meta")
    try:
        row = evaluate(job, tmp_path)
    finally:
        torch.set_default_device("cpu")
    assert row["fd_raw"] > 0


def test_a_seeds_noise_is_the_same_in_any_batch_and_for_any_target_device() -> None:
    alone = [SeedRNG([seed]).randn([1, 3, 4]) for seed in (7, 3, 11)]
    together = SeedRNG([7, 3, 11])
    torch.testing.assert_close(together.randn([3, 3, 4]), torch.cat(alone), rtol=0, atol=0)
    # the draws are made on the CPU whatever device they go to: the streams advance alike
    on_meta, on_cpu = SeedRNG([7, 3]), SeedRNG([7, 3])
    moved = on_meta.randn_like(torch.empty(2, 5, device="meta"))
    assert moved.device.type == "meta" and moved.shape == (2, 5)
    on_cpu.randn_like(torch.empty(2, 5))
    torch.testing.assert_close(on_meta.randn([2, 5]), on_cpu.randn([2, 5]), rtol=0, atol=0)
    reference = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(alone[1][0], reference, rtol=0, atol=0)


def test_samples_do_not_depend_on_how_seeds_are_batched(
    gaussian: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job({"kind": "analytic"}, [{"name": "fd_raw"}])
    cpu = torch.device("cpu")
    gaussian.label_dim = 10  # class labels drawn per seed after the latents
    whole = sample_seeds(gaussian, job.sampler, list(range(7)), (1, 8, 8), cpu)
    monkeypatch.setattr(evaluate_module, "MAX_BATCH", 3)
    batched = sample_seeds(gaussian, job.sampler, list(range(7)), (1, 8, 8), cpu)
    torch.testing.assert_close(batched, whole, rtol=0, atol=0)
    x_T, labels, _ = seed_inputs(gaussian, [4], (1, 8, 8), cpu)
    x_alone, labels_alone, _ = seed_inputs(gaussian, [2, 4], (1, 8, 8), cpu)
    assert torch.equal(x_T[0], x_alone[1]) and labels is not None and labels_alone is not None
    assert torch.equal(labels[0], labels_alone[1])


def test_bf16_sampling_runs_the_network_in_bf16_and_keeps_the_sampler_in_float64() -> None:
    net = torch.nn.Linear(4, 4)
    with forward_precision("bf16", torch.device("cpu")):
        assert net(torch.ones(2, 4)).dtype == torch.bfloat16
    with forward_precision("tf32", torch.device("cpu")):  # no TF32 on a CPU: fp32
        assert net(torch.ones(2, 4)).dtype == torch.float32


def test_sampling_precision_is_not_part_of_the_training_key() -> None:
    from edmgrid.engine.train import training_key

    model = {"preset": "vp-E", "budget": "tiny"}
    fp32 = _job(model, [{"name": "fd_raw"}])
    bf16 = _job({**model, "sampling_precision": "bf16"}, [{"name": "fd_raw"}])
    assert training_key(fp32) == training_key(bf16) and fp32.job_id != bf16.job_id


@pytest.mark.parametrize(
    ("visible", "pinned"),
    [(None, []), ("", []), ("-1", []), ("2", ["2"]), ("1,3,-1,0", ["1", "3"])],
)
def test_pinned_gpus_read_cuda_visible_devices_as_cuda_does(
    visible: str | None, pinned: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert pinned_gpus() == pinned


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_worker_pinned_to_a_gpu_cuda_cannot_use_fails_its_job_saying_why(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SIMULATED_GPUS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(JobError, match=r"pinned to GPU 3 \(CUDA_VISIBLE_DEVICES\)"):
        worker_device()
    job = _job({"preset": "vp-E", "budget": "tiny"}, [{"name": "fd_raw"}])
    task = Task.evaluation(job, "t")
    if kind == "train":
        task = Task("train", task.training_key or "", job, "t")
    row = run_job(task, Store(tmp_path))
    assert row["status"] == "failed" and row["error_type"] == "JobError"
    assert "does not fall back to the CPU" in row["error"] and "CPU-only build" in row["error"]
    assert row["device"] == "cuda unusable (GPU 3)" and "nfe" not in row


def test_the_device_column_names_the_device_the_tensors_were_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert describe_device() == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert describe_device() == "cpu (simulated GPU 1)"  # the suite simulates GPUs (conftest)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    assert describe_device() == "cuda:0 (NVIDIA H200, GPU 1)"
