"""A model with its defenses as the engine attacks and judges it (:class:`Setup`), and the
detector fitting it needs."""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import devices
from ..cell import digest, without_code
from ..data import Split
from ..defenses.base import Defense, Detector
from ..inference import eval_mode, predict
from ..stats import auc
from ..views import Defended, Fitted, Guarded, vote
from ..views import fit as fit_detector
from ..zoo import LoadedModel

from .guard import Guard
from .plan import ADAPTIVE_MODES, Plan, cell_seed, method_identity

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """A model with its defenses as the engine attacks and judges it: the deployed model and the
    judge run on the engine's own model, the attack's view on the private copy (``Guard``), with
    its own copies of the defenses."""

    model: nn.Module
    guard: Guard
    pre: tuple[Defense, ...]
    detector: Fitted | None
    mode: str
    eot: int
    votes: int
    batch_size: int

    @property
    def attack_model(self) -> nn.Module:
        return self.guard.attack_model

    @property
    def defended(self) -> bool:
        return bool(self.pre) or self.detector is not None

    @property
    def parts(self) -> tuple[Defense | Detector, ...]:
        return self.pre + ((self.detector.detector,) if self.detector is not None else ())

    def ladder_views(self, seed: int) -> tuple[nn.Module | None, nn.Module | None]:
        """What the escalation's defense_bpda and oblivious steps attack: BPDA through every defense
        step, and the bare classifier; (None, None) without a defense."""
        if not self.defended:
            return None, None
        return dataclasses.replace(self, mode="bpda").views(seed)[1], self.attack_model

    def views(self, seed: int) -> tuple[nn.Module, nn.Module, Any]:
        """The deployed model, the attack's view of it, and the judge of its predictions."""
        if not self.defended:
            return self.model, self.attack_model, functools.partial(predict, self.model, batch_size=self.batch_size)
        classifier = Defended(self.model, self.pre, seed=seed)
        deployed: nn.Module = classifier
        attacked = Defended(self.attack_model, copy.deepcopy(self.pre), seed=seed)
        attacked.generator = classifier.generator  # one stream of defense randomness per cell, as before
        surface: nn.Module = (attacked.surface(self.eot, bpda_all=self.mode == "bpda") if self.mode in ADAPTIVE_MODES
                              else self.attack_model)
        if self.detector is not None:
            deployed = Guarded(classifier, self.model, self.detector, bpda=False)
            if self.mode in ADAPTIVE_MODES:
                surface = Guarded(surface, self.attack_model, self.detector, bpda=True)
        return deployed, surface, functools.partial(vote, deployed, votes=self.votes, batch_size=self.batch_size)


_FITTED: dict[str, Fitted] = {}


def fitted_detector(detector: Detector, lm: LoadedModel, pre: tuple[Defense, ...], calib: Split, seed: int) -> Fitted:
    """Fit a detector on clean calibration points, once per model, chain, code and calibration
    set. The fit's draws are seeded without the code's fingerprints (as a cell's are), so that
    ``rbl verify`` under changed code fits with the same draws."""
    identities = [method_identity(m)[0] for m in (detector, *pre)]
    draws = digest({"weights": lm.weights_sha256, "detector": without_code(identities[0]),
                    "pre": [without_code(i) for i in identities[1:]], "calibration": calib.sha256(), "seed": seed,
                    "device": str(devices.of(lm.model))})
    key = digest({"draws": draws, "code": identities})
    if key not in _FITTED:
        classifier = Defended(lm.model, pre, seed=cell_seed(draws, "defense"))
        with eval_mode(lm.model):
            dev = devices.of(lm.model)
            _FITTED[key] = fit_detector(detector, classifier.surface(1), lm.model, calib.floats().to(dev),
                                        calib.labels.to(dev), seed=cell_seed(draws, "fit"))
        while len(_FITTED) > 16:
            _FITTED.pop(next(iter(_FITTED)))
    return _FITTED[key]


def held(logits: torch.Tensor, y: torch.Tensor, rejects: bool) -> torch.Tensor:
    """Whether the defense held at adversarial inputs: classified correctly, or rejected."""
    pred = logits.argmax(1)
    return (pred == y) | (pred == logits.shape[1] - 1) if rejects else pred == y


def detection_rates(deployed: nn.Module, judge: Any, x: torch.Tensor, y: torch.Tensor, x_final: torch.Tensor,
               clean_correct: torch.Tensor, clean_logits: torch.Tensor) -> dict[str, float | None]:
    final = judge(x_final)
    reject = final.shape[1] - 1
    caught = clean_correct & (final.argmax(1) == reject)

    def margin(v: torch.Tensor) -> torch.Tensor:  # reject logit over the best class: monotone in the score
        return torch.cat([o[:, -1] - o[:, :-1].amax(1) for o in map(deployed, v.split(500))])

    with torch.no_grad(), eval_mode(deployed):
        m_clean, m_adv = margin(x), margin(x_final)
    # Adversarial inputs that fool the classifier alone (its K columns) against clean inputs.
    fooled = clean_correct & (final[:, :-1].argmax(1) != y)
    return {"caught": int(caught.sum()) / len(x),
            "clean_rejected": int((clean_logits.argmax(1) == reject).sum()) / len(x),
            "detection_auc": auc(m_clean[clean_correct], m_adv[fooled])}


def deploy(plan: Plan) -> Setup:
    """The plan's model as the engine attacks and judges it: its detector fitted (once per model,
    chain and calibration set) and a guard over the model and the detector's fitted parts."""
    fitted = (fitted_detector(plan.detector, plan.lm, plan.pre, plan.calibration, plan.seed)
              if plan.detector is not None else None)
    return Setup(plan.lm.model, Guard(plan.lm.model, fitted), plan.pre, fitted, plan.mode, plan.eot, plan.votes,
                 plan.batch_size)
