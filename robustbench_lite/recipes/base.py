"""What a training recipe is: the loss of one batch. The loop around it is shared (``train.py``)."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from ..inference import eval_mode
from ..params import Validated

#: The eps the loop monitors PGD accuracy at when a recipe has none of its own (standard training).
MONITOR_EPS = 0.1

#: Each dataset's standard L-inf radius (REFERENCES.md: 0.1 on Fashion-MNIST, 0.3 on MNIST, 8/255
#: on CIFAR-10): what an adversarial recipe trains at, and the loop monitors at, unless told.
STANDARD_EPS = {"fmnist": 0.1, "mnist": 0.3, "cifar10": 8 / 255}


class Step(NamedTuple):
    """What a recipe returns for one batch: the loss to minimise, and the logits on clean and on
    adversarial inputs (None where the recipe does not compute them) for the progress bar."""

    loss: torch.Tensor
    clean_logits: torch.Tensor | None
    adv_logits: torch.Tensor | None


@dataclass(frozen=True, kw_only=True)
class Recipe(Validated, ABC):
    """A recipe's hyperparameters are frozen fields declared with :mod:`robustbench_lite.params`;
    they go into the model card.

    Class attributes:
        schedule: the learning-rate schedule the loop uses unless told otherwise
            (a key of ``robustbench_lite.train.SCHEDULES``).
    """

    schedule: ClassVar[str] = "warmup_cosine"

    @abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        """Return the :class:`Step` of one batch.

        ``progress`` is the fraction of training done, in [0, 1], for schedules such as an
        eps ramp-up."""

    def prepare(self, dataset: str) -> None:
        """Called once before training, for recipes that need more than the batch (static models)."""

    def collapsed(self, history: list[dict[str, float]]) -> str | None:
        """Given the per-epoch curves so far, return why training has collapsed, or None.

        The loop stops on a collapse and restores the weights of the epoch with the best
        PGD accuracy on its fixed training subset."""
        return None

    def monitor_eps(self, dataset: str) -> float:
        """Where the loop measures PGD accuracy: the recipe's own eps, else the dataset's standard one."""
        return float(getattr(self, "eps", None) or STANDARD_EPS.get(dataset, MONITOR_EPS))

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mixed_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, clean_weight: float) -> Step:
    """w * CE(x) + (1 - w) * CE(x_adv), with both halves in one forward pass (Goodfellow 2015, eq. 6)."""
    logits = model(torch.cat([x, x_adv]))
    clean, adv = logits[: len(x)], logits[len(x):]
    ce = torch.nn.functional.cross_entropy
    return Step(clean_weight * ce(clean, y) + (1 - clean_weight) * ce(adv, y), clean, adv)


def clean_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits on clean inputs for the progress bar only: no graph, and batch-norm statistics untouched."""
    with torch.no_grad(), eval_mode(model):
        return model(x)
