"""Running a model without changing it: eval mode that restores every submodule's own mode, and
batched predictions."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and restore the caller's mode, so batch-norm statistics never move.

    Every submodule gets its own mode back: restoring with ``model.train(was)`` would push a
    fresh wrapper's default (training) down onto the eval-mode model it wraps.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for ``x`` in batches, in eval mode."""
    with eval_mode(model):
        out = [model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    logits = torch.cat(out) if out else torch.zeros(0, device=x.device)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"model must return logits of shape (N, classes), got {tuple(logits.shape)}")
    return logits


def predictions(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return predict(model, x, batch_size).argmax(1)
