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
from robustbench_lite.params import integer, params, real, value
from robustbench_lite.registry import DEFENSES

from . import _purifier

NORMS = ("l1", "l2")
_AUTOENCODER = "a trained autoencoder, by cache name or checkpoint folder (``rbl train-generative --model dae``)"


def _check_norms(method: str, name: str, norms: Any) -> None:
    parts = norms.split("+") if isinstance(norms, str) else []
    if not parts or any(p not in NORMS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"{method}: {name} must be l1, l2 or l1+l2, got {norms!r}")


def _as_in(part: type, name: str) -> Any:
    """``part``'s declaration of the field ``name`` (its default, doc and allowed values), unchecked
    here: the part checks it when it is built, and its errors name the part."""
    f, p = next((f, p) for f, p in params(part) if f.name == name)
    return value(f.default, f"{p.doc}; checked by ``{part.registered_as}``", allowed=p.allowed)


@DEFENSES.register("magnet_reformer", kind="purifier")
@dataclass(frozen=True, kw_only=True)
class MagnetReformer(_purifier.Reconstruct):
    """MagNet's reformer: x -> AE(x). Deterministic and differentiable (full gradients in the
    adaptive mode, the identity under ``--mode bpda``).
    """

    model: str = value("dae-fmnist", _AUTOENCODER)


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
    """

    batch_invariant = True

    fpr: float = real(0.001, "the false-positive rate on clean calibration data that sets the threshold "
                             "(0.001: the paper's)", lo=0, hi=1, interval="()")
    calibration: int = integer(10000, "the last N training points, half to scale the errors, half to set the "
                                      "threshold (a 0.1% rate needs thousands of points)", lo=100)
    model: str = value("dae-fmnist", _AUTOENCODER)
    norms: str = value("l1+l2", "the reconstruction errors used", check=_check_norms, allowed="l1, l2 or l1+l2")

    def validate(self, method: str) -> None:
        generative.require(method, self.model, "reconstruct")

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
    ``magnet_detector``; rejected adversarial inputs count as caught. Its fields are those of
    the parts, which check them when :meth:`parts` builds them (so an error names the part).

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense magnet --attack pgd --eps 0.1
    """

    model: str = _as_in(MagnetReformer, "model")
    norms: str = _as_in(MagnetDetector, "norms")
    fpr: float = _as_in(MagnetDetector, "fpr")
    calibration: int = _as_in(MagnetDetector, "calibration")

    def validate(self, method: str) -> None:
        self.parts()  # a bad argument fails here, named by the part that checks it

    def parts(self) -> tuple[Defense | Detector, ...]:
        return (MagnetReformer(model=self.model),
                MagnetDetector(model=self.model, norms=self.norms, fpr=self.fpr, calibration=self.calibration))
