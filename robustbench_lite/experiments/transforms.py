"""Robustness of adversarial examples under transformations: "Adversarial examples in the
physical world", Kurakin, Goodfellow and Bengio, 2017, arXiv:1607.02533 (Section 4, the
destruction rate)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torchvision.transforms.functional as TF

from robustbench_lite.defenses.gaussian_noise import GaussianNoise
from robustbench_lite.defenses.jpeg import JPEG
from robustbench_lite import devices
from robustbench_lite.params import integer, positive, value
from robustbench_lite.data import Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.inference import predictions
from robustbench_lite.registry import EXPERIMENTS
from robustbench_lite.specs import attack as make_attack
from robustbench_lite.threat import Threat
from robustbench_lite.zoo import LoadedModel

Transform = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def _rescale(x: torch.Tensor, s: float, _: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    resized = TF.resize(x, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)
    return TF.center_crop(resized, [h, w]).clamp(0, 1)  # crops a larger image, zero-pads a smaller one


# Each transformation with the strengths it is measured at, weakest first.
TRANSFORMS: dict[str, tuple[Transform, tuple[float, ...]]] = {
    "jpeg_quality": (lambda x, q, g: JPEG(quality=int(q)).transform(x, g), (90, 75, 50, 30, 10)),
    "blur_sigma": (lambda x, s, g: TF.gaussian_blur(x, [5, 5], [s, s]), (0.5, 0.75, 1.0, 1.5, 2.0)),
    "noise_sigma": (lambda x, s, g: GaussianNoise(sigma=s).transform(x, g), (0.02, 0.05, 0.1, 0.15, 0.2)),
    "brightness_delta": (lambda x, d, g: (x + d).clamp(0, 1), (0.05, 0.1, 0.2, 0.3, 0.4)),
    "contrast_factor": (lambda x, c, g: (x * c).clamp(0, 1), (0.9, 0.8, 0.7, 0.6, 0.5)),
    # Bilinear: nearest-neighbour rotation by 2 degrees leaves a 28x28 image unchanged.
    "rotation_degrees": (lambda x, a, g: TF.rotate(x, a, interpolation=TF.InterpolationMode.BILINEAR), (2, 5, 10, 15, 20)),
    "rescale_factor": (_rescale, (0.95, 0.9, 0.85, 0.8, 0.75)),
}


def _attack_specs(method: str, field: str, specs: str) -> None:
    for a in specs.split("+"):
        make_attack(a)  # raises on an unknown attack or a bad argument


def destruction_rate(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                     transform: Callable[[torch.Tensor], torch.Tensor]) -> float | None:
    """Kurakin's d: among clean-correct points whose adversarial example fools the model, the
    share whose transformed adversarial example is classified correctly again."""
    fooled = (predictions(model, x) == y) & (predictions(model, x_adv) != y)
    if not bool(fooled.any()):
        return None
    return float((predictions(model, transform(x_adv[fooled])) == y[fooled]).float().mean())


@EXPERIMENTS.register("transforms")
@dataclass(frozen=True, kw_only=True)
class Transforms(Experiment):
    """Destruction rates of FGSM, BIM and least-likely-class examples under JPEG, blur,
    Gaussian noise, brightness, contrast, small rotations and rescales, each at five strengths.

    Example:
        >>> rbl experiment transforms:eps=0.1 --models smallcnn-fmnist-standard
    """

    attacks: str = value("fgsm+bim+illc", "the attacks whose examples are transformed; the default is Kurakin's three",
                         check=_attack_specs, allowed="'+'-separated attack specs")
    eps: float = positive(0.1, "L-inf radius of the examples")
    n: int = integer(1000, "first test points", lo=1)

    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        sub = test.first(min(self.n, len(test)))
        x, y = sub.floats(), sub.labels
        threat = Threat("linf", self.eps)
        names = self.attacks.split("+")
        outcomes = []
        for lm in models:
            g = devices.generator(seed, x.device)
            rates = torch.full((len(names), len(TRANSFORMS), 5), float("nan"))  # cpu: the results table
            table: dict[str, dict[str, list[float | None]]] = {}
            for i, name in enumerate(names):
                x_adv = threat.project(make_attack(name)(lm.model, x, y, threat, generator=g), x)
                table[name] = {}
                for j, (tname, (fn, strengths)) in enumerate(TRANSFORMS.items()):
                    row = [destruction_rate(lm.model, x, x_adv, y, lambda v, s=s, fn=fn: fn(v, s, g)) for s in strengths]
                    table[name][tname] = row
                    rates[i, j] = torch.tensor([float("nan") if r is None else r for r in row])  # cpu: the results table
            metrics = {"eps": self.eps, "n": len(sub), "attacks": names,
                       "strengths": {t: list(s) for t, (_, s) in TRANSFORMS.items()}, "destruction_rate": table}
            outcomes.append(Outcome(lm.name, metrics, {"destruction_rate": rates}))
        return outcomes
