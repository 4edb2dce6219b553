"""Generative models (autoencoders, VAEs, GANs): the protocol the files in ``generative/``
implement, their training loop, and their checkpoints.

A trained generative model lives in the cache as ``generative/<kind>-<dataset>`` (e.g.
``vae-fmnist``): safetensors weights beside a JSON card that records the hyperparameters, the
training data's sha256, the training curves and the test metrics (reconstruction error, the
VAE's ELBO, and what a zoo classifier makes of reconstructions and samples). Purification
defenses and generator attacks name a model this way, or by a checkpoint folder.
"""
from __future__ import annotations

import datetime as dt
import functools
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import data as data_mod
from .. import devices, zoo
from ..fingerprint import model_fingerprint
from ..inference import predict
from ..paths import cache_dir
from ..provenance import versions
from ..registry import GENERATIVE
from ..rng import PointStreams
from ..validation import check_int, check_positive
from ..zoo.checkpoint import CARD, WEIGHTS, CheckpointError, file_sha256, load_into, read_card, read_state, save


class GenerativeModel(nn.Module, ABC):
    """Base class. Subclasses build their networks in ``__init__(channels, size, **hp)`` and
    take hyperparameters as keyword arguments with defaults (recorded in the card).

    Images are (N, C, H, W) in [0, 1] with H = W divisible by 4.
    """

    #: what the model can do: a subset of {"reconstruct", "sample", "encode"}
    abilities: frozenset[str] = frozenset()
    #: the learning rate and epochs :func:`train` uses when none is given
    default_lr: float = 1e-3
    default_epochs: int = 10

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        if size % 4:
            raise ValueError(f"{type(self).__name__}: image size must be divisible by 4, got {size}")
        self.channels, self.size = channels, size

    @abstractmethod
    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """The optimizers :meth:`train_step` expects, in order."""

    @abstractmethod
    def train_step(self, x: torch.Tensor, optimizers: list[torch.optim.Optimizer],
                   generator: torch.Generator) -> dict[str, float]:
        """One update on a batch; returns the losses to log."""

    @abstractmethod
    def metrics(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Test figures on held-out images (no gradient)."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot reconstruct")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot sample")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no encoder")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no decoder")

    def check_input(self, x: torch.Tensor) -> None:
        want = (self.channels, self.size, self.size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{type(self).__name__} was trained on images of shape {want}, got {tuple(x.shape)}")


@dataclass(frozen=True)
class GenerativeCard:
    """What identifies and describes a trained generative model."""

    name: str
    kind: str
    dataset: str
    hyperparameters: dict[str, Any]
    seed: int
    data_sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    train_seconds: float = 0.0
    curves: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class LoadedGenerative:
    name: str
    model: GenerativeModel
    card: GenerativeCard

    @property
    def weights_sha256(self) -> str:
        return self.card.weights_sha256

    @functools.cached_property
    def arch_sha256(self) -> str:
        """The network's architecture fingerprint (its modules, attributes and code)."""
        return model_fingerprint(self.model, type(self.model))[0]


class GenerativeNotTrainedError(FileNotFoundError):
    pass


def generative_name(kind: str, dataset: str) -> str:
    return f"{kind}-{dataset}"


def checkpoint_dir(name: str) -> Path:
    return cache_dir() / "generative" / name


def build(kind: str, dataset: str, **hp: Any) -> GenerativeModel:
    if dataset not in data_mod.DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(data_mod.DATASETS)}")
    info = data_mod.DATASETS[dataset]
    cls = GENERATIVE.get(kind).obj
    try:
        return cls(info.in_chans, info.img_size, **hp)
    except TypeError as exc:
        raise ValueError(f"bad hyperparameters {hp} for generative model {kind!r}: {exc}") from exc


def train(kind: str, dataset: str = "fmnist", *, epochs: int | None = None, batch_size: int = 128, lr: float | None = None,
          seed: int = 0, train_subset: int | None = None, test_n: int = 2000, classifier: str | None = "auto",
          out: Path | None = None, data_dir: str | None = None, progress: bool = False, store: Any | None = None,
          device: str | torch.device | None = "cpu", **hp: Any) -> LoadedGenerative:
    """Train a registered generative model and save it with its card.

    Args:
        kind: a registered name (``ae``, ``dae``, ``vae``, ``gan``).
        dataset: the training split of this dataset.
        epochs, batch_size, lr, seed: the loop's settings (epochs and lr default to the model's own).
        train_subset: the first N training images only (tests train for seconds).
        test_n: held-out test images the card's metrics are measured on.
        classifier: a zoo model that judges reconstructions and samples; ``auto`` picks
            ``smallcnn-<dataset>-standard`` when it is trained, None skips it.
        out: checkpoint folder (default: the cache entry ``<kind>-<dataset>``).
        store: a results store that receives the pictures the reports draw (reconstructions,
            samples, a latent interpolation) as a ``generative`` artifact.
        hp: the model's own hyperparameters.
    """

    model = build(kind, dataset, **hp)
    epochs = type(model).default_epochs if epochs is None else epochs
    lr = type(model).default_lr if lr is None else lr
    check_int("train-generative", "epochs", epochs, 1)
    check_int("train-generative", "batch_size", batch_size, 1)
    check_int("train-generative", "test_n", test_n, 1)
    check_positive("train-generative", "lr", lr)
    if train_subset is not None:
        check_int("train-generative", "train_subset", train_subset, 1)
    torch.manual_seed(seed)
    dev = devices.resolve(device)
    model = build(kind, dataset, **hp).to(dev)  # again, after seeding, so the initial weights are reproducible
    judge = None
    if classifier == "auto":
        auto = zoo.zoo_name("smallcnn", dataset, "standard")
        judge = zoo.load(auto) if zoo.is_trained(auto) else None
    elif classifier:
        judge = zoo.load_any(classifier)
    if judge is not None:
        judge.model.to(dev)
    train_split = data_mod.load(dataset, "train", data_dir=data_dir)
    if train_subset:
        train_split = train_split.first(min(train_subset, len(train_split)))
    test_split = data_mod.load(dataset, "test", data_dir=data_dir).first(test_n)
    x_all = train_split.floats().to(dev)
    gen = devices.generator(seed, dev)
    opts = model.optimizers(lr)
    curves: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=generative_name(kind, dataset), disable=not progress)
    for epoch in bar:
        model.train()
        sums: dict[str, float] = {}
        batches = torch.randperm(len(x_all), generator=gen, device=dev).split(batch_size)
        for idx in batches:
            for k, v in model.train_step(x_all[idx], opts, gen).items():
                sums[k] = sums.get(k, 0.0) + v
        row = {"epoch": epoch + 1, **{k: v / len(batches) for k, v in sums.items()}}
        if not all(math.isfinite(v) for v in row.values()):
            raise RuntimeError(f"training {kind} diverged at epoch {epoch + 1}: {row}")
        curves.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "epoch"})
    seconds = time.perf_counter() - start
    model.eval()
    metrics = evaluate(model, test_split, judge, seed)
    name = generative_name(kind, dataset)
    card = GenerativeCard(name=name, kind=kind, dataset=dataset,
                          hyperparameters={"epochs": epochs, "batch_size": batch_size, "lr": lr,
                                           "train_subset": train_subset, **model_hparams(model)},
                          seed=seed, data_sha256=train_split.sha256(), metrics=metrics,
                          created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                          versions=versions() | ({"device": dev.type} if dev.type != "cpu" else {}), train_seconds=round(seconds, 2), curves=curves)
    card = save(model.cpu(), card, Path(out or checkpoint_dir(name)))
    if store is not None:
        meta = {"model": name, "kind": kind, "dataset": dataset, "weights_sha256": card.weights_sha256,
                "metrics": metrics, "hyperparameters": card.hyperparameters}
        store.put_artifact("generative", meta, pictures(model, test_split, seed))
    return LoadedGenerative(name, model, card)


@torch.no_grad()
def pictures(model: GenerativeModel, test: data_mod.Split, seed: int, n: int = 8, steps: int = 8) -> dict[str, torch.Tensor]:
    """What the report shows of a generative model: test images and their reconstructions,
    samples from the prior, and a latent interpolation between two test images (a model with
    an encoder) or two prior draws (a GAN)."""
    dev = devices.of(model)
    gen = devices.generator(seed, dev)
    x = test.first(n).floats().to(dev)
    out: dict[str, torch.Tensor] = {}
    if "reconstruct" in model.abilities:
        out |= {"originals": x, "reconstructions": model.reconstruct(x)}
    if "sample" in model.abilities:
        out["samples"] = model.sample(n, gen)
    if "decode" in model.abilities:
        # Two test images of different classes, else two prior draws.
        if "encode" in model.abilities:
            labels = test.first(64).labels
            j = int((labels != labels[0]).nonzero()[0])
            ends = model.encode(test.first(64).floats()[[0, j]].to(dev))
        else:
            ends = torch.randn(2, model.latent, generator=gen, device=dev)
        t = torch.linspace(0, 1, steps, device=dev).view(-1, *([1] * (ends.ndim - 1)))
        out["interpolation"] = model.decode((1 - t) * ends[:1] + t * ends[1:])
    return {k: v.cpu() for k, v in out.items()}


def model_hparams(model: GenerativeModel) -> dict[str, Any]:
    return dict(getattr(model, "hparams", {}))


@torch.no_grad()
def evaluate(model: GenerativeModel, test: data_mod.Split, judge: Any, seed: int) -> dict[str, Any]:
    """The card's figures: the model's own test metrics, and when a classifier is given, its
    accuracy on reconstructions (next to its clean accuracy) and its mean max-softmax
    confidence on samples."""
    dev = devices.of(model)
    gen = devices.generator(seed, dev)
    x, y = test.floats().to(dev), test.labels.to(dev)
    out: dict[str, Any] = {"test_n": len(x), **model.metrics(x, gen)}
    if judge is None:
        return out
    out["classifier"] = judge.name
    out["classifier_clean_acc"] = float((predict(judge.model, x).argmax(1) == y).float().mean())
    if "reconstruct" in model.abilities:
        rec = torch.cat([model.reconstruct(b) for b in x.split(500)])
        out["classifier_acc_on_reconstructions"] = float((predict(judge.model, rec).argmax(1) == y).float().mean())
    if "sample" in model.abilities:
        p = torch.softmax(predict(judge.model, model.sample(min(len(x), 1000), gen)), 1)
        out["classifier_confidence_on_samples"] = float(p.amax(1).mean())
        out["sample_class_histogram"] = torch.bincount(p.argmax(1), minlength=p.shape[1]).tolist()
    return out


def invert(model: GenerativeModel, x: torch.Tensor, *, steps: int = 200, restarts: int = 10, lr: float = 10.0,
           generator: torch.Generator | PointStreams | None = None) -> torch.Tensor:
    """z* = argmin_z ||D(z) - x||^2 (per-pixel mean), by ``steps`` of gradient descent with
    momentum 0.7 from ``restarts`` standard-normal starts, the best start kept per image:
    Defense-GAN's projection onto the decoder's range (Samangouei 2018), shared by the
    ``defense_gan`` purifier and the ``latent`` attack on a model without an encoder. Each
    image's starts come from its own random stream."""
    n, r = x.shape[0], restarts
    target = x.detach().repeat(r, *([1] * (x.ndim - 1)))
    z = PointStreams.of(generator, n, x.device).normal((r, model.latent)).transpose(0, 1).reshape(r * n, model.latent)
    velocity = torch.zeros_like(z)
    with torch.enable_grad():
        for _ in range(steps):
            z.requires_grad_(True)
            loss = (model.decode(z) - target).pow(2).flatten(1).mean(1)
            (g,) = torch.autograd.grad(loss.sum(), z)
            velocity = 0.7 * velocity + g
            z = z.detach() - lr * velocity
    with torch.no_grad():
        err = (model.decode(z) - target).pow(2).flatten(1).mean(1).view(r, n)
        return z.view(r, n, -1)[err.argmin(0), torch.arange(n, device=z.device)]


def through_range(model: GenerativeModel, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """D(z) in the forward pass, for z = z*(x) a projection of x onto the decoder's range; in
    the backward pass the gradient of that projection by the implicit function theorem, in its
    Gauss-Newton form: dD(z*)/dx = J (J^T J)^-1 J^T, the orthogonal projector onto the range's
    tangent space at z (J = dD/dz there, from one forward-mode pass per latent dimension).
    The identity (plain BPDA) would keep the gradient's off-range part, which the projection
    erases."""
    z = z.detach()
    n, k = z.shape

    def flat(v: torch.Tensor) -> torch.Tensor:
        return model.decode(v).flatten(1)

    with torch.no_grad():
        out = model.decode(z)
        jac = torch.stack([torch.func.jvp(flat, (z,), (e.expand(n, k),))[1] for e in torch.eye(k, device=z.device)], 2)
        jtj = jac.transpose(1, 2) @ jac
        jtj = jtj + 1e-6 * jtj.diagonal(dim1=1, dim2=2).mean(1).view(n, 1, 1) * torch.eye(k, device=z.device)
    delta = (x - x.detach()).flatten(1).to(jac.dtype)  # zero, carrying x's gradient
    dz = torch.linalg.solve(jtj, (jac.transpose(1, 2) @ delta.unsqueeze(2)))
    return (out.flatten(1) + (jac @ dz).squeeze(2)).view_as(out).to(x.dtype)


def require(owner: str, source: str, ability: str) -> None:
    """Fail, naming ``owner`` and the value, unless ``source`` names a trained generative model
    that can do ``ability`` (reconstruct, sample, encode, decode); used by the purifiers and
    the latent attack at construction."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"{owner}: model must name a generative model (e.g. dae-fmnist) or a checkpoint folder, got {source!r}")
    lg = cached(source)
    if ability not in lg.model.abilities:
        kinds = [n for n in GENERATIVE.names() if ability in GENERATIVE.get(n).obj.abilities]
        raise ValueError(f"{owner}: model {source!r} is a {lg.card.kind}, which cannot {ability}; "
                         f"allowed kinds: {', '.join(kinds)}")


def resolve(source: str) -> Path:
    """The checkpoint folder of a cache name (``vae-fmnist``) or of a folder/weights path."""
    path = Path(source)
    if path.is_dir():
        return path
    if source.endswith(".safetensors"):
        return path.parent
    kind, _, dataset = source.partition("-")
    GENERATIVE.get(kind)
    if dataset not in data_mod.DATASETS:
        raise ValueError(f"generative model name must look like <kind>-<dataset> (e.g. vae-fmnist), got {source!r}; "
                         f"allowed datasets: {', '.join(data_mod.DATASETS)}")
    path = checkpoint_dir(source)
    if not (path / CARD).is_file():
        raise GenerativeNotTrainedError(
            f"generative model {source!r} has no checkpoint in {path}; train it with "
            f"`rbl train-generative --model {kind} --dataset {dataset}`")
    return path


def load(source: str) -> LoadedGenerative:
    """A trained generative model by cache name (``vae-fmnist``) or checkpoint folder,
    verified against its card's sha256."""
    path = resolve(source)
    card = read_card(GenerativeCard, path / CARD)
    params = {k: v for k, v in card.hyperparameters.items() if k not in LOOP_SETTINGS}
    model = build(card.kind, card.dataset, **params)
    load_into(model, read_state(path / WEIGHTS, expected_sha256=card.weights_sha256), path / WEIGHTS)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedGenerative(card.name, model, card)


LOOP_SETTINGS = ("epochs", "batch_size", "lr", "train_subset")
_CACHE: dict[tuple[str, int, int, str], LoadedGenerative] = {}


def cached(source: str, device: torch.device | str = "cpu") -> LoadedGenerative:
    """:func:`load` onto ``device``, memoised per device while the weights file is unchanged
    (path, size, mtime), so a defense does not re-read its model on every batch."""
    weights = resolve(source) / WEIGHTS
    st = weights.stat() if weights.is_file() else None
    key = (str(weights.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1, str(torch.device(device)))
    if key not in _CACHE:
        loaded = load(source)
        loaded.model.to(device)
        _CACHE[key] = loaded
        while len(_CACHE) > 8:
            _CACHE.pop(next(iter(_CACHE)))
    return _CACHE[key]


__all__ = [
    "CheckpointError",
    "GenerativeCard",
    "GenerativeModel",
    "GenerativeNotTrainedError",
    "LoadedGenerative",
    "build",
    "cached",
    "checkpoint_dir",
    "evaluate",
    "file_sha256",
    "generative_name",
    "load",
    "resolve",
    "train",
]
