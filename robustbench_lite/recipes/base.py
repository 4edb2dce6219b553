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
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mean training loss, logits on the inputs the loss saw first) for one batch."""

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
