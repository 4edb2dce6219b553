"""Shared fixtures. Tests never touch the network and never read the user's cache or store."""
from __future__ import annotations

import functools
import os
import tempfile

import pytest
import torch

# Set before any robustbench_lite import reads them.
os.environ["RBL_CACHE_DIR"] = tempfile.mkdtemp(prefix="rbl-test-cache-")
os.environ["RBL_STORE"] = os.path.join(os.environ["RBL_CACHE_DIR"], "results.sqlite")
os.environ["RBL_NO_DOWNLOAD"] = "1"
os.environ.pop("RBL_DATA_DIR", None)

from robustbench_lite import data, engine, zoo  # noqa: E402
from robustbench_lite.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="session")
def fmnist_test() -> data.Split:
    return data.load("fmnist", "test")


@pytest.fixture(scope="session")
def trained() -> zoo.LoadedModel:
    """A small CNN trained for a few seconds on 10k Fashion-MNIST images (about 85% clean)."""
    name = "smallcnn-fmnist-standard"
    if not zoo.is_trained(name):
        train(TrainConfig(arch="smallcnn", epochs=2, train_subset=10000, seed=0))
    return zoo.load(name)


@pytest.fixture(scope="session")
def batch(fmnist_test: data.Split) -> tuple[torch.Tensor, torch.Tensor]:
    sub = fmnist_test.first(200)
    return sub.floats(), sub.labels


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# The gradient-masking checks have their own tests (test_checks.py); everywhere else they
# would only multiply the time of each evaluation.
evaluate = functools.partial(engine.evaluate, checks=None)
