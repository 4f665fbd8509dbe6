"""The file data sets as ``data:`` choices: through JobSpec, through a job, and ``--data``."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from edmgrid.config.job import JobSpec
from edmgrid.config.space import load_space
from edmgrid.engine.data import load_data
from edmgrid.errors import DataError, InputError
from edmgrid.run.jobs import Task, run_job
from edmgrid.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def _pixels(n: int = 6, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NCHW RGB images covering 0 and 255, and labels 0..n−1 (so label_dim = n)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    images[0, 0, 0, :2] = [0, 255]
    return images, np.arange(n, dtype=np.int64)


def _cifar10(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The python-version layout, ``data_batch_1`` … ``_5``, images split over the batches."""
    root = folder / "cifar-10-batches-py"
    root.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(images)), 5)):
        batch = {b"data": images[part].reshape(len(part), -1), b"labels": labels[part].tolist()}
        (root / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    return root


def _png(image: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(image.transpose(1, 2, 0))


def _image_folder(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    root = folder / "images"
    root.mkdir()
    names = [f"{i:03d}.png" for i in range(len(images))]
    for name, image in zip(names, images, strict=True):
        _png(image).save(root / name)
    pairs = [[n, int(c)] for n, c in zip(names, labels, strict=True)]
    (root / "dataset.json").write_text(json.dumps({"labels": pairs}))
    return root


def _npz(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path = folder / "images.npz"
    np.savez(path, images=images.transpose(0, 2, 3, 1), labels=labels)
    return path


def _edm_zip(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path = folder / "dataset.zip"
    with zipfile.ZipFile(path, "w") as zf:
        pairs = []
        for i, image in enumerate(images):
            name = f"00000/img{i:08d}.png"
            with zf.open(name, "w") as f:
                _png(image).save(f, format="png")
            pairs.append([name, int(labels[i])])
        zf.writestr("dataset.json", json.dumps({"labels": pairs}))
    return path


WRITERS: dict[str, Callable[[Path, np.ndarray, np.ndarray], Path]] = {
    "cifar10": _cifar10,
    "image_folder": _image_folder,
    "npz": _npz,
    "edm_zip": _edm_zip,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_file_data_choice_loads_through_jobspec_as_official_normalisation(
    name: str, tmp_path: Path
) -> None:
    images, labels = _pixels()
    path = WRITERS[name](tmp_path, images, labels)
    job = JobSpec.model_validate(
        {"data": {"name": name, "path": str(path)}, "metrics": [{"name": "fd_raw"}]}
    )
    dataset = load_data(job.data)
    assert dataset.x.dtype == torch.float32 and dataset.sample_shape == (3, 32, 32)
    want = torch.from_numpy(images).double() / 127.5 - 1  # official: x / 127.5 − 1
    torch.testing.assert_close(dataset.x.double(), want, rtol=0, atol=1e-7)
    assert dataset.x.min() == -1 and dataset.x.max() == 1
    assert dataset.labels is not None and dataset.labels.tolist() == labels.tolist()
    assert dataset.label_dim == len(labels)


def test_npz_without_labels_is_unconditional(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, images=_pixels()[0])
    dataset = load_data(
        JobSpec.model_validate(
            {"data": {"name": "npz", "path": str(path)}, "metrics": [{"name": "fd_raw"}]}
        ).data
    )
    assert dataset.labels is None and dataset.label_dim == 0


def test_file_data_needs_a_path_at_validation() -> None:
    with pytest.raises(ValueError, match="path"):
        JobSpec.model_validate({"data": {"name": "cifar10"}, "metrics": [{"name": "fd_raw"}]})


def test_job_on_npz_data_runs_and_a_missing_file_fails_the_job_with_the_path(
    tmp_path: Path,
) -> None:
    images, labels = _pixels(n=4, size=4)
    path = _npz(tmp_path, images, labels)
    store = Store(tmp_path / "results")
    config = {
        "data": {"name": "npz", "path": str(path)},
        "sampler": {"timesteps": {"name": "edm", "num_steps": 4}},
        "metrics": [{"name": "fd_raw"}],
        "seeds": "0-7",
    }
    row = run_job(Task.evaluation(JobSpec.model_validate(config), "t"), store)
    assert row["status"] == "done" and row["fd_raw"] >= 0 and row["data_path"] == str(path)
    config["data"] = {"name": "cifar10", "path": str(tmp_path / "nowhere")}
    row = run_job(Task.evaluation(JobSpec.model_validate(config), "t"), store)
    assert row["status"] == "failed" and row["error_type"] == "DataError"
    assert "CIFAR-10 not found at" in row["error"] and "nowhere" in row["error"]
    assert "cifar-10-python.tar.gz" in row["error"]
    with pytest.raises(DataError, match="npz dataset not found"):
        load_data(
            JobSpec.model_validate(
                {**config, "data": {"name": "npz", "path": str(tmp_path / "gone.npz")}}
            ).data
        )


def test_data_override_sets_the_path_of_every_job(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(
        "name: s\nbase:\n  data: {name: npz}\n  metrics: [{name: fd_raw}]\n"
        "grid:\n  seeds: [0-3, 0-7]\n"
    )
    with pytest.raises(InputError, match=r"data\.path: Field required"):
        load_space(space)
    loaded = load_space(space, overrides={"data.path": "/data/x.npz"})
    assert [j.data.model_dump() for j in loaded.jobs] == [
        {"name": "npz", "path": "/data/x.npz"}
    ] * 2
