"""Universal perturbations ("Universal adversarial perturbations", Moosavi-Dezfooli et al., 2017,
arXiv:1610.08401): :func:`craft` makes one, and the ``universal`` attack applies a stored one.
``rbl experiment universal`` crafts, stores and measures them."""
from __future__ import annotations

import functools
from dataclasses import MISSING, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite import devices
from robustbench_lite.attacks.base import Attack, _direction
from robustbench_lite.attacks.deepfool import deepfool
from robustbench_lite.inference import eval_mode, predictions
from robustbench_lite.params import value
from robustbench_lite.paths import default_store
from robustbench_lite.registry import ATTACKS
from robustbench_lite.store import Store
from robustbench_lite.threat import Threat


def craft(model: nn.Module, x: torch.Tensor, threat: Threat, *, method: str = "deepfool", delta: float = 0.2,
          passes: int = 10, batch: int = 16, steps: int = 10, overshoot: float = 0.02, lr: float = 0.005,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """One perturbation v with ||v|| <= xi that changes the prediction on as many of ``x`` as
    it can; stops once the fooling rate on ``x`` reaches 1 - delta or after ``passes``.

    ``deepfool`` (the paper's Algorithm 1): for each point x + v does not fool yet, add its
    DeepFool step (L2, at most ``steps`` iterations, overshoot 0.02, as in the authors' code
    for every p) and project v back onto the ball. DeepFool runs batched over ``batch``
    points; the v updates are applied one point at a time, as in the paper.

    ``sgd`` (Shafahi et al. 2020, "Universal Adversarial Training", arXiv:1811.11304): signed
    (L-inf) or normalised (L2) gradient ascent on the mean cross-entropy over mini-batches of
    ``4 * batch`` points, step ``lr``, projected.

    Returns (v of shape (1, C, H, W), fooling rate on x).
    """
    with eval_mode(model):
        pred = predictions(model, x)
        v = torch.zeros_like(x[:1])
        rate = 0.0
        for _ in range(passes):
            if method == "sgd":
                for idx in torch.randperm(len(x), generator=generator, device=x.device).split(4 * batch):
                    vv = v.clone().requires_grad_(True)
                    loss = F.cross_entropy(model((x[idx] + vv).clamp(0, 1)), pred[idx])
                    (g,) = torch.autograd.grad(loss, vv)
                    v = _project(v + lr * _direction(g, threat, "sign"), threat)
            else:
                for idx in torch.randperm(len(x), generator=generator, device=x.device).split(batch):
                    xv = (x[idx] + v).clamp(0, 1)
                    with torch.no_grad():
                        alive = model(xv).argmax(1) == pred[idx]
                    if not bool(alive.any()):
                        continue
                    x_df, fooled = deepfool(model, xv[alive], pred[idx][alive], "l2", steps=steps, overshoot=overshoot)
                    for r in (x_df - xv[alive])[fooled]:
                        v = _project(v + r, threat)
            rate = fooling_rate(model, x, v, pred)
            if rate >= 1 - delta:
                break
    return v.detach(), rate


def _project(v: torch.Tensor, threat: Threat) -> torch.Tensor:
    if threat.norm == "linf":
        return v.clamp(-threat.eps, threat.eps)
    return v * min(1.0, threat.eps / max(v.norm().item(), 1e-12))


def fooling_rate(model: nn.Module, x: torch.Tensor, v: torch.Tensor, pred: torch.Tensor | None = None) -> float:
    """The share of points whose prediction changes when v is added (the paper's measure)."""
    pred = predictions(model, x) if pred is None else pred
    return float((predictions(model, (x + v).clamp(0, 1)) != pred).float().mean())


@functools.lru_cache(maxsize=8)
def _perturbation(artifact: str, store: str | None) -> tuple[str, torch.Tensor]:
    with Store(store or default_store()) as s:
        hits = [(k, t["perturbation"]) for k, _, t in s.artifacts("universal") if k.startswith(artifact)]
    if len(hits) != 1:
        found = "no" if not hits else f"{len(hits)}"
        raise ValueError(f"universal: {found} stored universal perturbations match artifact {artifact!r}; "
                         "run `rbl experiment universal --models ...` and pass the key it prints (or a unique prefix)")
    return hits[0]


def _artifact_key(method: str, name: str, v: object) -> None:
    if not isinstance(v, str) or len(v) < 4 or not all(c in "0123456789abcdef" for c in v):
        raise ValueError(f"{method}: {name} must be a hex key or a prefix of at least 4 characters, got {v!r}")


def _conformance_instance(model: nn.Module, x: torch.Tensor) -> "Universal":
    """For the conformance suite: a perturbation crafted on ``x`` and stored in the default store."""
    v, rate = craft(model, x, Threat("linf", 0.1), method="sgd", passes=10, lr=0.02, generator=devices.generator(0, x.device))
    with Store(default_store()) as s:
        key = s.put_artifact("universal", {"model": "conformance", "metrics": {"train_fooling_rate": rate}},
                             {"perturbation": v[0]})
    return Universal(artifact=key)


@ATTACKS.register("universal", conformance=_conformance_instance, norms=("linf",))
@dataclass(frozen=True, kw_only=True)
class Universal(Attack):
    """Adds one stored universal perturbation to every input, then projects onto the threat.

    The perturbation is crafted once, on training images, by ``rbl experiment universal``;
    this attack reuses it, so any model (its own or another architecture's, for transfer)
    can be scored against it through the engine and the leaderboard. ``artifact`` is required.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> rbl eval --model resnet10t-fmnist-standard --attack universal:artifact=3f2a --eps 0.1
    """

    batch_invariant = True

    artifact: str = value(MISSING, "the key (or a unique prefix) of a universal artifact in the store; required",
                          check=_artifact_key, allowed="a hex key or a prefix of at least 4 characters")
    store: str | None = value(None, "the results store holding it; None means the user's store")

    def config(self) -> dict:
        # The full key, not the prefix the user typed, identifies the cell.
        return super().config() | {"artifact": _perturbation(self.artifact, self.store)[0], "store": None}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        _, v = _perturbation(self.artifact, self.store)
        if v.shape != x.shape[1:]:
            raise ValueError(f"universal: the stored perturbation has shape {tuple(v.shape)}, the inputs {tuple(x.shape[1:])}")
        return threat.project(x + v.to(x), x)
