"""The views of a defended model that the engine attacks and judges.

:class:`Defended` is a classifier behind preprocessing defenses, as deployed, or as the
adaptive attack sees it (BPDA through non-differentiable steps, EOT over random ones:
Athalye, Carlini and Wagner 2018, arXiv:1802.00420); :func:`vote` is its majority-vote
prediction. :class:`Guarded` is a classifier behind a fitted detector (Carlini and Wagner 2017,
"Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods",
arXiv:1705.07263): it outputs the classifier's K logits plus a reject logit that wins exactly
when the detector fires, ``max_j Z_j + scale * (score - threshold)``, and declares
``rejects = True`` so that every native attack folds the reject column into the true class
(``attacks.base.scores``): being caught is then as bad for the attacker as being right.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from . import devices
from .defenses.base import Defense, Detector
from .errors import TamperingError
from .inference import eval_mode


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
