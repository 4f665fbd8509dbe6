"""Paper-scale datasets read from local paths the user names; nothing is ever downloaded.

Every loader returns ``(images, labels)``: ``images`` is uint8 ``[N, C, H, W]`` with C = 1 or 3,
``labels`` is int64 ``[N]`` or ``None``. A missing or malformed input raises
:class:`~edmgrid.errors.DataError` naming the path and what was expected.

Formats:

* ``cifar10``: the CIFAR-10 *python version*, ``cifar-10-python.tar.gz`` or its extracted
  ``cifar-10-batches-py/`` folder (training split: ``data_batch_1`` … ``_5``, 50,000 images).
* ``image_folder``: PNG/JPEG files found recursively (sorted by relative path), all the same size
  and mode; labels from a ``dataset.json`` at the folder root if present.
* ``npz``: an ``.npz`` with ``images`` (uint8, NHWC or NCHW) and optional ``labels``.
* ``edm_zip``: the official EDM dataset zip (``dataset_tool.py`` output): image files plus
  ``dataset.json`` with ``{"labels": [[fname, label], ...]}`` or ``{"labels": null}``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from edmgrid.errors import DataError

Dataset = tuple[np.ndarray, np.ndarray | None]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_EXPECTED = (
    "provide cifar-10-python.tar.gz (python version) or its extracted cifar-10-batches-py/ folder"
)

# The CIFAR-10 batches are pickles of a dict of bytes, lists and one numpy array; these are the
# only globals such a pickle needs (numpy 1.x and 2.x spellings), so nothing else may be built.
_CIFAR10_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR10_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(f: IO[bytes], where: str) -> Dataset:
    """One CIFAR-10 batch pickle -> ([n, 3, 32, 32] uint8, [n] int64).

    This is the one place edmgrid's dataset loaders read a pickle, and only from a path the user
    named. It is read as in the CIFAR-10 instructions (``encoding="bytes"``) but with an unpickler
    that refuses every global other than the few a numpy array needs.
    """
    try:
        batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{where}: not a CIFAR-10 python batch pickle ({e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where}: expected a dict with keys b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{where}: b'data' must be uint8 [n, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: b'labels' must be {data.shape[0]} integers")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_from_folder(folder: Path) -> list[Dataset]:
    batches = []
    for name in CIFAR10_BATCHES:
        file = folder / name
        if not file.is_file():
            raise DataError(f"CIFAR-10 batch {file} is missing: {_CIFAR10_EXPECTED}")
        with file.open("rb") as f:
            batches.append(_read_cifar_batch(f, str(file)))
    return batches


def _cifar_from_archive(archive: Path) -> list[Dataset]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            batches = []
            for name in CIFAR10_BATCHES:
                member = members.get(name)
                f = tar.extractfile(member) if member is not None else None
                if member is None or f is None:
                    raise DataError(
                        f"CIFAR-10 archive {archive} has no {name}: {_CIFAR10_EXPECTED}"
                    )
                with f:
                    batches.append(_read_cifar_batch(f, f"{archive}:{member.name}"))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"CIFAR-10 archive {archive} is unreadable ({e}): {_CIFAR10_EXPECTED}"
        ) from e
    return batches


def load_cifar10(path: str | Path) -> Dataset:
    """CIFAR-10 training split (50,000 images [N, 3, 32, 32], labels 0-9) from a local path.

    ``path`` is ``cifar-10-python.tar.gz``, the extracted ``cifar-10-batches-py/`` folder, or a
    folder holding either of them.
    """
    p = Path(path).expanduser()
    if p.is_dir() and not (p / CIFAR10_BATCHES[0]).exists():
        for candidate in (p / "cifar-10-batches-py", p / "cifar-10-python.tar.gz"):
            if candidate.exists():
                p = candidate
                break
    if p.is_dir():
        batches = _cifar_from_folder(p)
    elif p.is_file():
        batches = _cifar_from_archive(p)
    else:
        raise DataError(f"CIFAR-10 not found at {path}: {_CIFAR10_EXPECTED}")
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"CIFAR-10 at {path}: labels must be in 0..9")
    return images, labels


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """One PNG/JPEG -> uint8 [C, H, W]; grayscale gives C=1, colour C=3."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("1", "L", "P", "RGB"):
                raise DataError(f"{where}: image mode {img.mode} is not 8-bit grayscale or RGB")
            arr = np.asarray(img.convert("L" if img.mode in ("1", "L") else "RGB"), np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: not a readable PNG/JPEG image ({e})") from e
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_all(
    names: Sequence[str], read: Callable[[str], bytes], where: Callable[[str], str]
) -> np.ndarray:
    """Decode every image into one preallocated [N, C, H, W] array; all must match the first."""
    out: np.ndarray | None = None
    for i, name in enumerate(names):
        img = _decode_image(read(name), where(name))
        if out is None:
            out = np.empty((len(names), *img.shape), dtype=np.uint8)
        elif img.shape != out.shape[1:]:
            raise DataError(
                f"{where(name)}: image is {_describe(img.shape)} but {where(names[0])} is "
                f"{_describe(out.shape[1:])}; all images must have the same size and channels"
            )
        out[i] = img
    assert out is not None
    return out


def _describe(chw: tuple[int, ...]) -> str:
    c, h, w = chw
    return f"{w}x{h} {'grayscale' if c == 1 else 'RGB'}"


def _labels_from_json(raw: bytes, names: Sequence[str], where: str) -> np.ndarray | None:
    """Integer labels from an EDM-style ``dataset.json``, in the order of ``names``."""
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or "labels" not in doc:
        raise DataError(
            f'{where}: expected {{"labels": [[fname, label], ...]}} or {{"labels": null}}'
        )
    if doc["labels"] is None:
        return None
    try:
        table = {str(fname): label for fname, label in doc["labels"]}
    except (TypeError, ValueError) as e:
        raise DataError(f'{where}: "labels" must be a list of [fname, label] pairs') from e
    labels = []
    for name in names:
        if name not in table:
            raise DataError(f"{where}: no label for image {name}")
        label = table[name]
        if not isinstance(label, int) or isinstance(label, bool):
            raise DataError(f"{where}: label of {name} is {label!r}; expected an integer class")
        labels.append(label)
    return np.asarray(labels, dtype=np.int64)


class ImageFiles:
    """Random access to the images of an image folder or an EDM zip, decoded one at a time:
    what a streamed data set reads (in ``DataLoader`` workers: each process opens its own zip,
    as a forked one shares its parent's file offset)."""

    def __init__(self, kind: str, path: Path, names: list[str], labels: np.ndarray | None):
        self.kind, self.path, self.names, self.labels = kind, path, names, labels
        self._zip: zipfile.ZipFile | None = None
        self._pid = 0

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zip": None}

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.kind == "zip" else str(self.path / name)

    def read(self, name: str) -> bytes:
        if self.kind == "folder":
            return (self.path / name).read_bytes()
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.read(name)

    def image(self, i: int) -> np.ndarray:
        """Image ``i``, uint8 [C, H, W]."""
        return _decode_image(self.read(self.names[i]), self.where(self.names[i]))

    def decode_all(self) -> np.ndarray:
        return _decode_all(self.names, self.read, self.where)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def image_folder_files(path: str | Path) -> ImageFiles:
    """The PNG/JPEG files under ``path`` (recursive, sorted), labels from its ``dataset.json``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found at {path}: provide a folder of PNG/JPEG images")
    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise DataError(f"image folder {path} holds no .png/.jpg/.jpeg files")
    meta = root / "dataset.json"
    labels = _labels_from_json(meta.read_bytes(), names, str(meta)) if meta.is_file() else None
    return ImageFiles("folder", root, names, labels)


def load_image_folder(path: str | Path) -> Dataset:
    """All PNG/JPEG files under ``path`` (recursive, sorted), labels from its ``dataset.json``."""
    files = image_folder_files(path)
    return files.decode_all(), files.labels


def edm_zip_files(path: str | Path) -> ImageFiles:
    """The images of an official EDM dataset zip (sorted by name), labels from its
    ``dataset.json``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"EDM dataset zip not found at {path}: provide the zip made by dataset_tool.py"
        )
    try:
        with zipfile.ZipFile(p) as zf:
            all_names = set(zf.namelist())
            names = sorted(n for n in all_names if n.lower().endswith(IMAGE_SUFFIXES))
            if not names:
                raise DataError(f"EDM dataset zip {path} holds no .png/.jpg/.jpeg files")
            labels = None
            if "dataset.json" in all_names:
                labels = _labels_from_json(zf.read("dataset.json"), names, f"{path}:dataset.json")
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip ({e}): expected an EDM dataset zip") from e
    return ImageFiles("zip", p, names, labels)


def load_edm_zip(path: str | Path) -> Dataset:
    """The official EDM dataset zip: images (sorted by name), labels from ``dataset.json``."""
    files = edm_zip_files(path)
    try:
        return files.decode_all(), files.labels
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip ({e}): expected an EDM dataset zip") from e
    finally:
        files.close()


def load_npz(path: str | Path) -> Dataset:
    """An ``.npz`` with ``images`` (uint8 NHWC or NCHW, C = 1 or 3) and optional ``labels``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"npz dataset not found at {path}: provide an .npz with an 'images' array")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(
                    f"{path}: no 'images' array (has {', '.join(z.files) or 'nothing'})"
                )
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from e
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(
            f"{path}: 'images' must be uint8 [N, H, W, C] or [N, C, H, W], "
            f"got {images.dtype} {list(images.shape)}"
        )
    chw, hwc = images.shape[1] in (1, 3), images.shape[3] in (1, 3)
    if chw == hwc:
        raise DataError(
            f"{path}: cannot tell NCHW from NHWC for 'images' of shape "
            f"{list(images.shape)}; exactly one of dims 1 and 3 must be 1 or 3"
        )
    if hwc:
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if labels is not None:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{path}: 'labels' must be {len(images)} integers, "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        labels = labels.astype(np.int64)
    return images, labels


LOADERS: dict[str, Callable[[str | Path], Dataset]] = {
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
    "npz": load_npz,
    "edm_zip": load_edm_zip,
}


#: The formats that can stream (one file per image): random access to their images.
STREAMERS: dict[str, Callable[[str | Path], ImageFiles]] = {
    "image_folder": image_folder_files,
    "edm_zip": edm_zip_files,
}


def load_dataset_file(kind: str, path: str | Path) -> Dataset:
    """Dispatch to the loader of ``kind`` (one of :data:`LOADERS`)."""
    if kind not in LOADERS:
        raise DataError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(LOADERS)}")
    return LOADERS[kind](path)
