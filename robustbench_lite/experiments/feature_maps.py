"""Feature maps of clean and adversarial images before and after a feature-denoising block,
the visualisation of Xie et al. 2019 ("Feature Denoising for Improving Adversarial
Robustness", arXiv:1812.03411, Figure 1), with the number behind it: how much an adversarial
perturbation changes the feature map, relative to its clean norm, before and after the block.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustbench_lite import devices
from robustbench_lite.params import integer, real
from robustbench_lite.inference import eval_mode
from robustbench_lite.data import Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.inference import predictions
from robustbench_lite.registry import ATTACKS, EXPERIMENTS
from robustbench_lite.threat import Threat
from robustbench_lite.zoo import LoadedModel
from robustbench_lite.zoo.denoise import DenoiseBlock

EXAMPLES = 4


def block_maps(model: torch.nn.Module, block: DenoiseBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the block's input, its output) on x: the feature map without and with denoising."""
    caught: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = block.register_forward_hook(lambda _m, inp, out: caught.append((inp[0].detach(), out.detach())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return caught[-1]


@EXPERIMENTS.register("feature_maps")
@dataclass(frozen=True, kw_only=True)
class FeatureMaps(Experiment):
    """Per model with denoising blocks (``<arch>_denoise``): PGD adversarial versions of the
    first ``n`` test points, and at the ``block``-th block the relative feature noise
    ||f(x_adv) - f(x)|| / ||f(x)|| on the block's input and output (median over points), and
    for four points the channel whose clean map is the most active, clean and adversarial,
    before and after the block.

    Example:
        >>> rbl experiment feature_maps --models smallcnn_denoise-fmnist-pgd_at
    """

    n: int = integer(200, "test points", lo=1)
    eps: float = real(0.1, "L-inf radius of the PGD examples", lo=0, hi=1)
    steps: int = integer(20, "steps of the L-inf PGD", lo=1)
    block: int = integer(0, "which denoising block, counted from 0", lo=0)

    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        sub = test.first(min(self.n, len(test)))
        x, y = sub.floats(), sub.labels
        outcomes = []
        for lm in models:
            blocks = [m for m in lm.model.modules() if isinstance(m, DenoiseBlock)]
            if self.block >= len(blocks):
                raise ValueError(f"feature_maps: model {lm.name} has {len(blocks)} denoising blocks, so block must be in "
                                 f"[0, {len(blocks) - 1}]; got {self.block} (use an <arch>_denoise model)")
            block = blocks[self.block]
            adv = ATTACKS.create("pgd", steps=self.steps)(lm.model, x, y, Threat("linf", self.eps),
                                                           generator=devices.generator(seed, x.device))
            with eval_mode(lm.model):
                (cin, cout), (ain, aout) = block_maps(lm.model, block, x), block_maps(lm.model, block, adv)

            def noise(a: torch.Tensor, c: torch.Tensor) -> float:
                return float(((a - c).flatten(1).norm(dim=1) / c.flatten(1).norm(dim=1).clamp_min(1e-12)).median())

            idx = torch.arange(min(EXAMPLES, len(x)), device=x.device)
            channel = cin[idx].flatten(2).abs().mean(2).argmax(1)  # the most active channel per point
            pick = (idx, channel)
            metrics = {"n": len(x), "eps": self.eps, "block": self.block, "op": block.op, "channels": int(cin.shape[1]),
                       "clean_acc": float((predictions(lm.model, x) == y).float().mean()),
                       "robust_acc": float((predictions(lm.model, adv) == y).float().mean()),
                       "feature_noise_before": noise(ain, cin), "feature_noise_after": noise(aout, cout)}
            outcomes.append(Outcome(lm.name, metrics, {
                "images": x[idx], "adversarial": adv[idx], "labels": y[idx], "channel": channel,
                "clean_before": cin[pick], "adv_before": ain[pick], "clean_after": cout[pick], "adv_after": aout[pick]}))
        return outcomes
