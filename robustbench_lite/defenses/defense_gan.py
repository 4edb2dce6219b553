"""Defense-GAN: "Defense-GAN: Protecting Classifiers Against Adversarial Attacks Using
Generative Models", Samangouei, Kabkab and Chellappa 2018, arXiv:1805.06605. The input is
replaced by its closest image on the generator's range, G(z*), z* = argmin_z ||G(z) - x||^2,
found by L steps of gradient descent from R random starts. Athalye et al. 2018 (Section 5.3)
attacked it with BPDA; the engine does so with the identity, and with EOT over the starts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustbench_lite.generative import base as generative
from robustbench_lite.params import integer, positive, value
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES

from . import _purifier


@DEFENSES.register("defense_gan", kind="purifier")
@dataclass(frozen=True, kw_only=True)
class DefenseGAN(Defense):
    """Project onto a generator's range; declared non-differentiable (an inner optimisation)
    and random (the restarts: EOT, and a majority vote). Its BPDA backward pass is the
    projection's implicit gradient (:func:`generative.through_range`), not the identity;
    ``--mode bpda`` still measures the identity.

    The descent on z takes momentum 0.7, as in the authors' code.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense defense_gan:steps=50,restarts=4 --attack pgd --eps 0.1
    """

    differentiable = False
    stochastic = True

    model: str = value("gan-fmnist", "a trained GAN (``rbl train-generative --model gan``), or any generative "
                                     "model that can decode (a VAE's decoder), by cache name or checkpoint folder")
    steps: int = integer(200, "gradient-descent steps L on z (200: the paper's)", lo=1)
    restarts: int = integer(10, "random starts R, the best kept (10: the paper's)", lo=1)
    lr: float = positive(10.0, "step size on the per-pixel mean squared error (10: the paper's)")

    def validate(self, method: str) -> None:
        generative.require(method, self.model, "sample")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        net, z = self._project(x, generator)
        with torch.no_grad():
            return net.decode(z).to(x.dtype)

    def bpda(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # The real projection forward; backward, the projector onto the generator's tangent space
        # at z* (the projection's own gradient, by the implicit function theorem).
        net, z = self._project(x.detach(), generator)
        return generative.through_range(net, z, x)

    def _project(self, x: torch.Tensor, generator: torch.Generator | None) -> tuple[generative.GenerativeModel, torch.Tensor]:
        net = _purifier.net(self.model, x)
        return net, generative.invert(net, x, steps=self.steps, restarts=self.restarts, lr=self.lr, generator=generator)

    def config(self) -> dict[str, Any]:
        return _purifier.config(self, self.model)
