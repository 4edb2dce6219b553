"""Ensemble adversarial training: "Ensemble Adversarial Training: Attacks and Defenses",
Tramer et al., 2018, arXiv:1705.07204."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..registry import RECIPES
from ..threat import Threat
from .base import Recipe, Step, check_eps, check_fraction, mixed_loss


@RECIPES.register("ensemble_at")
@dataclass(frozen=True, kw_only=True)
class EnsembleAT(Recipe):
    """Half of each batch's loss is on adversarial examples crafted either on the current model or
    on one of several static, separately trained models, the source drawn at random per batch.

    Crafting on static models decouples the examples from the weights being trained, which
    stops the model from learning to mask its own single-step gradients (the paper's point);
    its robustness is aimed at transferred attacks and is weaker against white-box PGD.

    Args:
        sources: the static models, as architectures (meaning ``<arch>-<dataset>-standard``),
            zoo names, or checkpoint paths; a string may join several with ``+``
            (default: resnet10t and mobilenetv3_small_050).
        eps: L-inf radius in (0, 1) (default 0.1).
        attack: attack spec crafting the examples (default ``fgsm``, as in the paper).
        clean_weight: weight of the clean term, in [0, 1] (default 0.5).

    Example:
        >>> rbl train --arch smallcnn --recipe ensemble_at:sources=resnet10t+mobilenetv3_small_050
    """

    sources: tuple[str, ...] | str = ("resnet10t", "mobilenetv3_small_050")
    eps: float = 0.1
    attack: str = "fgsm"
    clean_weight: float = 0.5

    def __post_init__(self) -> None:
        from ..specs import attack

        sources = tuple(self.sources.split("+")) if isinstance(self.sources, str) else tuple(self.sources)
        if not sources or not all(isinstance(s, str) and s.strip() for s in sources):
            raise ValueError(f"ensemble_at: sources must name at least one static model, got {self.sources!r}")
        object.__setattr__(self, "sources", tuple(s.strip() for s in sources))
        check_eps("ensemble_at", self.eps)
        check_fraction("ensemble_at", "clean_weight", self.clean_weight)
        object.__setattr__(self, "_attack", attack(self.attack))
        object.__setattr__(self, "_static", ())

    def prepare(self, dataset: str) -> None:
        from .. import zoo

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
