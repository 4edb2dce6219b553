"""Datasets: Fashion-MNIST (headline), MNIST and CIFAR-10, as uint8 tensors in memory.

Each loader looks in ``data_dir``, then ``$RBL_DATA_DIR``, then the Debian dataset folder,
and only then tries torchvision's download. Images stay uint8 until they are used so
that the sha256 of an evaluation subset is exact and cheap.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .paths import cache_dir


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    debian_dir: str
    install_hint: str


DATASETS: dict[str, DatasetInfo] = {
    "fmnist": DatasetInfo(
        "fmnist", 10, 1, 28, (0.2860,), (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "/usr/share/datasets/fashion-mnist",
        "install it with `apt-get update && apt-get install -y dataset-fashion-mnist` (as root), "
        "or put the four IDX .gz files in a folder and pass --data-dir or set RBL_DATA_DIR",
    ),
    "mnist": DatasetInfo(
        "mnist", 10, 1, 28, (0.1307,), (0.3081,), tuple(str(i) for i in range(10)),
        "/usr/share/datasets/mnist",
        "put the four MNIST IDX .gz files in a folder and pass --data-dir or set RBL_DATA_DIR",
    ),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "/usr/share/datasets/cifar-10",
        "put the CIFAR-10 binary version (cifar-10-batches-bin) in a folder and pass --data-dir or set RBL_DATA_DIR",
    ),
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_TORCHVISION_DIRS = {"fmnist": "FashionMNIST/raw", "mnist": "MNIST/raw", "cifar10": "cifar-10-batches-bin"}
_CIFAR_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


class DatasetNotFoundError(FileNotFoundError):
    pass


@dataclass(frozen=True, eq=False)
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64 of one dataset split."""

    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def first(self, n: int) -> "Split":
        """The evaluation subset: the first ``n`` points in the file's fixed order."""
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if n > len(self):
            raise ValueError(f"n={n} exceeds the {len(self)} points of {self.dataset}/{self.split}")
        return Split(self.dataset, self.split, self.images[:n], self.labels[:n])

    def last(self, n: int) -> "Split":
        """Calibration points: the last ``n``, disjoint from any ``first`` subset of a different split."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= len(self):
            raise ValueError(f"n must be an integer in [1, {len(self)}], got {n!r}")
        return Split(self.dataset, self.split, self.images[-n:], self.labels[-n:])

    def floats(self) -> torch.Tensor:
        """The images in [0, 1], float32, on the split's device."""
        return self.images.float().div_(255.0)

    def to(self, device: torch.device | str) -> "Split":
        """The same split with its tensors on ``device`` (itself where they are there already):
        what is computed from it then follows it there."""
        if self.images.device == torch.device(device) and self.labels.device == torch.device(device):
            return self
        return Split(self.dataset, self.split, self.images.to(device), self.labels.to(device))

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.dataset}/{self.split}/{tuple(self.images.shape)}".encode())
        h.update(self.images.contiguous().cpu().numpy().tobytes())
        h.update(self.labels.cpu().numpy().astype("<i8").tobytes())
        return h.hexdigest()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain) as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (used by tests and the download path)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _candidates(info: DatasetInfo, data_dir: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get("RBL_DATA_DIR"):
        dirs.append(Path(os.environ["RBL_DATA_DIR"]))
    dirs.append(Path(info.debian_dir))
    dirs.append(cache_dir() / "data" / info.name)
    # Users point at the parent folder too: accept <dir>/<name>/ and torchvision's own layout.
    return [c for d in dirs for c in (d, d / info.name, d / _TORCHVISION_DIRS[info.name])]


def _find(info: DatasetInfo, split: str, data_dir: str | os.PathLike | None) -> list[Path] | None:
    names = _CIFAR_FILES[split] if info.name == "cifar10" else list(_IDX_FILES[split])
    for d in _candidates(info, data_dir):
        paths = [d / n for n in names]
        if all(p.is_file() for p in paths):
            return paths
    return None


def _download(info: DatasetInfo) -> None:
    """Fetch through torchvision into the cache and convert to the on-disk formats read above."""
    import torchvision.datasets as tvd

    root = cache_dir() / "data" / info.name
    tmp = root.with_name(root.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    cls = {"fmnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[info.name]
    for split in ("train", "test"):
        ds = cls(str(tmp / "tv"), train=split == "train", download=True)
        images = np.asarray(ds.data, dtype=np.uint8)
        labels = np.asarray(ds.targets, dtype=np.uint8)
        if info.name == "cifar10":
            rows = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(len(labels), -1)], axis=1)
            for fname, chunk in zip(_CIFAR_FILES[split], np.array_split(rows, len(_CIFAR_FILES[split]))):
                chunk.tofile(tmp / fname)
        else:
            img_name, lab_name = _IDX_FILES[split]
            write_idx(tmp / img_name, images)
            write_idx(tmp / lab_name, labels)
    shutil.rmtree(tmp / "tv", ignore_errors=True)
    if root.exists():  # a concurrent download finished first; keep its copy
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, root)


def _read(info: DatasetInfo, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    if info.name == "cifar10":
        rows = np.concatenate([np.fromfile(p, dtype=np.uint8).reshape(-1, 3073) for p in paths])
        return rows[:, 1:].reshape(-1, 3, 32, 32), rows[:, 0].astype(np.int64)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]}: unexpected shapes {images.shape} and {labels.shape}")
    return images[:, None], labels.astype(np.int64)


def load(
    name: str,
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
) -> Split:
    """Load one split of a dataset as uint8 tensors.

    Args:
        name: ``fmnist``, ``mnist`` or ``cifar10``.
        split: ``train`` or ``test``.
        data_dir: folder searched first. Then ``$RBL_DATA_DIR``, the Debian folder and the cache.
        download: try torchvision's download when nothing is found locally. Defaults to
            True unless ``RBL_NO_DOWNLOAD=1`` is set (the test suite sets it).

    Returns:
        A :class:`Split`.

    Raises:
        DatasetNotFoundError: nothing found and the download failed or was disabled,
            with the command that installs the data.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if split not in _IDX_FILES:
        raise ValueError(f"unknown split {split!r}; allowed: train, test")
    info = DATASETS[name]
    paths = _find(info, split, data_dir)
    if paths is None:
        if download is None:
            download = os.environ.get("RBL_NO_DOWNLOAD", "") not in ("1", "true", "yes")
        error = "download disabled (RBL_NO_DOWNLOAD=1)"
        if download:
            try:
                _download(info)
            except Exception as exc:  # any network/IO failure ends in the same actionable message
                error = f"torchvision download failed: {type(exc).__name__}: {exc}"
            paths = _find(info, split, data_dir)
        if paths is None:
            searched = ", ".join(str(p) for p in _candidates(info, data_dir)[::3])
            raise DatasetNotFoundError(
                f"dataset {name!r} ({split}) not found in {searched}; {error}. To get it, {info.install_hint}."
            )
    images, labels = _read(info, paths)
    return Split(name, split, torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))
