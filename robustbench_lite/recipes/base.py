"""What a training recipe is: the loss of one batch. The loop around it is shared (``train.py``)."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True, kw_only=True)
class Recipe(ABC):
    """A recipe's hyperparameters are frozen fields; they go into the model card."""

    @abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mean training loss, logits used for the running accuracy) for one batch.

        ``progress`` is the fraction of training done, in [0, 1], for schedules such as an
        eps ramp-up."""

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_eps(recipe: str, eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"{recipe}: eps must be a number in (0, 1), got {eps!r}")
