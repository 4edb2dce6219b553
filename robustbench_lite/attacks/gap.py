"""Generative adversarial perturbations: "Generative Adversarial Perturbations", Poursaeed,
Katsman, Gao and Belongie, 2018, arXiv:1712.02328. A generator maps either a fixed noise
pattern (a universal perturbation) or the image itself (an image-dependent one) to a
perturbation, rescaled to fill the budget."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite import devices
from robustbench_lite.attacks.base import Attack, scores
from robustbench_lite.params import choice, integer, positive, value
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat

from . import _generator


@ATTACKS.register("gap", example={"train_n": 3000, "epochs": 3, "lr": 3e-3})
@dataclass(frozen=True, kw_only=True)
class GAP(Attack):
    """``mode=universal``: delta = s(G(z)) for one fixed z ~ U(0, 1), the same for every input.
    ``mode=image``: delta = s(G(x)). The scaling s fills the budget (L-inf: the largest
    coordinate at eps; L2: norm eps). G (AdvGAN's ResNet generator) minimises the paper's
    untargeted fooling loss -log(CE(f(x + delta), y)) with Adam on the first ``train_n``
    training images, once per target model, eps and configuration; it is stored in the
    results store and reused.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --attack gap --attack gap:mode=image --eps 0.1
    """

    batch_invariant = True

    mode: str = choice("universal", "one perturbation for every input, or one per image", ("universal", "image"))
    train_n: int = integer(20000, "training images", lo=1)
    epochs: int = integer(10, "passes over them", lo=1)
    lr: float = positive(1e-3, "Adam's learning rate")
    width: int = integer(8, "channels of G's first layer", lo=1)
    dataset: str = value("fmnist", "the training images' dataset")
    seed: int = value(0, "seeds z and G's training")

    def _input(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z.expand(len(x), *z.shape[1:]) if self.mode == "universal" else x

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        tensors = _generator.trained("gap", self.config(), model, threat, lambda: self._train(model, shape, threat))
        g = _generator.load_net(shape[0], self.width, tensors, x.device)
        z = self._noise(shape).to(x.device)
        with torch.no_grad():
            out = torch.cat([(xb + _generator.to_budget(g(self._input(xb, z)), threat, fill=True)).clamp(0, 1)
                             for xb in x.split(500)])
        return threat.project(out, x)

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand((1, *shape), generator=torch.Generator().manual_seed(self.seed))  # cpu: fixed noise, moved by callers

    def _train(self, model: nn.Module, shape: tuple[int, ...], threat: Threat) -> dict[str, torch.Tensor]:
        dev = devices.of(model)
        x_all, y_all = _generator.training_images(self.dataset, self.train_n, shape, "gap", dev)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)  # cpu: the data order, the same on every device
        g = _generator.PerturbationNet(shape[0], self.width).to(dev)
        opt = torch.optim.Adam(g.parameters(), lr=self.lr, betas=(0.5, 0.999))
        z = self._noise(shape).to(dev)
        for _ in range(self.epochs):
            for idx in torch.randperm(len(x_all), generator=gen).to(dev).split(128):  # cpu: see gen
                xb, yb = x_all[idx], y_all[idx]
                delta = _generator.to_budget(g(self._input(xb, z)), threat, fill=True)
                ce = F.cross_entropy(scores(model, (xb + delta).clamp(0, 1), yb), yb)
                _generator.step(g, opt, -torch.log(ce.clamp_min(1e-12)))
        return {k: v.detach().clone() for k, v in g.state_dict().items()}
