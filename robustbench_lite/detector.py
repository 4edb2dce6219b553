"""Detectors: defenses that reject an input instead of cleaning it.

A detector scores an input (higher is more suspicious) and rejects it above a threshold set
at a fixed false-positive rate on clean calibration data. A rejected adversarial input is
"caught" and counts as a defense success; a rejected clean input counts as an error.

The engine attacks a detector jointly with its classifier (Carlini and Wagner 2017,
"Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods",
arXiv:1705.07263): :class:`Guarded` outputs the classifier's K logits plus a reject logit
that wins exactly when the detector fires, ``max_j Z_j + scale * (score - threshold)``, and
declares ``rejects = True`` so that every native attack folds the reject column into the
true class (``attack.scores``): being caught is then as bad for the attacker as being right.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from . import devices
from .registry import DEFENSES


@dataclass(frozen=True, kw_only=True)
class Detector(ABC):
    """Base class: frozen hyperparameters, a score, and optionally parts fitted on clean data.

    Args:
        fpr: the false-positive rate on clean calibration data that sets the threshold
            (default 0.05, in (0, 1)).
        calibration: the last N training points used to fit and calibrate (default 2000).
    """

    differentiable: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    needs_activations: ClassVar[bool] = False  # score reads the input of the classifier's head
    batch_invariant: ClassVar[bool] = False  # scores each input on its own (see Defense.batch_invariant)

    fpr: float = 0.05
    calibration: int = 2000

    def __post_init__(self) -> None:
        from .attack import check_int, check_interval

        name = DEFENSES.name_of(type(self))
        check_interval(name, "fpr", self.fpr, 0, 1, "()")
        check_int(name, "calibration", self.calibration, 100)

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
        from .defense import spec_of

        return spec_of(self.config())


@dataclass(frozen=True)
class Fitted:
    """A detector with its fitted parts and its threshold on one classifier."""

    detector: Detector
    parts: nn.Module | None
    threshold: float
    scale: float  # logits per unit of score above the threshold


def fit(detector: Detector, classifier: nn.Module, base: nn.Module, x: torch.Tensor, y: torch.Tensor,
        seed: int) -> Fitted:
    """Fit on the first half of the calibration points and set the threshold on the second."""
    from .attack import eval_mode

    g = devices.generator(seed, x.device)
    half = len(x) // 2
    parts = detector.fit(classifier, base, x[:half], y[:half], g)
    probe = Guarded(classifier, base, Fitted(detector, parts, 0.0, 1.0), bpda=False)
    with torch.no_grad(), eval_mode(probe):
        s = torch.cat([probe.score(xb)[1] for xb in x[half:].split(500)])
    threshold = torch.quantile(s.double(), 1 - detector.fpr).item()
    spread = (s.max() - s.min()).item()
    return Fitted(detector, parts, threshold, 10.0 / spread if spread > 0 and math.isfinite(spread) else 1.0)


class Guarded(nn.Module):
    """A classifier behind a detector: K logits and a reject logit that wins when it fires."""

    rejects = True

    def __init__(self, classifier: nn.Module, base: nn.Module, fitted: Fitted, *, bpda: bool):
        super().__init__()
        self.classifier = classifier
        self.base = base
        self.fitted = fitted
        self.bpda = bpda

    @property
    def stochastic(self) -> bool:
        return bool(getattr(self.classifier, "stochastic", False))

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's logits and the detector's score, from one pass of the classifier."""
        f = self.fitted
        if f.detector.needs_activations:
            with capture(self.base) as acts:
                z = self.classifier(x)
            a = acts[-1]
        else:
            z, a = self.classifier(x), None
        before = x.detach().clone()
        s = f.detector.score(f.parts, self.classifier, x, z, a, self.bpda)
        if not torch.equal(x.detach(), before):
            from .engine import TamperingError

            raise TamperingError(f"detector {f.detector.spec()} modified its input in place")
        return z, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, s = self.score(x)
        reject = z.amax(1) + self.fitted.scale * (s - self.fitted.threshold)
        return torch.cat([z, reject[:, None]], dim=1)


@contextlib.contextmanager
def capture(base: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of ``base``'s head (its late-layer activations) in each forward pass."""
    acts: list[torch.Tensor] = []
    handle = last_linear(base).register_forward_hook(lambda _m, inp, _out: acts.append(inp[0].flatten(1)))
    try:
        yield acts
    finally:
        handle.remove()


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` registered in the model."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head whose input could be read as late-layer activations")
    return linears[-1]
