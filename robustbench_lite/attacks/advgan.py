"""AdvGAN: "Generating Adversarial Examples with Adversarial Networks", Xiao, Li, Zhu, He, Liu
and Song, 2018, arXiv:1801.02610 (the semi-white-box setting: the target's gradients are
used while the generator trains, never at attack time)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite import devices
from robustbench_lite.attacks.base import Attack, scores
from robustbench_lite.params import integer, positive, value
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat

from . import _generator


def _margin(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    """C&W's untargeted loss: max(Z_y - max_{j != y} Z_j, -kappa), per example."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (true - other).clamp_min(-kappa)


def _non_negative(method: str, name: str, v: object) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
        raise ValueError(f"{method}: {name} must be a number >= 0, got {v!r}")


class _Discriminator(nn.Sequential):
    """AdvGAN's discriminator: c8 - c16 - c32 (stride 2, leaky ReLU) - linear."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__(nn.Conv2d(channels, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 2, 1),
                         nn.InstanceNorm2d(16), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 3, 1, 1), nn.InstanceNorm2d(32),
                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 1))


@ATTACKS.register("advgan", example={"train_n": 2000, "epochs": 2})
@dataclass(frozen=True, kw_only=True)
class AdvGAN(Attack):
    """A generator G trained against the target maps x to a perturbation in one forward pass:
    x_adv = clip(x + eps * G(x)) under L-inf (G ends in tanh); under L2, G(x) scaled into the
    ball.

    G minimises ``adv * L_adv + alpha * L_GAN + beta * L_hinge``: L_adv is C&W's margin
    max(Z_y - max_{j != y} Z_j, -kappa) on the target, L_GAN the least-squares GAN loss of a
    discriminator telling x from x + G(x), L_hinge = max(0, ||G(x)||_2 - c). Weights follow
    the authors' MNIST code (adv 10, alpha 1, beta 1). G is trained once per target model,
    eps and configuration on the first ``train_n`` training images, and stored in the results
    store; later calls reuse it.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --attack advgan --attack pgd --eps 0.1
    """

    batch_invariant = True

    train_n: int = integer(20000, "training images", lo=1)
    epochs: int = integer(15, "passes over them", lo=1)
    lr: float = positive(1e-3, "Adam's learning rate for G and D")
    kappa: float = value(0.0, "margin confidence", check=_non_negative, allowed="number >= 0")
    hinge: float = positive(0.8, "c as a fraction of the budget's L2 size eps * sqrt(D) under L-inf, or of eps under L2")
    width: int = integer(8, "channels of G's first layer (the paper's default)", lo=1)
    dataset: str = value("fmnist", "the training images' dataset")
    seed: int = value(0, "seeds G's training, so the stored generator is reproducible")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        tensors = _generator.trained("advgan", self.config(), model, threat, lambda: self._train(model, x.shape[1:], threat))
        g = _generator.load_net(x.shape[1], self.width, tensors, x.device)
        with torch.no_grad():
            out = torch.cat([(xb + _generator.to_budget(g(xb), threat, fill=False)).clamp(0, 1) for xb in x.split(500)])
        return threat.project(out, x)

    def _train(self, model: nn.Module, shape: tuple[int, ...], threat: Threat) -> dict[str, torch.Tensor]:
        dev = devices.of(model)
        x_all, y_all = _generator.training_images(self.dataset, self.train_n, tuple(shape), "advgan", dev)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)  # cpu: the data order, the same on every device
        g, d = _generator.PerturbationNet(shape[0], self.width).to(dev), _Discriminator(shape[0], shape[-1]).to(dev)
        opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=self.lr) for m in (g, d))
        dim = x_all[0].numel()
        c = self.hinge * (threat.eps * dim ** 0.5 if threat.norm == "linf" else threat.eps)
        for _ in range(self.epochs):
            for idx in torch.randperm(len(x_all), generator=gen).to(dev).split(128):  # cpu: see gen
                xb, yb = x_all[idx], y_all[idx]
                delta = _generator.to_budget(g(xb), threat, fill=False)
                x_adv = (xb + delta).clamp(0, 1)
                # Discriminator: real x -> 1, x + G(x) -> 0 (least squares).
                real, fake = torch.ones(len(xb), 1, device=dev), torch.zeros(len(xb), 1, device=dev)
                d_loss = F.mse_loss(d(xb), real) + F.mse_loss(d(x_adv.detach()), fake)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                # Generator: only its own parameters get gradients; the target's are never touched.
                l_adv = _margin(scores(model, x_adv, yb), yb, self.kappa).mean()
                l_gan = F.mse_loss(d(x_adv), real)
                l_hinge = (delta.flatten(1).norm(dim=1) - c).clamp_min(0).mean()
                loss = 10 * l_adv + l_gan + l_hinge
                _generator.step(g, opt_g, loss)
        return {k: v.detach().clone() for k, v in g.state_dict().items()}

