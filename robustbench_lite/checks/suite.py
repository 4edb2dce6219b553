"""The checks: each one a function from a :class:`Probe` to a :class:`Verdict`.

They follow REFERENCES.md's list (Carlini et al. 2019, "On Evaluating Adversarial
Robustness", arXiv:1902.06705; Athalye et al. 2018, arXiv:1802.00420; the AutoAttack
checks). Every comparison is made per example on the same subset, with the harness's own
PGD, noise and Square, so a verdict does not depend on which attacks the user listed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..inference import eval_mode
from ..attacks.base import input_grad, live, without_early_stop
from ..threat import Threat
from ..validation import check_int
from .. import specs


@dataclass(frozen=True)
class Verdict:
    """One check's outcome. ``passed`` is None when the check does not apply (say why)."""

    name: str
    passed: bool | None
    value: float | None
    threshold: float | None
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        return cls(**d)

    def __str__(self) -> str:
        state = {True: "passed", False: "FAILED", None: "n/a"}[self.passed]
        nums = "" if self.value is None else f" ({self.value:.4g} vs threshold {self.threshold:.4g})"
        return f"{self.name}: {state}{nums}: {self.explanation}"


@dataclass(frozen=True, kw_only=True)
class CheckConfig:
    """How hard the checks look.

    Args:
        n: points from the start of the evaluated subset (default 100, >= 10).
        steps: PGD steps of the reference white-box attack (default 20); the "more steps"
            check doubles them and adds a restart.
        queries: Square's query budget in the black-box comparison (default 1000).
        noise_draws: random corners of the eps-ball tried per point (default 10).
        binarization: points of the binarization test (default 20): the first clean-correct ones
            of the checks' ``n``; 0 skips it.
        attacks: the attack specs the binarization test runs (a profile's attack list); None
            (default): the evaluation's own attacks.
    """

    n: int = 100
    steps: int = 20
    queries: int = 1000
    noise_draws: int = 10
    binarization: int = 20
    attacks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:

        check_int("checks", "n", self.n, 10)
        check_int("checks", "steps", self.steps, 1)
        check_int("checks", "queries", self.queries, 1)
        check_int("checks", "noise_draws", self.noise_draws, 1)
        check_int("checks", "binarization", self.binarization, 0)
        if self.attacks is not None:
            if isinstance(self.attacks, str) or not self.attacks or not all(isinstance(a, str) and a for a in self.attacks):
                raise ValueError(f"checks: attacks must be a non-empty tuple of attack specs, got {self.attacks!r}")
            object.__setattr__(self, "attacks", tuple(self.attacks))


@dataclass
class Probe:
    """What the checks look at: one model (and defense) on one subset at one eps.

    Args:
        deployed: the model as deployed (real preprocessing, autograd as it falls).
        surface: what the white-box attack differentiates (BPDA/EOT view for a defense).
        judge: scores whose argmax is the prediction (a vote for a random defense).
        bare: the model without its defense (the oblivious attack's view), or None.
        declared_stochastic: whether EOT and voting are applied.
        bpda: whether the surface's gradients are a declared approximation.
        rejects: whether a detector adds a last "rejected" column; a rejected adversarial
            input counts as held.
        accuracies: the evaluation's robust accuracy per eps, from the same call.
    """

    deployed: nn.Module
    surface: nn.Module
    judge: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    threat: Threat
    config: CheckConfig
    generator: torch.Generator
    bare: nn.Module | None = None
    declared_stochastic: bool = False
    bpda: bool = False
    rejects: bool = False
    accuracies: dict[float, float] = field(default_factory=dict)
    # The classifier alone and the defense steps whose own autograd the attack follows: what the
    # dynamic-forward check looks inside. None: the surface is the classifier.
    classifier: nn.Module | None = None
    followed: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = ()
    # After escalation: per point of the probe, robust under the escalated evaluation at a threat.
    # Every comparison is then made against it and the check's own attack together.
    reference: Callable[[Threat], torch.Tensor] | None = None
    # The binarization test, run by the engine (which holds the attacks): None, or a reason it
    # does not apply, or its outcome.
    binarized: Callable[[], "Binarized | str"] | None = None

    @functools.cached_property
    def outputs(self) -> torch.Tensor:
        """One forward pass of the deployed model on the probe's points."""
        with torch.no_grad(), eval_mode(self.deployed):
            return self.deployed(self.x)

    @functools.cached_property
    def clean_scores(self) -> torch.Tensor:
        return self.judge(self.x)

    @property
    def n_classes(self) -> int:
        """Classes of the classifier; a rejecting model's extra last column is index n_classes."""
        return self.clean_scores.shape[1] - (1 if self.rejects else 0)

    @functools.cached_property
    def correct(self) -> torch.Tensor:
        return self.clean_scores.argmax(1) == self.y

    def robust(self, x_adv: torch.Tensor, threat: Threat | None = None) -> torch.Tensor:
        """Per point: clean-correct and still correct at ``x_adv`` (projected, as the engine does)."""
        x_adv = (threat or self.threat).project(x_adv, self.x)
        pred = self.judge(x_adv).argmax(1)
        held = (pred == self.y) | (pred == self.n_classes) if self.rejects else pred == self.y
        return self.correct & held

    def attack(self, spec: str, threat: Threat | None = None, model: nn.Module | None = None) -> torch.Tensor:

        a = specs.attack(spec)
        a = without_early_stop(a) if self.declared_stochastic else a  # as the engine does
        return self.robust(a(model or self.surface, self.x, self.y, threat or self.threat, generator=self.generator), threat)

    def strongest(self, threat: Threat | None = None, steps: int | None = None) -> torch.Tensor:
        """Robust under the reference PGD (and, after escalation, under the escalated evaluation)."""
        bits = self.attack(f"pgd:steps={steps or self.config.steps}", threat)
        return bits & self.reference(threat or self.threat) if self.reference is not None else bits

    @functools.cached_property
    def pgd(self) -> torch.Tensor:
        return self.strongest()

    @property
    def reference_name(self) -> str:
        return f"PGD-{self.config.steps}" + (" and the escalated evaluation" if self.reference is not None else "")

    def rate(self, mask: torch.Tensor) -> float:
        return float(mask.sum()) / len(mask)

    def gap(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """rate(a) - rate(b), exact in counts (0.90 - 0.87 is not 0.03 in floats)."""
        return float(a.sum() - b.sum()) / len(a)


def _beaten(name: str, probe: Probe, other: torch.Tensor, what: str, threshold: float) -> Verdict:
    # Points that ``other`` breaks while white-box PGD leaves them standing.
    value = probe.rate(probe.pgd & ~other)
    return Verdict(name, value <= threshold, value, threshold,
                   f"{what} fooled {value:.1%} of the points that {probe.reference_name} could not"
                   + ("; the white-box gradient is not doing its job (gradient masking)" if value > threshold else ""))


def monotone_in_eps(probe: Probe) -> Verdict:
    threshold = 0.02
    if len(probe.accuracies) >= 2:
        accs, source = dict(probe.accuracies), "the evaluation's own cells"
    else:
        # One eps evaluated: sweep the reference PGD around it on the probe's subset.
        accs, source = {0.0: probe.rate(probe.correct), probe.threat.eps: probe.rate(probe.pgd)}, probe.reference_name
        for f in (0.5, 2.0):
            e = probe.threat.eps * f if probe.threat.norm == "l2" else min(probe.threat.eps * f, 1.0)
            accs[e] = probe.rate(probe.strongest(Threat(probe.threat.norm, e)))
    grid = sorted(accs)
    rise = round(max([accs[b] - accs[a] for a, b in zip(grid, grid[1:])], default=0.0), 9)
    shown = ", ".join(f"{e:g}: {accs[e]:.3f}" for e in grid)
    return Verdict("monotone_eps", rise <= threshold, rise, threshold,
                   f"largest rise of accuracy as eps grows, over {source}: {rise:+.3f} ({shown})")


def unbounded_eps(probe: Probe) -> Verdict:
    threshold = 0.03
    d = probe.x[0].numel()
    threat = Threat("linf", 1.0) if probe.threat.norm == "linf" else Threat("l2", math.sqrt(d))
    value = probe.rate(probe.strongest(threat, max(probe.config.steps, 50)))
    return Verdict("unbounded_eps", value <= threshold, value, threshold,
                   f"PGD{' and the escalated evaluation' if probe.reference is not None else ''} with the whole input box "
                   f"as budget left {value:.1%} accuracy"
                   + ("; it should reach about 0, so the attack is not finding what exists" if value > threshold else ""))


def iterative_vs_single_step(probe: Probe) -> Verdict:
    return _beaten("iterative_vs_single_step", probe, probe.attack("fgsm"), "FGSM", 0.03)


def black_box_vs_white_box(probe: Probe) -> Verdict:
    if probe.threat.norm != "linf":
        return Verdict("black_box_vs_white_box", None, None, None, "Square is implemented for linf only")
    return _beaten("black_box_vs_white_box", probe, probe.attack(f"square:queries={probe.config.queries}"),
                   f"Square ({probe.config.queries} queries)", 0.05)


def adaptive_vs_oblivious(probe: Probe) -> Verdict:
    if probe.bare is None:
        return Verdict("adaptive_vs_oblivious", None, None, None, "no defense in front of the model")
    return _beaten("adaptive_vs_oblivious", probe, probe.attack(f"pgd:steps={probe.config.steps}", model=probe.bare),
                   "the oblivious attack (on the bare model)", 0.05)


def noise_vs_pgd(probe: Probe) -> Verdict:
    threshold = 0.5
    robust = probe.correct.clone()
    for _ in range(probe.config.noise_draws):
        if probe.threat.norm == "linf":
            signs = torch.randint(0, 2, probe.x.shape, generator=probe.generator, device=probe.x.device).to(probe.x) * 2 - 1
            noisy = probe.x + probe.threat.eps * signs
        else:
            g = torch.randn(probe.x.shape, generator=probe.generator, device=probe.x.device).to(probe.x)
            noisy = probe.x + probe.threat.eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        robust &= probe.robust(noisy)
    noise_drop = probe.rate(probe.correct & ~robust)
    pgd_drop = probe.rate(probe.correct & ~probe.pgd)
    if pgd_drop == 0:
        return Verdict("noise_vs_pgd", False, None, threshold,
                       f"{probe.reference_name} changed no prediction (noise changed {noise_drop:.1%}): "
                       "either every point is robust at this eps or the gradient is masked")
    value = noise_drop / pgd_drop
    return Verdict("noise_vs_pgd", value <= threshold, value, threshold,
                   f"random corners of the ball took {noise_drop:.1%} of accuracy, PGD {pgd_drop:.1%}"
                   + ("; noise should be far weaker than a working attack" if value > threshold else ""))


def loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point, the cross-entropy at x and its input gradient (in eval mode, autograd on)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):
        loss = F.cross_entropy(model(x), y, reduction="none")
        g = input_grad(loss.sum(), x)
    return loss.detach(), g


def gradients(probe: Probe) -> Verdict:
    threshold = 0.1
    _, g = loss_grad(probe.surface, probe.x, probe.y)
    value = probe.rate(~live(g))
    return Verdict("gradients", value <= threshold, value, threshold,
                   f"{value:.1%} of the points have a zero or non-finite input gradient"
                   + ("; an attack following it cannot move (shattered or vanishing gradients)" if value > threshold else ""))


def finite_differences(probe: Probe) -> Verdict:
    name, threshold = "finite_differences", 0.1
    if probe.bpda or probe.declared_stochastic:
        return Verdict(name, None, None, None, "the gradient is a declared BPDA/EOT estimate, not the forward's derivative")
    # Jittered off the data: flat image regions tie pixels exactly, and a median or max over
    # tied values has no derivative there (a true kink, but one no attack step lands on).
    x = probe.x[:16] + 1e-3 * (2 * torch.rand(probe.x[:16].shape, generator=probe.generator, device=probe.x.device).to(probe.x) - 1)
    y = probe.y[:16]
    _, g = loss_grad(probe.surface, x, y)
    norms = g.flatten(1).norm(dim=1)
    ok = live(g)
    if not bool(ok.any()):
        return Verdict(name, False, None, threshold, "no point has a usable gradient to compare")
    x, y, g, norms = x[ok], y[ok], g[ok], norms[ok]
    d = g / norms.view(-1, 1, 1, 1)
    # A step of 1e-3 in L2 is far above float32 rounding of the loss and small enough that a
    # piecewise-linear net rarely changes piece (measured: 1e-2 and 1e-4 both agree worse).
    h = 1e-3
    with torch.no_grad(), eval_mode(probe.surface):
        fd = (F.cross_entropy(probe.surface(x + h * d), y, reduction="none")
              - F.cross_entropy(probe.surface(x - h * d), y, reduction="none")) / (2 * h)
    # Along the gradient the directional derivative is its norm.
    err = ((fd - norms).abs() / (fd.abs() + norms).clamp_min(1e-12)).median().item()
    return Verdict(name, err <= threshold, err, threshold,
                   f"median relative gap between autograd and a central difference along the gradient: {err:.3g}"
                   + ("; autograd does not describe the forward pass" if err > threshold else ""))


def stochastic_outputs(probe: Probe) -> Verdict:
    with torch.no_grad(), eval_mode(probe.deployed):
        a, b = probe.outputs, probe.deployed(probe.x)
    value = probe.rate((a - b).abs().amax(1) > 1e-5 * (1 + a.abs().amax(1)))
    if value == 0:
        return Verdict("stochastic_outputs", True, 0.0, 0.0, "repeated forward passes agree")
    if probe.declared_stochastic:
        return Verdict("stochastic_outputs", True, value, 0.0,
                       f"{value:.1%} of outputs vary between passes, as declared: attacked with EOT, judged by vote")
    return Verdict("stochastic_outputs", False, value, 0.0,
                   f"{value:.1%} of outputs vary between passes but nothing declares randomness: "
                   "wrap the random step as a stochastic defense so that EOT and voting apply")


def logits_not_probabilities(probe: Probe) -> Verdict:
    threshold = 0.5
    out = probe.outputs
    probs = (out >= 0).all(1) & ((out.sum(1) - 1).abs() < 1e-4)
    value = probe.rate(probs)
    return Verdict("logits_not_probabilities", value <= threshold, value, threshold,
                   f"{value:.1%} of output rows are probability vectors"
                   + ("; cross-entropy on probabilities saturates, return logits" if value > threshold else ""))


def more_steps(probe: Probe) -> Verdict:
    threshold = 0.03
    k = probe.config.steps
    longer = probe.attack(f"pgd:steps={2 * k},restarts=2")
    value = probe.gap(probe.pgd, probe.pgd & longer)
    return Verdict("more_steps", value <= threshold, value, threshold,
                   f"PGD-{2 * k} with 2 restarts took accuracy {value:.1%} below {probe.reference_name}"
                   + ("; the attack has not converged, so more effort is needed before trusting a number"
                      if value > threshold else ""))


class _GradWatch(TorchFunctionMode):
    """Counts the torch operations that run with autograd on."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if torch.is_grad_enabled():
            self.count += 1
        return func(*args, **(kwargs or {}))


def dynamic(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> str | None:
    """Why ``fn``'s forward pass is dynamic, or None: it turns autograd on (or steps an optimiser)
    when called with autograd off, or its output changes when gradients are being taken. Per call,
    never a counter kept across calls."""
    watch, stepped = _GradWatch(), []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda *a: stepped.append(1))
    try:
        with torch.no_grad(), watch:
            a = fn(x)
    finally:
        handle.remove()
    if watch.count or stepped:
        return (f"turned autograd on for {watch.count} operations" + (f" and stepped an optimiser {len(stepped)} times"
                                                                     if stepped else "") + " inside one forward pass")
    with torch.no_grad():
        b = fn(x)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        return None  # random: the stochastic check's business
    with torch.enable_grad():
        c = fn(x.clone().requires_grad_(True)).detach()
    if not torch.allclose(a, c, rtol=1e-4, atol=1e-5 * (1 + float(a.abs().max()))):
        return "gives other outputs when gradients are being taken than when they are not"
    return None


def dynamic_forward(probe: Probe) -> Verdict:
    name = "dynamic_forward"
    parts: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("the classifier", probe.classifier or probe.surface)]
    parts += [(f"the defense step {label}", fn) for label, fn in probe.followed]
    x = probe.x[:16]
    found = []
    for what, fn in parts:
        with eval_mode(fn) if isinstance(fn, nn.Module) else contextlib.nullcontext():
            why = dynamic(fn, x)
        if why:
            found.append(f"{what} {why}")
    if found:
        return Verdict(name, False, float(len(found)), 0.0,
                       "; ".join(found) + ": a test-time optimisation or a forward pass that depends on autograd; "
                       "its gradient is not the attack's to follow (BPDA or black-box attacks answer it)")
    return Verdict(name, True, 0.0, 0.0, "no forward pass turns autograd on or depends on it")


@dataclass(frozen=True)
class Binarized:
    """What the binarization test found: of the points whose test could be built (``valid``),
    those on which each source of attacks found the adversarial example that exists."""

    points: int
    valid: int
    found: dict[str, int]  # per source (the evaluation's attacks, an escalation step), in order
    found_any: int
    skipped: dict[str, str] = field(default_factory=dict)  # sources that do not apply, and why


def binarization(probe: Probe) -> Verdict:
    # Between what honest models' attack lists miss and what attacks on masked models miss, with
    # room on both sides: scripts/binarization_margins.py measures both.
    name, threshold = "binarization", 0.3
    if probe.binarized is None:
        return Verdict(name, None, None, None, "not run (checks binarization=0)")
    out = probe.binarized()
    if isinstance(out, str):
        return Verdict(name, None, None, None, out)
    if out.valid < max(3, (out.points + 1) // 2):
        return Verdict(name, None, None, None,
                       f"only {out.valid} of {out.points} tests could be built (the binary readout did not separate "
                       "the boundary point, or the deployed model did not classify it as fitted)")
    value = (out.valid - out.found_any) / out.valid
    per = ", ".join(f"{src}: {k}" for src, k in out.found.items())
    skipped = "".join(f"; {src} does not apply ({why})" for src, why in out.skipped.items())
    return Verdict(name, value <= threshold, value, threshold,
                   f"on {out.valid} points where an adversarial example provably exists inside the ball (the head "
                   f"binarized, Zimmermann et al. 2022), the attacks missed it on {out.valid - out.found_any} "
                   f"(found by {per}){skipped}"
                   + ("; the attacks are provably too weak on this model" if value > threshold else ""))


CHECKS: tuple[Callable[[Probe], Verdict], ...] = (
    logits_not_probabilities, stochastic_outputs, gradients, finite_differences, dynamic_forward, monotone_in_eps,
    unbounded_eps, iterative_vs_single_step, more_steps, noise_vs_pgd, black_box_vs_white_box,
    adaptive_vs_oblivious, binarization,
)


def run(probe: Probe) -> tuple[Verdict, ...]:
    """Every check on one probe, in a fixed order."""
    return tuple(check(probe) for check in CHECKS)
