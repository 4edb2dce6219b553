"""Transfer: "Transferability in Machine Learning: from Phenomena to Black-Box Attacks using
Adversarial Samples", Papernot et al., 2016, arXiv:1605.07277; the surrogate-model attack of
Tramer et al. 2018 (arXiv:1705.07204) that ensemble adversarial training defends against."""
from __future__ import annotations

import functools
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from robustbench_lite import specs
from robustbench_lite.attacks.base import Attack
from robustbench_lite.params import value
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat
from robustbench_lite import zoo
from robustbench_lite import fingerprint
from robustbench_lite.cell import model_id

if TYPE_CHECKING:
    from robustbench_lite.zoo import LoadedModel


def _surrogate(source: str) -> "LoadedModel":

    weights = Path(source) if zoo.is_path(source) else zoo.checkpoint_dir(source)
    # Keyed on the file's mtime too, so a retrained surrogate is never served stale.
    return _load(source, weights.stat().st_mtime_ns if weights.exists() else 0)


@functools.lru_cache(maxsize=8)
def _load(source: str, stamp: int) -> "LoadedModel":

    return zoo.load_any(source)


def _model_name(method: str, name: str, v: object) -> None:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{method}: {name} must be a zoo model name or checkpoint path, got {v!r}")


def _not_transfer(method: str, name: str, v: str) -> None:
    if isinstance(specs.attack(v), Transfer):
        raise ValueError(f"{method}: the surrogate's attack cannot itself be a transfer attack, got {v!r}")


@ATTACKS.register("transfer", example={"surrogate": "smallcnn-fmnist-standard", "attack": "pgd:steps=10"})
@dataclass(frozen=True, kw_only=True)
class Transfer(Attack):
    """Craft adversarial examples on a surrogate model, then hand them to the target unchanged.

    The target is never queried, so its gradients (masked or not) play no part: a transfer
    attack that beats a white-box one on the same model points at gradient masking.

    ``surrogate`` is required: a trained zoo model name (``resnet10t-fmnist-standard``) or a
    checkpoint path (a ``.safetensors`` with its card, or a zoo folder).

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = Transfer(surrogate="resnet10t-fmnist-standard")(model, x, y, Threat("linf", 0.1))
    """

    surrogate: str = value(MISSING, "the model the examples are crafted on; required", check=_model_name,
                           allowed="a zoo model name or checkpoint path")
    attack: str = value("pgd:steps=50", "the spec of the attack run on the surrogate", check=_not_transfer,
                        allowed="an attack spec, not itself a transfer attack")

    @property
    def batch_invariant(self) -> bool:  # type: ignore[override]
        return specs.attack(self.attack).batch_invariant

    #: Config keys that name a constructor argument otherwise: the inner attack's spec is stored as
    #: ``surrogate_attack``, since ``attack`` is where every attack's config holds its registered name.
    config_arguments: ClassVar[dict[str, str]] = {"surrogate_attack": "attack"}

    def config(self) -> dict[str, Any]:
        # The surrogate (its weights and architecture) and the inner attack's code decide the
        # result, so they are part of the store key.

        surrogate = _surrogate(self.surrogate)
        inner = specs.attack(self.attack)
        return {"attack": ATTACKS.name_of(type(self)), "surrogate": self.surrogate, "surrogate_attack": self.attack,
                "surrogate_sha256": surrogate.weights_sha256, "surrogate_arch_sha256": model_id(surrogate)[0].arch_sha256,
                "attack_code_sha256": fingerprint.code_of(type(inner)).sha256}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        surrogate = _surrogate(self.surrogate).model.to(x.device)
        return specs.attack(self.attack)(surrogate, x, y, threat, generator=generator)
