"""Minimal perturbations: "Intriguing properties of neural networks", Szegedy et al., 2014,
arXiv:1312.6199 (box-constrained L-BFGS), and DeepFool, Moosavi-Dezfooli et al., 2016,
arXiv:1511.04599; cross-checked against foolbox's DeepFool and C&W-L2 (Carlini and Wagner
2017, arXiv:1608.04644)."""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Sequence

import torch

from robustbench_lite.attacks.deepfool import deepfool
from robustbench_lite.attacks.lbfgs import lbfgs
from robustbench_lite.params import choice, integer, value
from robustbench_lite.validation import check_choice
from robustbench_lite.inference import eval_mode
from robustbench_lite.data import Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.inference import predictions
from robustbench_lite.registry import EXPERIMENTS
from robustbench_lite.threat import Threat
from robustbench_lite.zoo import LoadedModel

METHODS = ("deepfool", "lbfgs", "fb_deepfool", "fb_cw")


def _methods(method: str, field: str, names: str) -> None:
    for m in names.split("+"):
        check_choice(method, field, m, METHODS)


def _foolbox(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    import foolbox as fb

    if name == "fb_cw":
        if norm != "l2":
            raise ValueError("min_norm: fb_cw is an L2 attack; use norm=l2")
        attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=500)
    else:
        attack = (fb.attacks.L2DeepFoolAttack if norm == "l2" else fb.attacks.LinfDeepFoolAttack)(steps=50, overshoot=0.02)
    with torch.random.fork_rng():
        _, x_adv, ok = attack(fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y, epsilons=None)
    return x_adv.detach(), ok


@EXPERIMENTS.register("min_norm")
@dataclass(frozen=True, kw_only=True)
class MinNorm(Experiment):
    """The smallest perturbation that changes the label, per point: its distribution, median,
    and success rate, which must be 100% for the median to mean anything (REFERENCES.md: a
    minimum-norm attack is never clipped to an eps and reported as "no effect").

    Example:
        >>> rbl experiment min_norm:methods=deepfool+fb_cw --models smallcnn-fmnist-standard
    """

    methods: str = value("deepfool+lbfgs+fb_deepfool", "the attacks run: deepfool and lbfgs are ours, fb_deepfool and "
                         "fb_cw foolbox's, as references", check=_methods,
                         allowed="'+'-separated names among " + ", ".join(METHODS))
    norm: str = choice("l2", "the norm minimised; linf with DeepFool only, as lbfgs and fb_cw are L2", ("l2", "linf"))
    n: int = integer(200, "correctly classified test points measured", lo=1)

    def validate(self, method: str) -> None:
        if self.norm == "linf" and "lbfgs" in self.methods.split("+"):
            raise ValueError(f"{method}: lbfgs minimises the L2 norm; use norm=l2")

    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        outcomes = []
        for lm in models:
            x, y = test.floats(), test.labels
            ok = predictions(lm.model, x) == y
            x, y = x[ok][: self.n], y[ok][: self.n]
            metrics: dict[str, object] = {"norm": self.norm, "n": len(x)}
            tensors = {}
            with eval_mode(lm.model):
                for method in self.methods.split("+"):
                    if method == "deepfool":
                        x_adv, _ = deepfool(lm.model, x, y, self.norm)
                    elif method == "lbfgs":
                        x_adv, _ = lbfgs(lm.model, x, y)
                    else:
                        x_adv, _ = _foolbox(method, lm.model, x, y, self.norm)
                    # Success is re-judged here, not taken from the attack.
                    fooled = predictions(lm.model, x_adv) != y
                    dist = Threat(self.norm, math.inf).distance(x_adv, x)
                    dist = torch.where(fooled, dist, torch.full_like(dist, float("inf")))
                    q = torch.quantile(dist[fooled], torch.tensor([0.1, 0.5, 0.9], device=dist.device)).tolist() if bool(fooled.any()) else [None] * 3
                    metrics[method] = {"success": float(fooled.float().mean()), "median": q[1], "p10": q[0], "p90": q[2]}
                    tensors[f"{method}_distance"] = dist
            outcomes.append(Outcome(lm.name, metrics, tensors))
        return outcomes
