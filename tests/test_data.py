from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from robustbench_lite import data


def _write_fake(folder, n_train=30, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        img_name, lab_name = data._IDX_FILES[split]
        data.write_idx(folder / img_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / lab_name, rng.integers(0, 10, n, dtype=np.uint8))
    return folder


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data.write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), arr)


def test_corrupt_idx_is_rejected(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"short")
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "magic.gz", "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        data.read_idx(tmp_path / "magic.gz")


def test_search_order_prefers_data_dir_then_env(tmp_path, monkeypatch):
    a = _write_fake(tmp_path / "a", n_test=20)
    b = _write_fake(tmp_path / "b", n_test=25)
    monkeypatch.setenv("RBL_DATA_DIR", str(b))
    assert len(data.load("mnist", "test", data_dir=a)) == 20
    assert len(data.load("mnist", "test")) == 25
    assert len(data.load("mnist", "train")) == 30


def test_real_fashion_mnist_is_found_and_fixed(fmnist_test):
    assert len(fmnist_test) == 10000 and fmnist_test.images.shape == (10000, 1, 28, 28)
    assert fmnist_test.labels[:5].tolist() == [9, 2, 1, 1, 6]
    x = fmnist_test.first(3).floats()
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_subset_hash_is_stable_and_sensitive(fmnist_test):
    h = fmnist_test.first(100).sha256()
    assert h == fmnist_test.first(100).sha256()
    assert h != fmnist_test.first(101).sha256()
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        fmnist_test.first(0)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RBL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(data.DatasetNotFoundError, match=r"'mnist' \(test\) not found.*download disabled.*MNIST IDX"):
        data.load("mnist", "test", data_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; allowed: fmnist, mnist, cifar10"):
        data.load("svhn")


def test_download_fallback_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeTV:
        def __init__(self, root, train, download):
            calls.append((train, download))
            n = 12 if train else 7
            self.data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8)
            self.targets = torch.randint(0, 10, (n,))

    monkeypatch.setattr(tvd, "MNIST", FakeTV)
    monkeypatch.setenv("RBL_CACHE_DIR", str(tmp_path / "cache"))
    split = data.load("mnist", "test", data_dir=tmp_path / "empty", download=True)
    assert len(split) == 7 and calls == [(True, True), (False, True)]
    assert len(data.load("mnist", "train", download=False)) == 12  # cached, read without the network


def test_failed_download_reports_cause_and_remedy(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd, "MNIST", offline)
    monkeypatch.setenv("RBL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(data.DatasetNotFoundError, match="download failed: OSError: network is unreachable"):
        data.load("mnist", "test", data_dir=tmp_path / "empty", download=True)
    assert not (tmp_path / "cache" / "data" / "mnist").exists()


def test_cifar_binary_format(tmp_path):
    rows = np.zeros((4, 3073), dtype=np.uint8)
    rows[:, 0] = [3, 1, 4, 1]
    rows[:, 1:] = 200
    for name in data._CIFAR_FILES["test"]:
        rows.tofile(tmp_path / name)
    split = data.load("cifar10", "test", data_dir=tmp_path)
    assert split.images.shape == (4, 3, 32, 32) and split.labels.tolist() == [3, 1, 4, 1]


def test_torchvision_layout_is_matched_per_dataset(tmp_path):
    _write_fake(tmp_path / "MNIST" / "raw", n_test=9)
    assert len(data.load("mnist", "test", data_dir=tmp_path, download=False)) == 9
    # Fashion-MNIST must never pick up MNIST's files from a shared torchvision root
    fm = [str(c) for c in data._candidates(data.DATASETS["fmnist"], tmp_path)]
    assert str(tmp_path / "FashionMNIST" / "raw") in fm
    assert not any(c.endswith("/MNIST/raw") for c in fm)
