"""What a defense is: a preprocessing step, a detector, or a composite of them.

A preprocessing defense maps inputs in [0, 1] to inputs in [0, 1] in front of a classifier.
It declares two facts about itself, and the engine, never the defense, decides from them how
to attack it (Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a False Sense of
Security", arXiv:1802.00420):

- ``differentiable = False``: the backward pass goes through :meth:`Defense.approximation`
  (the identity unless the defense knows better) while the forward pass runs the real step:
  BPDA.
- ``stochastic = True``: gradients are averaged over ``eot`` draws of the randomness (EOT),
  and predictions are the majority vote over ``votes`` passes.

A detector scores an input (higher is more suspicious) and rejects it above a threshold set
at a fixed false-positive rate on clean calibration data; the engine attacks it jointly with
its classifier (:class:`robustbench_lite.views.Guarded`). A composite (MagNet) is several
registered parts that :func:`chain` expands in place.

The views of a defended model the engine attacks and judges live in :mod:`robustbench_lite.views`.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from .. import specs
from ..registry import DEFENSES
from ..params import Validated, integer, real


@dataclass(frozen=True, kw_only=True)
class Defense(Validated, ABC):
    """A preprocessing step. Hyperparameters are frozen fields declared with
    :mod:`robustbench_lite.params` (validated, and documented, from that one declaration).

    ``batch_invariant`` declares that the step maps each image on its own (no batch statistics, no
    random draws): the cells of a defended model then leave the batch size out of their key. A
    random defense never is, since its draws follow the batches; an undeclared one is keyed by the
    batch size.

    ``cpu_only`` declares a step that exists only on the CPU (a codec through Pillow): on another
    device it moves each batch to the CPU and back, and the engine says so once per evaluation.
    """

    differentiable: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    batch_invariant: ClassVar[bool] = False
    cpu_only: ClassVar[bool] = False

    @abstractmethod
    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The real preprocessing of a batch in [0, 1]; same shape and dtype out."""

    def approximation(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable stand-in for the backward pass of a non-differentiable step (BPDA)."""
        return x

    def bpda(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The real step in the forward pass and the gradient of :meth:`approximation` in the
        backward pass. A defense whose best backward pass depends on the forward one (a
        projection's tangent space at the point it found) overrides this instead."""
        with torch.no_grad():
            real = self.transform(x.detach(), generator)
        return _StraightThrough.apply(self.approximation(x), real)

    def config(self) -> dict[str, Any]:
        return {"defense": DEFENSES.name_of(type(self)), **dataclasses.asdict(self)}

    def spec(self) -> str:
        return spec_of(self.config())


def spec_of(config: dict[str, Any]) -> str:
    """``name:key=value,...`` of a defense's config, as a user would type it."""
    return specs.render(config, "defense")


@dataclass(frozen=True, kw_only=True)
class Composite(Validated, ABC):
    """A defense made of several registered parts (MagNet: a reformer and a detector), which
    :func:`chain` expands in place; the engine only ever sees the parts."""

    @abstractmethod
    def parts(self) -> tuple[Defense | Detector, ...]:
        """The parts, in the order they are applied."""


def chain(defenses: Sequence[str | Defense | Detector | Composite]) -> tuple[Defense | Detector, ...]:
    """Instantiate defense specs (``jpeg:quality=75``, ``feature_squeeze``) in order; a
    composite (``magnet``) becomes its parts."""
    out: list[Defense | Detector] = []
    for d in defenses:
        obj = d if isinstance(d, (Defense, Detector, Composite)) else specs.create(DEFENSES, d)
        items = obj.parts() if isinstance(obj, Composite) else (obj,)
        for item in items:
            if not isinstance(item, (Defense, Detector)):
                raise TypeError(f"defense {d!r} is a {type(item).__name__}, not a Defense or Detector")
            out.append(item)
    return tuple(out)


class _StraightThrough(torch.autograd.Function):
    """Forward: the real step. Backward: the gradient of the approximation (BPDA)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return real

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


@dataclass(frozen=True, kw_only=True)
class Detector(Validated, ABC):
    """Base class: frozen hyperparameters, a score, and optionally parts fitted on clean data."""

    differentiable: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    needs_activations: ClassVar[bool] = False  # score reads the input of the classifier's head
    batch_invariant: ClassVar[bool] = False  # scores each input on its own (see Defense.batch_invariant)

    fpr: float = real(0.05, "the false-positive rate on clean calibration data that sets the threshold",
                      lo=0, hi=1, interval="()")
    calibration: int = integer(2000, "the last N training points used to fit and calibrate", lo=100)

    def fit(self, classifier: nn.Module, base: nn.Module, x: torch.Tensor, y: torch.Tensor,
            generator: torch.Generator) -> nn.Module | None:
        """Train the detector's own parts on clean calibration points (none by default)."""
        return None

    @abstractmethod
    def score(self, parts: nn.Module | None, classifier: nn.Module, x: torch.Tensor, logits: torch.Tensor,
              activations: torch.Tensor | None, bpda: bool) -> torch.Tensor:
        """Suspicion per input, shape (N,), differentiable in ``x`` (through BPDA when ``bpda``).

        ``logits`` are the classifier's on ``x``; ``activations`` the input of its head in the
        same pass, shape (draws * N, D) (several draws under EOT), when ``needs_activations``."""

    def config(self) -> dict[str, Any]:
        return {"defense": DEFENSES.name_of(type(self)), **dataclasses.asdict(self)}

    def spec(self) -> str:
        return spec_of(self.config())
