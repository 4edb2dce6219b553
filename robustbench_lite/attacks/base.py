"""The attack protocol and the gradient loop that FGSM, BIM, ILLC and PGD share.

Attacks are stateless: the model, inputs, labels and threat come in on every call, and
hyperparameters are frozen keyword-only dataclass fields. An attack returns x_adv; the
engine checks it against the threat and judges it.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ATTACKS
from ..rng import PointStreams, as_generator
from ..inference import eval_mode
from ..threat import Threat
from ..params import Validated
from ..validation import check_batch

TARGETS = ("none", "least_likely", "next", "random")
DIRECTIONS = ("sign", "gradient")


def input_grad(loss: torch.Tensor, x: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    """d loss / d x, and zero where the model's output does not depend on ``x`` in the autograd
    graph at all (a forward pass that detaches its input, or runs its own optimisation): such a
    model gives an attack nothing to follow, which is the masking checks' business, not an error."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(loss, x, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def live(g: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
    """Per row of a gradient, whether an attack can follow it: finite and not zero (the gradients
    check's rule). None (the output does not depend on that tensor) is dead on all ``n`` rows."""
    if g is None:
        return torch.zeros(n or 0, dtype=torch.bool)  # cpu: no tensor to follow; callers count it
    norms = g.flatten(1).norm(dim=1)
    return torch.isfinite(norms) & (norms > 0)


def module_calls(model: nn.Module, x: torch.Tensor,
                 keep: Callable[[str, nn.Module], bool]) -> tuple[Any, list[tuple[str, tuple[Any, ...], Any]]]:
    """One forward pass of ``model`` on ``x`` (eval mode, no gradients): its output and, in call
    order, every call (name, args, output) of the submodules that ``keep(name, module)`` selects."""
    calls: list[tuple[str, tuple[Any, ...], Any]] = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, args, out)))
               for name, m in model.named_modules() if keep(name, m)]
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, calls


def target_ranks(targets: int, n_classes: int) -> list[int | None]:
    """The target ranks a targeted attack runs (APGD-T, FAB-T): 1 to ``targets``, no more than there
    are other classes; [None] for an untargeted run (``targets`` 0)."""
    return list(range(1, min(targets, n_classes - 1) + 1)) if targets else [None]


def ranked_target(ranked: torch.Tensor, y: torch.Tensor, rank: int | None) -> torch.Tensor | None:
    """Per point, the ``rank``-th most likely class that is not the label (``ranked``: classes by
    decreasing clean score), the targets of APGD-T and FAB-T; None for an untargeted run."""
    if rank is None:
        return None
    return ranked[ranked != y[:, None]].view(len(y), -1)[:, rank - 1]


@dataclass(frozen=True, kw_only=True)
class Attack(Validated, ABC):
    """Base class: subclasses add frozen hyperparameter fields and implement ``run``.

    ``batch_invariant`` declares that the attack's result for a point depends on that point and
    its random stream alone, never on the other points of its batch: it draws every random number
    from the :class:`~robustbench_lite.rng.PointStreams` that ``run`` receives as ``generator``, and
    couples no points (no batch-wide early exit that changes a survivor's path, no batch
    statistics). Its cells then leave the batch size out of their key. An attack that does not
    declare it receives a plain ``torch.Generator`` and its cells are keyed by the batch size; the
    conformance suite tests the declaration (``conformance.check_attack``).

    Hyperparameters are declared with :mod:`robustbench_lite.params` (default, bounds, doc), which
    validates them and writes the ``Args:`` docs. An eps of 0 never reaches ``run``: x is returned.
    """

    batch_invariant: ClassVar[bool] = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
                 *, generator: torch.Generator | PointStreams | None = None) -> torch.Tensor:
        if not isinstance(threat, Threat):
            raise TypeError(f"threat must be a Threat, got {type(threat).__name__}")
        check_batch(x, y, threat.bounds)
        if x.shape[0] == 0 or threat.eps == 0:
            return x.clone()  # nothing to attack, or no room to move: x is the answer
        rng = PointStreams.of(generator, x.shape[0], x.device) if self.batch_invariant else as_generator(generator)
        with eval_mode(model):
            x_adv = self.run(model, x.detach(), y, threat, rng)
        return x_adv.detach()

    @abstractmethod
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: Any) -> torch.Tensor:
        """``generator`` is a :class:`PointStreams` for a batch-invariant attack, else a ``torch.Generator`` or None."""

    def config(self) -> dict[str, Any]:
        """Every hyperparameter, resolved, for the results-store key."""
        return {"attack": ATTACKS.name_of(type(self)), **dataclasses.asdict(self)}


def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's logits as an attack must read them.

    A model that can reject (a classifier behind a detector, ``rejects = True``) outputs a
    last "rejected" column. It is folded into the true class with logaddexp, so cross-entropy
    is -log(p_y + p_reject) and argmax leaves y only when the input is misclassified and not
    rejected: every loss then treats being caught like being classified correctly
    (Carlini and Wagner 2017, arXiv:1705.07263).
    """
    out = model(x)
    if not getattr(model, "rejects", False):
        return out
    z, reject = out[:, :-1], out[:, -1:]
    return z.scatter(1, y[:, None], torch.logaddexp(z.gather(1, y[:, None]), reject))


def targets_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str,
                generator: torch.Generator | PointStreams | None) -> torch.Tensor | None:
    """Target classes for a targeted attack, or None for an untargeted one."""
    if mode == "none":
        return None
    with torch.no_grad():
        logits = scores(model, x, y)
    k = logits.shape[1]
    if mode == "least_likely":  # Kurakin 2017: y_LL = argmin p(y|x)
        return logits.argmin(1)
    if mode == "next":
        return (y + 1) % k
    if isinstance(generator, PointStreams):
        offset = generator.randint(1, k, ()).to(y.device)
    else:
        offset = torch.randint(1, k, y.shape, generator=generator, device=y.device)
    return (y + offset) % k


def _direction(grad: torch.Tensor, threat: Threat, kind: str) -> torch.Tensor:
    if threat.norm == "l2":
        norms = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        return grad / norms.view(-1, *([1] * (grad.ndim - 1)))
    if kind == "sign":
        return grad.sign()
    # Raw gradient, scaled so that its largest entry moves by exactly the step size.
    return grad / grad.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))


def gradient_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, *,
    steps: int, step_size: float, random_start: bool, restarts: int = 1, target: str = "none",
    direction: str = "sign", early_stop: bool = True, generator: torch.Generator | PointStreams | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy: the loop behind FGSM, BIM, ILLC and PGD.

    Untargeted steps go up CE(x', y); targeted ones go down CE(x', t). With ``early_stop``
    a point stops moving once it is misclassified, and later restarts only see the points
    that every earlier restart failed on, so a weak model costs little. Every random number
    comes from per-point streams (each restart its own), so no point's path depends on the others.
    """
    streams = PointStreams.of(generator, x.shape[0], x.device)
    t = targets_for(model, x, y, target, streams)
    goal = t if t is not None else y
    if random_start or steps * step_size > threat.eps:
        project = threat.project
    else:
        # Steps that cannot add up to more than eps never leave the ball, and clipping to the
        # box only moves a point towards x: one clamp is the exact projection (FGSM's case).
        def project(v: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return v.clamp(*threat.bounds)
    out: torch.Tensor | None = None
    remaining = None  # None means every point: the first restart gathers nothing
    for r in range(restarts):
        xs, ys, gs = (x, y, goal) if remaining is None else (x[remaining], y[remaining], goal[remaining])
        idx = remaining if remaining is not None else torch.arange(x.shape[0], device=x.device)
        xa = threat.random_start(xs, streams.child(r)[idx]) if random_start else xs
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            logits = scores(model, xa, ys)
            keep = None
            if early_stop:
                alive = logits.argmax(1) == ys
                if not bool(alive.all()):
                    out = x.clone() if out is None else out
                    out[idx[~alive]] = xa.detach()[~alive]
                    keep = alive.nonzero().squeeze(1)
                    idx, xs, ys, gs = idx[keep], xs[keep], ys[keep], gs[keep]
                    if idx.numel() == 0:
                        break
                    logits = logits[keep]
            loss = F.cross_entropy(logits, gs, reduction="sum")
            grad = input_grad(-loss if t is not None else loss, xa)
            if keep is not None:
                grad, xa = grad[keep], xa[keep]
            xa = project(xa.detach() + step_size * _direction(grad, threat, direction), xs)
        if restarts == 1 and out is None:
            return xa.detach()  # nothing was frozen early: the last iterate is the answer
        out = x.clone() if out is None else out
        if idx.numel():
            out[idx] = xa.detach()
        if r + 1 < restarts:
            pool = torch.arange(x.shape[0], device=x.device) if remaining is None else remaining
            with torch.no_grad():
                still = scores(model, out[pool], y[pool]).argmax(1) == y[pool]
            remaining = pool[still]
            if remaining.numel() == 0:
                break
    assert out is not None
    return out


def without_early_stop(attack: Attack) -> Attack:
    """The attack taking every step. Against a random defense, a point stopped at the first
    flip of its prediction sits on the boundary, where the vote flips it back."""
    return dataclasses.replace(attack, early_stop=False) if getattr(attack, "early_stop", False) else attack


def warn_unreachable(name: str, steps: int, step_size: float, eps: float) -> None:
    # A default that cannot reach the boundary silently weakens the attack (REFERENCES.md).
    if math.isfinite(eps) and steps * step_size < eps * (1 - 1e-6):
        warnings.warn(f"{name}: {steps} steps of {step_size:.4g} cannot reach the eps={eps:.4g} boundary",
                      stacklevel=3)
