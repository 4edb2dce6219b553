"""What the generative purifiers share: the generative model they name (a cache name such as
``vae-fmnist`` or a checkpoint folder), loaded once, checked against the input's shape, and
identified in the store key by its weights' sha256."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustbench_lite import generative
from robustbench_lite.defense import Defense
from robustbench_lite.registry import DEFENSES


def check_source(owner: str, source: str, ability: str) -> None:
    """Fail at construction, naming the value, when ``source`` is not a usable generative model."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"{owner}: model must name a generative model (e.g. dae-fmnist) or a checkpoint folder, got {source!r}")
    lg = generative.cached(source)
    if ability not in lg.model.abilities:
        raise ValueError(f"{owner}: model {source!r} is a {lg.card.kind}, which cannot {ability}; "
                         f"allowed kinds: {', '.join(_kinds_with(ability))}")


def _kinds_with(ability: str) -> list[str]:
    from robustbench_lite.registry import GENERATIVE

    return [n for n in GENERATIVE.names() if ability in GENERATIVE.get(n).obj.abilities]


def net(source: str, x: torch.Tensor) -> generative.GenerativeModel:
    model = generative.cached(source).model
    model.check_input(x)
    return model


def config(defense: Any, source: str) -> dict[str, Any]:
    """The defense's config with the generative model's weights sha256, so that retraining it
    gives new store keys."""
    import dataclasses

    return {"defense": DEFENSES.name_of(type(defense)), **dataclasses.asdict(defense),
            "weights_sha256": generative.cached(source).weights_sha256}


@dataclass(frozen=True, kw_only=True)
class Reconstruct(Defense):
    """x -> the named model's reconstruction of x (deterministic and differentiable)."""

    model: str

    def __post_init__(self) -> None:
        check_source(DEFENSES.name_of(type(self)), self.model, "reconstruct")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return net(self.model, x).reconstruct(x)

    def config(self) -> dict[str, Any]:
        return config(self, self.model)
