"""The conformance checks every attack and defense must pass, as a library, so that a plugin's
author runs them with ``rbl conformance --plugin FILE`` and the project's own test suite runs
the same code over every registered method.

Each check returns a :class:`Result`; nothing here raises on a failed check.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import devices
from .threat import Threat
from .defenses.base import Detector
from .rng import PointStreams
from .data import DATASETS


@dataclass(frozen=True)
class Result:
    method: str
    check: str
    passed: bool
    detail: str = ""


def _run(method: str, check: str, fn: Callable[[], str | None]) -> Result:
    """``fn`` returns None when the check passes and the reason when it fails; an exception fails it."""
    try:
        problem = fn()
    except Exception as exc:  # a crash inside the method is a failed check, reported, not raised
        problem = f"raised {type(exc).__name__}: {exc}"
    return Result(method, check, problem is None, problem or "")


# --- defenses --------------------------------------------------------------------------


def defense_output(d: Any, x: torch.Tensor) -> str | None:
    x0 = x.clone()
    out = d.transform(x, devices.generator(0, x.device))
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        return f"returned {tuple(out.shape)} {out.dtype} on {out.device} for {tuple(x.shape)} {x.dtype} on {x.device}"
    if not torch.isfinite(out).all() or out.min().item() < 0 or out.max().item() > 1:
        return f"output leaves [0, 1] or is not finite (range {out.min().item():.3g}..{out.max().item():.3g})"
    if not torch.equal(x, x0):
        return "modified its input in place"
    if (out - x).abs().mean().item() <= 1e-3:
        return "changes nothing (mean |out - x| <= 1e-3): a defense that changes nothing defends nothing"
    return None


def defense_randomness(d: Any, x: torch.Tensor) -> str | None:
    def run(seed: int) -> torch.Tensor:
        return d.transform(x, devices.generator(seed, x.device))

    if not torch.equal(run(1), run(1)):
        return "is not reproducible under a seeded generator (draw its randomness from the generator argument)"
    differs = not torch.equal(run(1), run(2))
    if differs != d.stochastic:
        return (f"declares stochastic={d.stochastic} but its output {'changes' if differs else 'does not change'} "
                "with the seed")
    return None


def defense_gradients(d: Any, x: torch.Tensor) -> str | None:
    xg = x[:16].clone().requires_grad_(True)
    out = d.transform(xg, devices.generator(0, x.device))
    grad = None
    if out.requires_grad:
        (grad,) = torch.autograd.grad(out.sum(), xg, allow_unused=True)
    useful = grad is not None and grad.abs().sum().item() > 0
    if useful != d.differentiable:
        return (f"declares differentiable={d.differentiable} but its output "
                f"{'has' if useful else 'has no'} useful gradient (the engine would pick the wrong attack: BPDA is for "
                "steps without one)")
    return None


def defense_batches(d: Any, x: torch.Tensor) -> str | None:
    """A defense that declares ``batch_invariant`` maps each image on its own: the batch in two
    pieces, reversed, gives what the whole batch gives."""
    if not type(d).batch_invariant:
        return None
    if d.stochastic:
        return "declares batch_invariant but is random: its draws follow the batches"
    k = len(x) // 3
    with torch.no_grad():
        whole = d.transform(x, devices.generator(0, x.device))
        parts = torch.cat([d.transform(x[k:], devices.generator(0, x.device)),
                           d.transform(x[:k], devices.generator(0, x.device))])
    parts = torch.cat([parts[len(x) - k:], parts[:len(x) - k]])
    if not torch.allclose(whole, parts, atol=1e-5, rtol=1e-5):
        return (f"declares batch_invariant but an image's output depends on its batch (largest change "
                f"{(whole - parts).abs().max().item():.3g}); leave batch_invariant False so its cells are keyed by the batch size")
    return None


DEFENSE_CHECKS = {"output": defense_output, "randomness": defense_randomness, "gradients": defense_gradients,
                  "batches": defense_batches}


def check_defense(name: str, d: Any, x: torch.Tensor) -> list[Result]:

    if isinstance(d, Detector):
        return [Result(name, "detector", True, "detectors are checked through rbl eval (thresholds need a classifier)")]
    # The batch check tests a declaration; an undeclared defense has nothing to test.
    return [_run(name, check, lambda fn=fn: fn(d, x)) for check, fn in DEFENSE_CHECKS.items()
            if check != "batches" or type(d).batch_invariant]


# --- attacks ---------------------------------------------------------------------------


def attack_threat(a: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat) -> str | None:
    x_adv = a(model, x, y, threat, generator=devices.generator(0, x.device))
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
        return f"returned {tuple(x_adv.shape)} {x_adv.dtype} for {tuple(x.shape)} {x.dtype}"
    dist = threat.distance(x_adv, x).max().item()
    if dist > threat.eps * (1 + 1e-5) + 1e-6:
        return f"left the {threat.norm} ball: distance {dist:.4g} > eps {threat.eps}"
    if x_adv.min().item() < 0 or x_adv.max().item() > 1:
        return "left the [0, 1] box"
    return None


def attack_side_effects(a: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat) -> str | None:
    x0, y0 = x.clone(), y.clone()
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    was = model.training
    model.train()
    try:
        a(model, x, y, threat, generator=devices.generator(0, x.device))
        if not model.training:
            return "did not restore the model's train/eval mode"
    finally:
        model.train(was)
    if not (torch.equal(x, x0) and torch.equal(y, y0)):
        return "modified x or y in place"
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state0[k])]
    if changed:
        return f"changed the model's state: {', '.join(changed[:3])}"
    if any(p.grad is not None for p in model.parameters()):
        return "left .grad set on the model's parameters"
    return None


def attack_determinism(a: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat) -> str | None:
    first = a(model, x, y, threat, generator=devices.generator(7, x.device))
    second = a(model, x, y, threat, generator=devices.generator(7, x.device))
    return None if torch.equal(first, second) else "differs between two runs with the same seeded generator"


#: The attack must be strictly worse for the model than no attack, at this one-sided significance.
#: The weakest in-tree examples (the generator attacks, trained for seconds) stay far below it on
#: fixtures trained from several seeds; a no-op, or noise that flips predictions both ways, does not.
EFFECT_ALPHA = 0.05


def attack_effect(a: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat) -> str | None:
    """The attack has a real effect on a trained model: of the points whose prediction it changes
    between right and wrong, significantly more go to wrong (a one-sided sign test at
    ``EFFECT_ALPHA``). A no-op fails (nothing changes), and so does random noise, which changes
    predictions both ways; ``<=`` alone proves nothing."""
    x_adv = a(model, x, y, threat, generator=devices.generator(0, x.device))  # with autograd on, as callers run it
    with torch.no_grad():
        right = model(x).argmax(1) == y
        still = model(x_adv).argmax(1) == y
    fooled, fixed = int((right & ~still).sum()), int((~right & still).sum())
    p = sign_test(fooled, fixed)
    if p >= EFFECT_ALPHA:
        return (f"took accuracy only from {float(right.float().mean()):.3f} to {float(still.float().mean()):.3f} at "
                f"{threat.norm} eps {threat.eps}: it fooled {fooled} points and fixed {fixed} (one-sided sign test "
                f"p = {p:.3g}, needs < {EFFECT_ALPHA})")
    return None


def sign_test(wins: int, losses: int) -> float:
    """P(at least ``wins`` of ``wins + losses`` fair coin flips): the one-sided sign test."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


def attack_batches(a: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat) -> str | None:
    """An attack that declares ``batch_invariant`` gives each point the same x_adv whichever points
    share its batch: the engine then leaves the batch size out of its cells' keys."""

    if not a.batch_invariant:
        return None
    index = torch.arange(len(x), device=x.device)
    whole = a(model, x, y, threat, generator=PointStreams.for_points(3, index))
    k = len(x) // 3
    order = torch.cat([index[k:], index[:k]])  # other batch-mates, another order
    parts = torch.cat([a(model, x[order[i:i + 2 * k]], y[order[i:i + 2 * k]], threat,
                         generator=PointStreams.for_points(3, order[i:i + 2 * k])) for i in range(0, len(x), 2 * k)])
    back = torch.empty_like(parts)
    back[order] = parts
    # The kernels' float rounding can depend on the batch's shape (1e-7 in a gradient), which can
    # flip a sign step here and there; an attack that couples its points moves them all.
    moved = (back - whole).flatten(1).abs().amax(1) > 1e-4
    if int(moved.sum()) > len(x) // 50:
        return (f"declares batch_invariant but {int(moved.sum())} of {len(x)} points got another x_adv in other batches "
                "(draw randomness from the PointStreams it is given, and do not couple points)")
    return None


def attack_eps_zero(a: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat) -> str | None:
    out = a(model, x[:16], y[:16], Threat(threat.norm, 0.0))
    return None if torch.equal(out, x[:16]) else "eps = 0 did not return x unchanged"


ATTACK_CHECKS = {"threat": attack_threat, "side_effects": attack_side_effects, "determinism": attack_determinism,
                 "effect": attack_effect, "eps_zero": attack_eps_zero, "batches": attack_batches}


def check_attack(name: str, a: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 threats: tuple[Threat, ...] = (Threat("linf", 0.1),)) -> list[Result]:
    return [_run(f"{name} ({t.norm}, eps {t.eps})", check, lambda fn=fn, t=t: fn(a, model, x, y, t))
            for t in threats for check, fn in ATTACK_CHECKS.items() if check != "batches" or a.batch_invariant]


# --- model architectures --------------------------------------------------------------


def check_model(name: str, factory: Any, dataset: str, x: torch.Tensor) -> Result:
    """An architecture builds for the dataset and maps a batch in [0, 1] to one finite logit per class."""

    def run() -> str | None:
        info = DATASETS[dataset]
        model = factory(info)
        if not isinstance(model, nn.Module):
            return f"returned a {type(model).__name__}, not an nn.Module"
        with torch.no_grad():
            out = model.to(x.device).eval()(x[:8])
        if tuple(out.shape) != (min(8, len(x)), info.num_classes):
            return f"maps {tuple(x[:8].shape)} to {tuple(out.shape)}; expected ({min(8, len(x))}, {info.num_classes}) logits"
        return None if torch.isfinite(out).all() else "outputs non-finite logits"

    return _run(name, "forward", run)


def as_dict(r: Result) -> dict[str, Any]:
    return dataclasses.asdict(r)
