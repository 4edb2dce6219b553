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
# Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread:
# the tiny models here gain little from intra-op threads, and two workers with two threads each
# would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
# The seed of every fixture the suite trains. Another CPU trains other weights from the same seed;
# RBL_TEST_SEED=1 (2, 3, ...) runs the suite on fixtures trained from other seeds, which is how the
# margins of its statistical assertions are checked (README, "Tests").
SEED = int(os.environ.get("RBL_TEST_SEED", "0"))

from robustbench_lite import data, engine, zoo  # noqa: E402
from robustbench_lite.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="session")
def fmnist_test() -> data.Split:
    return data.load("fmnist", "test")


@pytest.fixture(scope="session")
def trained() -> zoo.LoadedModel:
    """A small CNN trained for a few seconds on 10k Fashion-MNIST images."""
    name = "smallcnn-fmnist-standard"
    if not zoo.is_trained(name):
        train(TrainConfig(arch="smallcnn", epochs=2, train_subset=10000, seed=SEED))
    return zoo.load(name)


@pytest.fixture(scope="session")
def batch(fmnist_test: data.Split) -> tuple[torch.Tensor, torch.Tensor]:
    sub = fmnist_test.first(200)
    return sub.floats(), sub.labels


def _device_params() -> list:
    """Every device type, each skipped with the reason where this machine lacks it: the CPU always
    runs, CUDA and MPS where they are present (tests never require them)."""
    from robustbench_lite import devices

    here = devices.available()
    return [pytest.param(d, id=d, marks=[] if d in here else [pytest.mark.skip(reason=f"no {d} here: {devices.found()}")])
            for d in ("cpu", "cuda", "mps")]


DEVICES = _device_params()


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device present (a test taking it runs once per device; see ``DEVICES``)."""
    return torch.device(request.param)


def on(device: torch.device, model: torch.nn.Module, *tensors: torch.Tensor) -> tuple:
    """``model`` (a copy, when it must move) and ``tensors`` on ``device``."""
    import copy

    from robustbench_lite import devices

    moved = model if devices.of(model) == device else copy.deepcopy(model).to(device)
    return (moved, *(t.to(device) for t in tensors))


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# The gradient-masking checks have their own tests (test_checks.py); everywhere else they
# would only multiply the time of each evaluation.
evaluate = functools.partial(engine.evaluate, checks=None)


@pytest.fixture(scope="session")
def generative_zoo() -> dict[str, str]:
    """Tiny generative models under the default cache names the purifiers use (dae-fmnist,
    vae-fmnist, gan-fmnist), trained for seconds on 5000 images: {kind: name}."""
    from robustbench_lite.generative import base as generative

    out = {}
    for kind, kw in (("dae", {"epochs": 3}), ("vae", {"epochs": 3}), ("gan", {"epochs": 2, "width": 16})):
        name = generative.generative_name(kind, "fmnist")
        if not (generative.checkpoint_dir(name) / "card.json").is_file():
            generative.train(kind, "fmnist", train_subset=5000, test_n=500, classifier=None, seed=SEED, **kw)
        out[kind] = name
    return out
