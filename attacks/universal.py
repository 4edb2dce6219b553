"""A stored universal perturbation as an attack: "Universal adversarial perturbations",
Moosavi-Dezfooli et al., 2017, arXiv:1610.08401."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attack import Attack
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


@functools.lru_cache(maxsize=8)
def _perturbation(artifact: str, store: str | None) -> tuple[str, torch.Tensor]:
    from robustbench_lite.paths import default_store
    from robustbench_lite.store import Store

    with Store(store or default_store()) as s:
        hits = [(k, t["perturbation"]) for k, _, t in s.artifacts("universal") if k.startswith(artifact)]
    if len(hits) != 1:
        found = "no" if not hits else f"{len(hits)}"
        raise ValueError(f"universal: {found} stored universal perturbations match artifact {artifact!r}; "
                         "run `rbl experiment universal --models ...` and pass the key it prints (or a unique prefix)")
    return hits[0]


def _conformance_instance(model: nn.Module, x: torch.Tensor) -> "Universal":
    """For the conformance suite: a perturbation crafted on ``x`` and stored in the default store."""
    from experiments.universal import craft
    from robustbench_lite import devices
    from robustbench_lite.paths import default_store
    from robustbench_lite.store import Store

    v, rate = craft(model, x, Threat("linf", 0.1), method="sgd", passes=10, lr=0.02, generator=devices.generator(0, x.device))
    with Store(default_store()) as s:
        key = s.put_artifact("universal", {"model": "conformance", "metrics": {"train_fooling_rate": rate}},
                             {"perturbation": v[0]})
    return Universal(artifact=key)


@ATTACKS.register("universal", conformance=_conformance_instance, norms=("linf",))
@dataclass(frozen=True, kw_only=True)
class Universal(Attack):
    """Adds one stored universal perturbation to every input, then projects onto the threat.

    The perturbation is crafted once, on training images, by ``rbl experiment universal``;
    this attack reuses it, so any model (its own or another architecture's, for transfer)
    can be scored against it through the engine and the leaderboard.

    Args:
        artifact: the key (or a unique prefix) of a ``universal`` artifact in the store.
        store: the results store holding it (default: the user's store).

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> rbl eval --model resnet10t-fmnist-standard --attack universal:artifact=3f2a --eps 0.1
    """

    batch_invariant = True

    artifact: str
    store: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.artifact, str) or len(self.artifact) < 4 or not all(c in "0123456789abcdef" for c in self.artifact):
            raise ValueError(f"universal: artifact must be a hex key or a prefix of at least 4 characters, got {self.artifact!r}")

    def config(self) -> dict:
        # The full key, not the prefix the user typed, identifies the cell.
        return super().config() | {"artifact": _perturbation(self.artifact, self.store)[0], "store": None}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        _, v = _perturbation(self.artifact, self.store)
        if v.shape != x.shape[1:]:
            raise ValueError(f"universal: the stored perturbation has shape {tuple(v.shape)}, the inputs {tuple(x.shape[1:])}")
        return threat.project(x + v.to(x), x)
