"""Ensemble adversarial training: "Ensemble Adversarial Training: Attacks and Defenses",
Tramer et al., 2018, arXiv:1705.07204."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..registry import RECIPES
from ..threat import Threat
from ..params import real, value
from .base import Recipe, Step, mixed_loss
from .. import specs
from .. import zoo


def _sources(sources: Any) -> tuple[str, ...]:
    return tuple(sources.split("+")) if isinstance(sources, str) else tuple(sources)


def _check_sources(method: str, name: str, sources: Any) -> None:
    names = _sources(sources)
    if not names or not all(isinstance(s, str) and s.strip() for s in names):
        raise ValueError(f"{method}: {name} must name at least one static model, got {sources!r}")


@RECIPES.register("ensemble_at")
@dataclass(frozen=True, kw_only=True)
class EnsembleAT(Recipe):
    """Half of each batch's loss is on adversarial examples crafted either on the current model or
    on one of several static, separately trained models, the source drawn at random per batch.

    Crafting on static models decouples the examples from the weights being trained, which
    stops the model from learning to mask its own single-step gradients (the paper's point);
    its robustness is aimed at transferred attacks and is weaker against white-box PGD.

    Example:
        >>> rbl train --arch smallcnn --recipe ensemble_at:sources=resnet10t+mobilenetv3_small_050
    """

    sources: tuple[str, ...] | str = value(
        ("resnet10t", "mobilenetv3_small_050"),
        "the static models, as architectures (meaning ``<arch>-<dataset>-standard``), zoo names, or "
        "checkpoint paths; a string may join several with ``+``",
        check=_check_sources, allowed="one or more model names")
    eps: float = real(0.1, "L-inf radius", lo=0, hi=1, interval="()")
    attack: str = value("fgsm", "attack spec crafting the examples (``fgsm``, as in the paper)")
    clean_weight: float = real(0.5, "weight of the clean term", lo=0, hi=1, interval="[]")

    def validate(self, method: str) -> None:

        object.__setattr__(self, "sources", tuple(s.strip() for s in _sources(self.sources)))
        object.__setattr__(self, "_attack", specs.attack(self.attack))
        object.__setattr__(self, "_static", ())

    def prepare(self, dataset: str) -> None:

        static = []
        for source in self.sources:
            if "/" in source or Path(source).suffix in (".safetensors", ".pt"):
                loaded = zoo.load_checkpoint(source)
            else:
                loaded = zoo.load(source if "-" in source else zoo.zoo_name(source, dataset, "standard"))
            if loaded.dataset != dataset:
                raise ValueError(f"ensemble_at: static model {source!r} was trained on {loaded.dataset!r}, not {dataset!r}")
            for p in loaded.model.parameters():
                p.requires_grad_(False)
            static.append(loaded.model.eval())
        object.__setattr__(self, "_static", tuple(static))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        if not self._static:
            raise RuntimeError("ensemble_at: prepare(dataset) must load the static models before training")
        pick = int(torch.randint(len(self._static) + 1, (), generator=generator, device=generator.device))
        source = model if pick == 0 else self._static[pick - 1].to(x.device)  # a no-op once moved
        x_adv = self._attack(source, x, y, Threat("linf", self.eps), generator=generator)
        return mixed_loss(model, x, x_adv, y, self.clean_weight)
