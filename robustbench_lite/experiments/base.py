"""Experiments: studies that are not an attack on (x, y) under a threat, such as universal
perturbations, fooling images and minimal perturbations. Each is one registered file in
``experiments/``; its outputs are stored as artifacts, which the reports read, never recompute.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .. import __version__, devices
from ..data import Split
from ..params import Validated
from ..registry import EXPERIMENTS
from ..zoo import LoadedModel


@dataclass(frozen=True)
class Outcome:
    """One model's figures (numbers) and tensors (perturbations, images, distances)."""

    model: str
    metrics: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, kw_only=True)
class Experiment(Validated, ABC):
    """Base class: frozen hyperparameters declared with :mod:`robustbench_lite.params`, and ``run``."""

    @abstractmethod
    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        """Figures per model; several models may be compared with each other (transfer)."""

    def config(self) -> dict[str, Any]:
        return {"experiment": EXPERIMENTS.name_of(type(self)), **dataclasses.asdict(self)}


def execute(experiment: Experiment, models: Sequence[LoadedModel], train: Split, test: Split, *,
            store: Any | None = None, seed: int = 0,
            device: str | torch.device | None = None) -> list[tuple[Outcome, str | None]]:
    """Run an experiment and store every outcome as an artifact; returns (outcome, key).

    ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``; None is the CPU) is where the models
    and both splits go before the experiment runs, so what it computes from them follows; an
    artifact's tensors are stored from the CPU, and a run off the CPU records its device."""
    if not models:
        raise ValueError("an experiment needs at least one model")
    datasets = {lm.dataset for lm in models} | {train.dataset, test.dataset}
    if len(datasets) != 1:
        raise ValueError(f"models and data must share one dataset, got {sorted(datasets)}")
    dev = devices.resolve(device or "cpu")
    for lm in models:
        lm.model.to(dev)
    torch.manual_seed(seed)
    outcomes = experiment.run(models, train.to(dev), test.to(dev), seed=seed)
    shas = {lm.name: lm.weights_sha256 for lm in models}
    # What re-running it takes (``rbl verify``): every model of the run, in order, and both splits.
    run = [{"name": lm.name, "weights_sha256": lm.weights_sha256, "arch": lm.arch, "source": lm.source} for lm in models]
    out = []
    for o in outcomes:
        key = None
        if store is not None:
            meta = {"model": o.model, "dataset": test.dataset, "weights_sha256": shas.get(o.model), "config": experiment.config(),
                    "metrics": o.metrics, "seed": seed, "test_sha256": test.sha256(), "version": __version__,
                    "models": run, "train_sha256": train.sha256()} | ({"device": dev.type} if dev.type != "cpu" else {})
            key = store.put_artifact(experiment.config()["experiment"], meta, {k: v.cpu() for k, v in o.tensors.items()})
        out.append((o, key))
    return out


