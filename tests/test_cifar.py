"""CIFAR-10's standard protocols (L-inf 8/255, L2 0.5) as profiles, and the cifar10-quick profile
trained and evaluated end to end on a CIFAR-format folder this test writes (the binary version's
layout: data_batch_1..5 and test_batch, rows of a label byte and 3072 pixel bytes)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from robustbench_lite import data, profiles
from robustbench_lite.store import Store
from robustbench_lite.train import TrainConfig


def write_cifar(root: Path, n_train: int = 1000, n_test: int = 500, seed: int = 0) -> Path:
    """A learnable stand-in for CIFAR-10: each class a colour and a stripe direction, with noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    colour = rng.integers(40, 215, (10, 3))  # one per class, in both splits
    yy, xx = np.mgrid[:32, :32]
    stripes = [((yy + xx * (c % 3 - 1)) // (2 + c % 4)) % 2 for c in range(10)]

    def rows(n: int) -> np.ndarray:
        labels = rng.integers(0, 10, n)
        images = np.empty((n, 3, 32, 32), np.float64)
        for i, c in enumerate(labels):
            images[i] = colour[c][:, None, None] + 40 * stripes[c][None] + rng.normal(0, 25, (3, 32, 32))
        pixels = images.clip(0, 255).astype(np.uint8).reshape(n, -1)
        return np.concatenate([labels[:, None].astype(np.uint8), pixels], 1)

    for i, chunk in enumerate(np.array_split(rows(n_train), 5), 1):
        chunk.tofile(root / f"data_batch_{i}.bin")
    rows(n_test).tofile(root / "test_batch.bin")
    return root


def test_the_cifar10_profiles_hold_its_standard_protocols():
    linf, l2 = profiles.get("cifar10"), profiles.get("cifar10-l2")
    assert (linf.norm, linf.headline, l2.norm, l2.headline) == ("linf", 8 / 255, "l2", 0.5)
    assert 8 / 255 in linf.eps and 0.5 in l2.eps
    assert all(m.split("-")[1] == "cifar10" for p in ("cifar10", "cifar10-l2", "cifar10-quick") for m in profiles.get(p).models)
    # Adversarial recipes train at the dataset's standard eps unless told; Fashion-MNIST's stays 0.1.
    assert dict(TrainConfig(arch="test_resnet", dataset="cifar10", recipe="fast_at").resolved().recipe_kw) == {"eps": 8 / 255}
    assert TrainConfig(arch="test_resnet", recipe="fast_at").resolved().recipe_kw == ()
    assert dict(TrainConfig(arch="test_resnet", dataset="cifar10", recipe="pgd_at",
                            recipe_kw=(("eps", 0.05),)).resolved().recipe_kw) == {"eps": 0.05}


@pytest.mark.slow
def test_cifar10_quick_trains_small_timm_models_and_ranks_them_at_8_255(tmp_path):
    folder = write_cifar(tmp_path / "cifar")
    assert len(data.load("cifar10", "train", data_dir=folder)) == 1000
    # Its ResNet pair, at 0 and the headline eps, on 200 of the 500 test points: the profile as it runs, smaller.
    profile = dataclasses.replace(profiles.get("cifar10-quick").select(models=["test_resnet-*"], eps=[0.0, 8 / 255]), n=200)
    with Store(tmp_path / "s.sqlite") as store:
        results = profiles.run(profile, store, data_dir=str(folder))
        cards = {c.name: c for c in store.cards()}
        written = profiles.write_reports(store, tmp_path / "reports", headline_eps=profile.headline)
    assert cards["test_resnet-cifar10-fast_at"].hyperparameters["recipe"]["eps"] == 8 / 255
    worst = {(r.model, r.eps): r for r in results if r.combined_from}
    for model in profile.models:
        clean, robust = worst[(model, 0.0)], worst[(model, 8 / 255)]
        assert clean.clean_acc > 0.5, (model, clean.clean_acc)  # the stand-in is learnable
        assert robust.robust_acc <= clean.robust_acc
    board = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "cifar10" in board and any(p.name == "leaderboard.md" for p in written)
