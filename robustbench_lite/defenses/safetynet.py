"""SafetyNet-style detector: "SafetyNet: Detecting and Rejecting Adversarial Examples
Robustly", Lu, Issaranon and Forsyth, 2017, arXiv:1704.00103."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite.params import integer, positive
from robustbench_lite.inference import eval_mode
from robustbench_lite.defenses.base import Detector
from robustbench_lite.views import capture
from robustbench_lite.registry import ATTACKS, DEFENSES
from robustbench_lite.threat import Threat


@DEFENSES.register("safetynet", kind="detector")
@dataclass(frozen=True, kw_only=True)
class SafetyNet(Detector):
    """Detector: a small classifier on the classifier's late-layer activation codes (the input
    of its head), trained to tell clean calibration points from PGD examples crafted on them.

    Lu 2017 used an RBF-SVM on quantised ReLU codes, which hides its gradient; this version
    uses a small MLP so that the joint attack (Carlini and Wagner 2017) has an honest gradient
    to follow, and the comparison with the classifier-only attack shows what hiding it buys.

    Of the ``calibration`` points, half train the MLP and half set the threshold.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense safetynet --attack pgd --eps 0.1
    """

    batch_invariant = True

    needs_activations = True

    eps: float = positive(0.1, "L-inf radius of the PGD-10 training examples (0.1: the headline eps)")
    hidden: int = integer(64, "width of the MLP's hidden layer", lo=1)
    epochs: int = integer(30, "passes of Adam over the training codes", lo=1)

    def fit(self, classifier: nn.Module, base: nn.Module, x: torch.Tensor, y: torch.Tensor,
            generator: torch.Generator) -> nn.Module:
        x_adv = ATTACKS.create("pgd", steps=10, early_stop=False)(classifier, x, y, Threat("linf", self.eps), generator=generator)
        batches: list[torch.Tensor] = []
        with torch.no_grad(), eval_mode(classifier):
            for xb in torch.cat([x, x_adv]).split(500):
                with capture(base) as acts:
                    classifier(xb)
                batches.append(acts[-1].view(-1, len(xb), acts[-1].shape[-1]).mean(0))  # mean over EOT draws
        codes = torch.cat(batches)
        labels = torch.cat([torch.zeros(len(x), device=x.device), torch.ones(len(x), device=x.device)])
        mu, sd = codes.mean(0), codes.std(0).clamp_min(1e-6)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=x.device)))
            mlp = nn.Sequential(_Standardize(mu, sd), nn.Linear(codes.shape[1], self.hidden), nn.ReLU(),
                                nn.Linear(self.hidden, 1)).to(x.device)
        opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
        for _ in range(self.epochs):
            for idx in torch.randperm(len(codes), generator=generator, device=x.device).split(128):
                opt.zero_grad()
                F.binary_cross_entropy_with_logits(mlp(codes[idx]).squeeze(1), labels[idx]).backward()
                opt.step()
        mlp.requires_grad_(False)
        return mlp.eval()

    def score(self, parts: nn.Module | None, classifier: nn.Module, x: torch.Tensor, logits: torch.Tensor,
              activations: torch.Tensor | None, bpda: bool) -> torch.Tensor:
        assert parts is not None and activations is not None  # fit() ran and needs_activations is set
        # Under EOT the head saw several draws of each input: average their scores.
        return parts(activations).view(-1, len(x)).mean(0)


class _Standardize(nn.Module):
    def __init__(self, mu: torch.Tensor, sd: torch.Tensor):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.mu) / self.sd
