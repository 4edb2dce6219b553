"""What a defense is, and the three views of a defended model the engine attacks and judges.

A preprocessing defense maps inputs in [0, 1] to inputs in [0, 1] in front of a classifier.
It declares two facts about itself, and the engine, never the defense, decides from them how
to attack it (Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a False Sense of
Security", arXiv:1802.00420):

- ``differentiable = False``: the backward pass goes through :meth:`Defense.approximation`
  (the identity unless the defense knows better) while the forward pass runs the real step:
  BPDA.
- ``stochastic = True``: gradients are averaged over ``eot`` draws of the randomness (EOT),
  and predictions are the majority vote over ``votes`` passes.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import nn

from .registry import DEFENSES

if TYPE_CHECKING:
    from .detector import Detector


@dataclass(frozen=True, kw_only=True)
class Defense(ABC):
    """A preprocessing step. Hyperparameters are frozen fields, checked in ``__post_init__``.

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
    from .specs import render

    return render(config, "defense")


@dataclass(frozen=True, kw_only=True)
class Composite(ABC):
    """A defense made of several registered parts (MagNet: a reformer and a detector), which
    :func:`chain` expands in place; the engine only ever sees the parts."""

    @abstractmethod
    def parts(self) -> "tuple[Defense | Detector, ...]":
        """The parts, in the order they are applied."""


def chain(defenses: Sequence["str | Defense | Detector | Composite"]) -> "tuple[Defense | Detector, ...]":
    """Instantiate defense specs (``jpeg:quality=75``, ``feature_squeeze``) in order; a
    composite (``magnet``) becomes its parts."""
    from . import specs
    from .detector import Detector

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


class Defended(nn.Module):
    """``model`` behind ``defenses``, as deployed: the real preprocessing in the forward pass.

    Its randomness comes from its own generator, seeded by the engine per cell, so a defended
    evaluation is reproducible. ``bpda`` swaps every non-differentiable step's backward pass
    for its approximation; ``eot`` additionally averages over draws of the randomness.
    """

    def __init__(self, model: nn.Module, defenses: Sequence[Defense], seed: int = 0, *, bpda: bool = False, eot: int = 1,
                 bpda_all: bool = False):
        super().__init__()
        self.model = model
        self.defenses = tuple(defenses)
        self.bpda = bpda or bpda_all
        self.bpda_all = bpda_all
        self.eot = eot
        from . import devices

        self.generator = devices.generator(seed, devices.of(model))

    @property
    def stochastic(self) -> bool:
        return any(d.stochastic for d in self.defenses)

    @property
    def differentiable(self) -> bool:
        return all(d.differentiable for d in self.defenses)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        for d in self.defenses:
            before = x.detach().clone()
            if d.differentiable and not self.bpda_all:
                out = d.transform(x, self.generator)
            elif self.bpda_all:  # the plain approximation, even where the defense knows better
                out = Defense.bpda(d, x, self.generator)
            elif self.bpda:
                out = d.bpda(x, self.generator)
            else:
                # As deployed: whatever autograd makes of the step (zero or no gradient), which
                # is what a naive white-box attack sees.
                out = d.transform(x, self.generator)
            if not torch.equal(x.detach(), before):
                from .engine import TamperingError

                raise TamperingError(f"defense {d.spec()} modified its input in place; a defense returns the "
                                     "preprocessed images and leaves the ones it got as they were")
            x = out
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eot <= 1:
            return self.model(self.preprocess(x))
        # EOT: the log of the softmax averaged over draws, so that the attack's cross-entropy
        # is that of the expected prediction and its gradient averages over the randomness.
        n = x.shape[0]
        logp = torch.log_softmax(self.model(self.preprocess(x.repeat(self.eot, *([1] * (x.ndim - 1))))), dim=1)
        return torch.logsumexp(logp.view(self.eot, n, -1), dim=0) - torch.log(torch.tensor(float(self.eot), device=logp.device))

    def surface(self, eot: int, bpda_all: bool = False) -> "Defended":
        """The adaptive attack's view: BPDA through non-differentiable steps (through every step
        with ``bpda_all``), EOT over random ones."""
        view = Defended(self.model, self.defenses, bpda=True, eot=eot if self.stochastic else 1, bpda_all=bpda_all)
        view.generator = self.generator
        return view


def vote(defended: nn.Module, x: torch.Tensor, votes: int, batch_size: int = 512) -> torch.Tensor:
    """Scores whose argmax is the majority label over ``votes`` passes of a random defense (ties
    broken by the mean probability); a deterministic defense needs one pass."""
    from .attack import eval_mode

    passes = votes if defended.stochastic else 1
    out = []
    with torch.no_grad(), eval_mode(defended):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            counts = probs = 0
            for _ in range(passes):
                p = torch.softmax(defended(xb), dim=1)
                counts = counts + torch.nn.functional.one_hot(p.argmax(1), p.shape[1])
                probs = probs + p
            out.append(counts + probs / passes * 1e-3 if passes > 1 else probs)
    return torch.cat(out)
