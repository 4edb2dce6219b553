"""MagNet: "MagNet: a Two-Pronged Defense against Adversarial Examples", Meng and Chen 2017,
arXiv:1705.09064. An autoencoder trained on clean data is used twice: its reconstruction
error flags inputs far from the data manifold (the detectors, L1 and L2 errors, thresholds
at a 0.1% false-positive rate on clean validation data), and its reconstruction replaces the
input before the classifier (the reformer). Carlini and Wagner 2017 ("MagNet and 'Efficient
Defenses Against Adversarial Attacks' are Not Robust to Adversarial Examples",
arXiv:1711.08478) bypassed it by attacking classifier, reformer and detectors jointly, which
is what the engine's adaptive mode does."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_lite.generative import base as generative
from robustbench_lite.defenses.base import Composite, Defense
from robustbench_lite.defenses.base import Detector
from robustbench_lite.registry import DEFENSES

from . import _purifier

NORMS = ("l1", "l2")


@DEFENSES.register("magnet_reformer", kind="purifier")
@dataclass(frozen=True, kw_only=True)
class MagnetReformer(_purifier.Reconstruct):
    """MagNet's reformer: x -> AE(x). Deterministic and differentiable (full gradients in the
    adaptive mode, the identity under ``--mode bpda``).

    Args:
        model: a trained autoencoder (default ``dae-fmnist``; ``rbl train-generative --model dae``).
    """

    model: str = "dae-fmnist"


class _Scales(nn.Module):
    """Each error's own (1 - fpr/len(norms)) quantile on the fitting half, so that the errors
    are comparable and their maximum is one score."""

    def __init__(self, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scales", scales)


@DEFENSES.register("magnet_detector", kind="detector")
@dataclass(frozen=True, kw_only=True)
class MagnetDetector(Detector):
    """MagNet's reconstruction-error detectors on the raw input: the mean absolute (L1) and
    mean squared (L2) error of the autoencoder's reconstruction, each divided by its own
    quantile on clean fitting data; the score is their maximum, so the input is rejected when
    either detector fires. The threshold on that score sits at ``fpr`` on the other half of
    the clean calibration points.

    Args:
        model: a trained autoencoder (default ``dae-fmnist``).
        norms: the errors used, ``l1``, ``l2`` or ``l1+l2`` (default).
        fpr: false-positive rate on clean calibration data (default 0.001, the paper's).
        calibration: last N training points, half to scale the errors, half to set the
            threshold (default 10000: a 0.1% rate needs thousands of points).
    """

    batch_invariant = True

    model: str = "dae-fmnist"
    norms: str = "l1+l2"
    fpr: float = 0.001
    calibration: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = self.norms.split("+") if isinstance(self.norms, str) else []
        if not parts or any(p not in NORMS for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"magnet_detector: norms must be l1, l2 or l1+l2, got {self.norms!r}")
        generative.require("magnet_detector", self.model, "reconstruct")

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """(N, len(norms)) reconstruction errors, differentiable in x."""
        diff = (_purifier.net(self.model, x).reconstruct(x) - x).flatten(1)
        return torch.stack([diff.abs().mean(1) if p == "l1" else diff.pow(2).mean(1) for p in self.norms.split("+")], 1)

    def fit(self, classifier: nn.Module, base: nn.Module, x: torch.Tensor, y: torch.Tensor,
            generator: torch.Generator) -> nn.Module:
        with torch.no_grad():
            e = torch.cat([self.errors(b) for b in x.split(500)])
        q = 1 - self.fpr / e.shape[1]
        return _Scales(torch.quantile(e.double(), q, dim=0).float().clamp_min(1e-12))

    def score(self, parts: nn.Module | None, classifier: nn.Module, x: torch.Tensor, logits: torch.Tensor,
              activations: torch.Tensor | None, bpda: bool) -> torch.Tensor:
        assert isinstance(parts, _Scales)
        return (self.errors(x) / parts.scales).amax(1)

    def config(self) -> dict[str, Any]:
        return _purifier.config(self, self.model)


@DEFENSES.register("magnet", kind="composite")
@dataclass(frozen=True, kw_only=True)
class MagNet(Composite):
    """The whole of MagNet: the reformer in front of the classifier and the detectors on the
    raw input, both from one autoencoder. Expands to ``magnet_reformer`` then
    ``magnet_detector``; rejected adversarial inputs count as caught.

    Args:
        model: a trained autoencoder (default ``dae-fmnist``; ``rbl train-generative --model dae``).
        norms, fpr, calibration: the detector's, see ``magnet_detector``.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense magnet --attack pgd --eps 0.1
    """

    model: str = "dae-fmnist"
    norms: str = "l1+l2"
    fpr: float = 0.001
    calibration: int = 10000

    def __post_init__(self) -> None:
        self.parts()  # a bad argument fails here, named by the part that checks it

    def parts(self) -> tuple[Defense | Detector, ...]:
        return (MagnetReformer(model=self.model),
                MagnetDetector(model=self.model, norms=self.norms, fpr=self.fpr, calibration=self.calibration))
