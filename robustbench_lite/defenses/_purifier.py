"""What the generative purifiers share: the generative model they name (a cache name such as
``vae-fmnist`` or a checkpoint folder), loaded once, checked against the input's shape, and
identified in the store key by its weights' sha256."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustbench_lite.generative import base as generative
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


def net(source: str, x: torch.Tensor) -> generative.GenerativeModel:
    model = generative.cached(source, x.device).model
    model.check_input(x)
    return model


def config(defense: Any, source: str) -> dict[str, Any]:
    """The defense's config with the generative model's weights sha256 and architecture fingerprint, so that
    retraining it or changing its code gives new store keys."""
    import dataclasses

    loaded = generative.cached(source)
    return {"defense": DEFENSES.name_of(type(defense)), **dataclasses.asdict(defense),
            "weights_sha256": loaded.weights_sha256, "arch_sha256": loaded.arch_sha256}


@dataclass(frozen=True, kw_only=True)
class Reconstruct(Defense):
    """x -> the named model's reconstruction of x (deterministic and differentiable)."""

    batch_invariant = True

    model: str  # each registered subclass declares it, with its default and doc

    def validate(self, method: str) -> None:
        generative.require(method, self.model, "reconstruct")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return net(self.model, x).reconstruct(x)

    def config(self) -> dict[str, Any]:
        return config(self, self.model)
