"""Universal perturbations: "Universal adversarial perturbations", Moosavi-Dezfooli, Fawzi,
Fawzi and Frossard, 2017, arXiv:1610.08401 (Algorithm 1); with the cross-architecture
transfer matrices of its Table 2 and of Papernot et al. 2016 (arXiv:1605.07277)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from robustbench_lite.attacks.universal import craft, fooling_rate
from robustbench_lite import devices
from robustbench_lite.params import choice, integer, positive, real, value
from robustbench_lite.inference import eval_mode
from robustbench_lite.data import Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.inference import predictions
from robustbench_lite.registry import ATTACKS, EXPERIMENTS
from robustbench_lite.threat import Threat
from robustbench_lite.zoo import LoadedModel


EXAMPLES = 4  # test points kept with each artifact for the clean + perturbation = adversarial figure


def _norm(method: str, field: str, norm: str) -> None:
    Threat(norm, 0.0)  # raises on an unknown norm, naming the norms


def _examples(model: nn.Module, x: torch.Tensor, v: torch.Tensor, x_pgd: torch.Tensor) -> dict[str, torch.Tensor]:
    """Clean, universal and PGD versions of a few points with the model's top label and confidence,
    so the report draws them from the artifact instead of running the model again."""
    out = {}
    for name, imgs in (("clean", x), ("universal", (x + v).clamp(0, 1)), ("pgd", x_pgd)):
        with torch.no_grad(), eval_mode(model):
            p = torch.softmax(model(imgs), dim=1)
        out[f"example_{name}"] = imgs
        out[f"example_{name}_label"] = p.argmax(1)
        out[f"example_{name}_confidence"] = p.amax(1)
    return out


@EXPERIMENTS.register("universal")
@dataclass(frozen=True, kw_only=True)
class Universal(Experiment):
    """A universal perturbation per model, crafted on training images and measured on
    held-out test points, next to per-example PGD at the same eps; with several models, the
    matrices of how A's perturbation and A's PGD examples fool B. The perturbation is crafted
    by :func:`~robustbench_lite.attacks.universal.craft`.

    Example:
        >>> rbl experiment universal --models smallcnn-fmnist-standard resnet10t-fmnist-standard
    """

    xi: float = positive(0.1, "radius of the perturbation; the default is the headline eps")
    norm: str = value("linf", "norm of the perturbation's ball", check=_norm, allowed="one of linf, l2")
    method: str = choice("deepfool", "deepfool (Moosavi-Dezfooli 2017) or sgd (Shafahi 2020)", ("deepfool", "sgd"))
    delta: float = real(0.2, "stop at a training fooling rate of 1 - delta; the default is the paper's", lo=0, hi=1,
                        interval="[)")
    passes: int = integer(10, "passes over the training images at most", lo=1)
    n_train: int = integer(2000, "training images it is crafted on, the first of the split", lo=1)
    n_test: int = integer(1000, "held-out test points it is measured on", lo=1)
    pgd_steps: int = integer(20, "steps of the per-example PGD it is compared with", lo=1)

    def validate(self, method: str) -> None:
        Threat(self.norm, self.xi)  # the threat it is crafted under (xi None is refused here)

    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        threat = Threat(self.norm, self.xi)
        x_train = train.first(self.n_train).floats()
        sub = test.first(self.n_test)
        x, y = sub.floats(), sub.labels
        g = devices.generator(seed, x.device)
        preds = {lm.name: predictions(lm.model, x) for lm in models}
        perts, pgd = {}, {}
        crafted = {}
        for lm in models:
            v, train_rate = craft(lm.model, x_train, threat, method=self.method, delta=self.delta, passes=self.passes,
                                  generator=g)
            perts[lm.name] = v
            crafted[lm.name] = train_rate
            # Per-example PGD on the model's own predictions, so both measure prediction change.
            pgd[lm.name] = threat.project(ATTACKS.create("pgd", steps=self.pgd_steps, early_stop=False)(
                lm.model, x, preds[lm.name], threat, generator=g), x)
        outcomes = []
        for a in models:
            own = preds[a.name]
            metrics = {
                "xi": self.xi, "norm": self.norm, "n_test": len(sub), "train_fooling_rate": crafted[a.name],
                "fooling_rate": fooling_rate(a.model, x, perts[a.name], own),
                "clean_acc": float((own == y).float().mean()),
                "acc_under_perturbation": float((predictions(a.model, (x + perts[a.name]).clamp(0, 1)) == y).float().mean()),
                "pgd_fooling_rate": float((predictions(a.model, pgd[a.name]) != own).float().mean()),
                "universal_transfer": {b.name: fooling_rate(b.model, x, perts[a.name], preds[b.name]) for b in models},
                "pgd_transfer": {b.name: float((predictions(b.model, pgd[a.name]) != preds[b.name]).float().mean())
                                 for b in models},
            }
            outcomes.append(Outcome(a.name, metrics, {"perturbation": perts[a.name][0],
                                                      **_examples(a.model, x[:EXAMPLES], perts[a.name], pgd[a.name][:EXAMPLES])}))
        return outcomes
