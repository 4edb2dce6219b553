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
from robustbench_lite.validation import check_choice, check_int, check_interval, check_positive
from robustbench_lite.inference import eval_mode
from robustbench_lite.data import Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.inference import predictions
from robustbench_lite.registry import ATTACKS, EXPERIMENTS
from robustbench_lite.threat import Threat
from robustbench_lite.zoo import LoadedModel


EXAMPLES = 4  # test points kept with each artifact for the clean + perturbation = adversarial figure


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
    matrices of how A's perturbation and A's PGD examples fool B.

    Args:
        xi: radius of the perturbation (default 0.1, the headline eps).
        norm: ``linf`` (default) or ``l2``.
        method: ``deepfool`` (default, Moosavi-Dezfooli 2017) or ``sgd`` (Shafahi 2020), see :func:`craft`.
        delta: stop at a training fooling rate of 1 - delta (default 0.2, as in the paper).
        passes: passes over the training images at most (default 10).
        n_train: training images it is crafted on (default 2000, the first of the split).
        n_test: held-out test points it is measured on (default 1000).
        pgd_steps: steps of the per-example PGD it is compared with (default 20).

    Example:
        >>> rbl experiment universal --models smallcnn-fmnist-standard resnet10t-fmnist-standard
    """

    xi: float = 0.1
    norm: str = "linf"
    method: str = "deepfool"
    delta: float = 0.2
    passes: int = 10
    n_train: int = 2000
    n_test: int = 1000
    pgd_steps: int = 20

    def __post_init__(self) -> None:
        check_positive("universal", "xi", self.xi)
        Threat(self.norm, self.xi)
        check_choice("universal", "method", self.method, ("deepfool", "sgd"))
        check_interval("universal", "delta", self.delta, 0, 1, "[)")
        check_int("universal", "passes", self.passes, 1)
        check_int("universal", "n_train", self.n_train, 1)
        check_int("universal", "n_test", self.n_test, 1)
        check_int("universal", "pgd_steps", self.pgd_steps, 1)

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
