"""Dataset loaders on tiny fixtures written in each real on-disk format."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from edmgrid.engine.datafiles import (
    load_cifar10,
    load_dataset_file,
    load_edm_zip,
    load_image_folder,
    load_npz,
)
from edmgrid.errors import DataError

PER_BATCH = 3


def _cifar_batches(seed: int = 0) -> dict[str, dict[bytes, object]]:
    rng = np.random.default_rng(seed)
    return {
        f"data_batch_{i}": {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, PER_BATCH)],
            b"filenames": [f"img{i}_{j}.png".encode() for j in range(PER_BATCH)],
        }
        for i in range(1, 6)
    }


@pytest.fixture
def cifar_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, batch in _cifar_batches().items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batches(1)["data_batch_1"]))
    return folder


@pytest.fixture
def cifar_archive(cifar_folder: Path) -> Path:
    archive = cifar_folder.parent / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_folder, arcname="cifar-10-batches-py")
    return archive


def _expected_cifar() -> tuple[np.ndarray, np.ndarray]:
    batches = list(_cifar_batches().values())
    data = np.concatenate([b[b"data"] for b in batches])
    labels = np.concatenate([b[b"labels"] for b in batches])
    return data.reshape(-1, 3, 32, 32), labels


def test_cifar10_folder_gives_training_split_in_batch_order_as_nchw(cifar_folder: Path) -> None:
    images, labels = load_cifar10(cifar_folder)
    want_images, want_labels = _expected_cifar()
    assert images.dtype == np.uint8 and images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert labels is not None and labels.dtype == np.int64
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    # Row layout: the first 1024 bytes of a row are the red plane, row-major.
    raw = _cifar_batches()["data_batch_1"][b"data"]
    np.testing.assert_array_equal(images[0, 0].reshape(-1), raw[0, :1024])  # type: ignore[index]


def test_cifar10_archive_and_parent_folder_match_extracted_folder(
    cifar_folder: Path, cifar_archive: Path
) -> None:
    want_images, want_labels = load_cifar10(cifar_folder)
    for path in (cifar_archive, str(cifar_archive)):
        images, labels = load_cifar10(path)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    images, _ = load_cifar10(cifar_folder.parent)
    np.testing.assert_array_equal(images, want_images)


def test_cifar10_missing_path_names_path_and_expected_files(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"CIFAR-10 not found at .*nowhere.*cifar-10-python\.tar\.gz"
    ):
        load_cifar10(tmp_path / "nowhere")


def test_cifar10_missing_batch_is_named(cifar_folder: Path) -> None:
    (cifar_folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4"):
        load_cifar10(cifar_folder)


def test_cifar10_garbage_archive_is_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="unreadable"):
        load_cifar10(bad)


def test_cifar10_batch_with_wrong_shape_is_data_error(cifar_folder: Path) -> None:
    batch = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (cifar_folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"data_batch_2.*uint8 \[n, 3072\]"):
        load_cifar10(cifar_folder)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_cifar10_pickle_with_foreign_objects_is_refused(cifar_folder: Path) -> None:
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil()}
    (cifar_folder / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"not a CIFAR-10 python batch.*builtins\.print"):
        load_cifar10(cifar_folder)


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(arr).save(path)


def _rgb(rng: np.random.Generator, h: int = 8, w: int = 6) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_folder_is_recursive_sorted_rgb_nchw_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"b.png": _rgb(rng), "a/z.png": _rgb(rng), "a/c.PNG": _rgb(rng)}
    for name, arr in arrays.items():
        _write_png(tmp_path / name, arr)
    (tmp_path / "notes.txt").write_text("ignored")
    labels_json = {"labels": [["b.png", 2], ["a/z.png", 1], ["a/c.PNG", 0]]}
    (tmp_path / "dataset.json").write_text(json.dumps(labels_json))
    images, labels = load_image_folder(tmp_path)
    order = ["a/c.PNG", "a/z.png", "b.png"]
    assert images.shape == (3, 3, 8, 6) and images.dtype == np.uint8
    for i, name in enumerate(order):
        np.testing.assert_array_equal(images[i], arrays[name].transpose(2, 0, 1))
    np.testing.assert_array_equal(labels, [0, 1, 2])
    assert labels is not None and labels.dtype == np.int64


def test_image_folder_grayscale_gives_one_channel_and_no_labels(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    _write_png(tmp_path / "0.png", gray)
    PIL.Image.fromarray(gray).save(tmp_path / "1.jpg", quality=100)
    images, labels = load_image_folder(tmp_path)
    assert images.shape == (2, 1, 6, 8) and labels is None
    np.testing.assert_array_equal(images[0, 0], gray)


def test_image_folder_size_mismatch_names_offending_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_png(tmp_path / "a.png", _rgb(rng))
    _write_png(tmp_path / "b.png", _rgb(rng, h=9))
    with pytest.raises(DataError, match=r"b\.png: image is 6x9 RGB but .*a\.png is 6x8 RGB"):
        load_image_folder(tmp_path)


def test_image_folder_channel_mismatch_names_offending_file(tmp_path: Path) -> None:
    _write_png(tmp_path / "a.png", np.zeros((8, 6, 3), np.uint8))
    _write_png(tmp_path / "b.png", np.zeros((8, 6), np.uint8))
    with pytest.raises(DataError, match=r"b\.png: image is 6x8 grayscale"):
        load_image_folder(tmp_path)


def test_image_folder_malformed_inputs_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DataError, match=r"no \.png"):
        load_image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"broken\.png: not a readable PNG/JPEG"):
        load_image_folder(tmp_path)
    (tmp_path / "broken.png").unlink()
    PIL.Image.new("RGBA", (4, 4)).save(tmp_path / "alpha.png")
    with pytest.raises(DataError, match="mode RGBA"):
        load_image_folder(tmp_path)
    (tmp_path / "alpha.png").unlink()
    _write_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["other.png", 1]]}))
    with pytest.raises(DataError, match=r"no label for image x\.png"):
        load_image_folder(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_image_folder(tmp_path)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_nhwc_and_nchw_give_the_same_nchw_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (4, 3, 5, 7), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1], dtype=np.int32)
    a = _npz(tmp_path / "a.npz", images=nchw, labels=labels)
    b = _npz(tmp_path / "b.npz", images=nchw.transpose(0, 2, 3, 1))
    images_a, labels_a = load_npz(a)
    images_b, labels_b = load_npz(b)
    np.testing.assert_array_equal(images_a, nchw)
    np.testing.assert_array_equal(images_b, nchw)
    assert images_b.flags.c_contiguous and labels_b is None
    assert labels_a is not None and labels_a.dtype == np.int64
    np.testing.assert_array_equal(labels_a, labels)
    gray, _ = load_npz(_npz(tmp_path / "g.npz", images=np.zeros((2, 4, 4, 1), np.uint8)))
    assert gray.shape == (2, 1, 4, 4)


def test_npz_malformed_inputs_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="npz dataset not found"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="no 'images' array"):
        load_npz(_npz(tmp_path / "x.npz", x=np.zeros(3)))
    with pytest.raises(DataError, match="must be uint8"):
        load_npz(_npz(tmp_path / "f.npz", images=np.zeros((2, 3, 4, 4), np.float32)))
    with pytest.raises(DataError, match="cannot tell NCHW from NHWC"):
        load_npz(_npz(tmp_path / "amb.npz", images=np.zeros((2, 3, 4, 3), np.uint8)))
    one = np.ones(1, np.int64)
    with pytest.raises(DataError, match="'labels' must be 2 integers"):
        load_npz(_npz(tmp_path / "l.npz", images=np.zeros((2, 3, 4, 4), np.uint8), labels=one))
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_npz(tmp_path / "bad.npz")


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


def test_edm_zip_reads_images_and_labels_like_dataset_tool_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [_rgb(rng, 4, 4) for _ in range(3)]
    names = [f"00000/img{i:08d}.png" for i in range(3)]
    path = tmp_path / "cifar10-32x32.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in reversed(list(zip(names, arrays, strict=True))):
            zf.writestr(name, _png_bytes(arr))
        zf.writestr(
            "dataset.json", json.dumps({"labels": [[n, i + 5] for i, n in enumerate(names)]})
        )
    images, labels = load_edm_zip(path)
    np.testing.assert_array_equal(images, np.stack(arrays).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels, [5, 6, 7])


def test_edm_zip_null_labels_and_malformed_zips(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("00000/img00000000.png", _png_bytes(np.zeros((4, 4), np.uint8)))
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    images, labels = load_edm_zip(path)
    assert images.shape == (1, 1, 4, 4) and labels is None
    with pytest.raises(DataError, match="EDM dataset zip not found"):
        load_edm_zip(tmp_path / "missing.zip")
    (tmp_path / "bad.zip").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable zip"):
        load_edm_zip(tmp_path / "bad.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("dataset.json", "{}")
    with pytest.raises(DataError, match=r"holds no \.png"):
        load_edm_zip(tmp_path / "empty.zip")
    with zipfile.ZipFile(tmp_path / "vec.zip", "w") as zf:
        zf.writestr("a.png", _png_bytes(np.zeros((4, 4), np.uint8)))
        zf.writestr("dataset.json", json.dumps({"labels": [["a.png", [0.5, 0.5]]]}))
    with pytest.raises(DataError, match="expected an integer class"):
        load_edm_zip(tmp_path / "vec.zip")


def test_load_dataset_file_dispatches_and_rejects_unknown_kinds(tmp_path: Path) -> None:
    path = _npz(tmp_path / "a.npz", images=np.zeros((2, 1, 4, 4), np.uint8))
    images, _ = load_dataset_file("npz", path)
    assert images.shape == (2, 1, 4, 4)
    with pytest.raises(DataError, match=r"unknown dataset kind 'lmdb'.*cifar10"):
        load_dataset_file("lmdb", path)
