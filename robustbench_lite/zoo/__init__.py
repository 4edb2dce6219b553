"""The model zoo: architectures adapted per dataset, and trained checkpoints named
``<arch>-<dataset>-<recipe>`` (e.g. ``smallcnn-fmnist-standard``) in the user cache."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..data import DATASETS
from ..paths import cache_dir
from ..registry import MODELS, RECIPES
from .archs import Normalized, build
from . import denoise  # noqa: F401  (registers the *_denoise architectures)
from .checkpoint import CARD, WEIGHTS, CheckpointError, ModelCard, file_sha256, load_into, read_state, save
from ..fetch import fetch, is_remote
from .archs import external


class ModelNotTrainedError(FileNotFoundError):
    pass


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for evaluation, with what identifies it in the results store."""

    name: str
    model: nn.Module
    dataset: str
    weights_sha256: str
    card: ModelCard | None = None
    arch: str | None = None  # the architecture it was built as (the card's, or --arch)
    source: str | None = None  # where it was loaded from: a zoo name or a checkpoint path


def zoo_name(arch: str, dataset: str, recipe: str) -> str:
    return f"{arch}-{dataset}-{recipe}"


def parse_name(name: str) -> tuple[str, str, str]:
    """Split and validate ``<arch>-<dataset>-<recipe>``."""
    parts = name.split("-")
    if len(parts) != 3:
        raise ValueError(f"zoo model name must look like <arch>-<dataset>-<recipe> (e.g. smallcnn-fmnist-standard), got {name!r}")
    arch, dataset, recipe = parts
    MODELS.get(arch)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} in {name!r}; allowed: {', '.join(DATASETS)}")
    RECIPES.get(recipe)
    return arch, dataset, recipe


def checkpoint_dir(name: str) -> Path:
    return cache_dir() / "zoo" / name


def is_trained(name: str) -> bool:
    d = checkpoint_dir(name)
    return (d / WEIGHTS).is_file() and (d / CARD).is_file()


def trained() -> list[str]:
    """Names of the zoo models with a checkpoint in the cache."""
    root = cache_dir() / "zoo"
    return sorted(p.name for p in root.iterdir() if is_trained(p.name)) if root.is_dir() else []


def load_card(name: str) -> ModelCard:
    """The model card of a trained zoo model (no weights are read)."""
    return ModelCard.from_json(checkpoint_dir(name) / CARD)


def fetchable(name: str) -> bool:
    """Whether the zoo's card for ``name`` names where its weights are downloaded from (``source``).
    Callers fetch only where the weights are not there yet (:func:`is_trained`)."""
    card = checkpoint_dir(name) / CARD
    try:
        return card.is_file() and bool(ModelCard.from_json(card).source)
    except CheckpointError:
        return False


def _fetch_weights(name: str) -> None:
    """Download the weights a card-only zoo entry names (its ``source`` and ``weights_sha256``)
    and put them beside the card, atomically; the download is checked before it is placed."""
    import os
    import shutil


    d = checkpoint_dir(name)
    card = ModelCard.from_json(d / CARD)
    got = fetch(card.source, card.weights_sha256)
    tmp = d / f".{WEIGHTS}.tmp"
    tmp.unlink(missing_ok=True)
    try:  # the verified download, linked (or copied, across file systems) into place: never kept twice
        os.link(got, tmp)
    except OSError:
        shutil.copyfile(got, tmp)
    os.replace(tmp, d / WEIGHTS)


def load(name: str) -> LoadedModel:
    """Load a trained zoo model, verifying its weights against the card's sha256 (downloading them
    first when the zoo holds only a card that names their source)."""
    arch, dataset, recipe = parse_name(name)
    d = checkpoint_dir(name)
    if not is_trained(name) and fetchable(name):
        _fetch_weights(name)
    if not is_trained(name):
        raise ModelNotTrainedError(
            f"zoo model {name!r} has no checkpoint in {d}; train it with "
            f"`rbl train --arch {arch} --dataset {dataset} --recipe {recipe}` (or `rbl run` trains its profile)")
    return dataclasses.replace(load_checkpoint(d / WEIGHTS), source=name)


def is_path(source: str) -> bool:
    """Whether ``source`` names a checkpoint (on disk, or a download source) rather than a zoo model."""

    return is_remote(source) or source.endswith((".safetensors", ".pt")) or Path(source).is_dir()


def load_any(source: str) -> LoadedModel:
    """A zoo name (``smallcnn-fmnist-standard``) or a checkpoint path with its card."""
    return load_checkpoint(source) if is_path(source) else load(source)


def load_checkpoint(path: str | Path, arch: str | None = None, dataset: str | None = None,
                    sha256: str | None = None) -> LoadedModel:
    """Load a user's checkpoint: a zoo folder, a ``.safetensors`` with its card, or a plain
    state dict (``.pt``/``.safetensors``) with ``arch`` and ``dataset`` given. ``path`` may be a
    download source (``https://...``, ``hf-hub:org/name``), fetched and checked against ``sha256``
    before it is read; such a model's source stays the URL, so ``rbl verify`` fetches it again."""

    if isinstance(path, str) and is_remote(path):
        if not sha256:
            raise CheckpointError(f"a downloaded checkpoint needs its sha256 (--sha256); got none for {path}")
        if arch is None or dataset is None:
            raise CheckpointError(f"checkpoint {path} is downloaded without a model card; pass --arch and --dataset")
        local = fetch(path, sha256)
        return dataclasses.replace(load_checkpoint(local, arch=arch, dataset=dataset), name=Path(local).stem, source=path)
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    card = None
    for candidate in (path.with_suffix(".json"), path.parent / CARD):
        if candidate.is_file() and path.suffix == ".safetensors":
            card = ModelCard.from_json(candidate)
            break
    arch = arch or (card.arch if card else None)
    dataset = dataset or (card.dataset if card else None)
    if arch is None or dataset is None:
        raise CheckpointError(f"checkpoint {path} has no model card beside it; pass --arch and --dataset")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    state = read_state(path, expected_sha256=card.weights_sha256 if card else None)
    model = build(arch, DATASETS[dataset])
    load_into(model, state, path)
    model.eval()
    sha = card.weights_sha256 if card else file_sha256(path)
    return LoadedModel(card.name if card else path.stem, model, dataset, sha, card, arch=arch, source=str(path))


def builder(arch: str) -> Any:
    """The function that builds ``arch`` (a registered name, ``timm:<name>`` or ``tv:<name>``), or
    None for an architecture the zoo does not know (a user's own module)."""

    if arch.startswith(("timm:", "tv:")):
        return external
    return MODELS.get(arch).obj if arch in MODELS else None


__all__ = ["CheckpointError", "LoadedModel", "ModelCard", "ModelNotTrainedError", "Normalized", "build", "builder",
           "checkpoint_dir", "fetchable", "is_trained", "load", "load_card", "trained", "load_checkpoint", "parse_name", "save", "zoo_name"]
