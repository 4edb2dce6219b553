"""Escalation: what the engine does when a gradient-masking check fails on a ranked evaluation.

A failed check means the attacks that produced the number could not see the model's weakness.
The engine then climbs a ladder of attacks chosen by *which* check failed, before the cell is
stored as final (Carlini et al. 2019, arXiv:1902.06705; Athalye et al. 2018, arXiv:1802.00420;
Croce and Hein 2020, arXiv:2003.01690; Tramer et al. 2020, arXiv:2002.08347):

- :data:`STEPS` are the rungs, as data: the attacks each runs, and on which *view* of the model
  (its attack surface, logits rescaled in float64, BPDA at the modules whose backward pass was
  found dead, EOT, BPDA through every declared defense step, the bare classifier) or from which
  surrogate (transfer);
- :data:`LADDER` maps each check to the steps that answer it.

The steps of every failed check run once each, in :data:`STEPS`' order, as a cascade over the
points still robust: the ranked number is the per-example worst case over the user's attacks and
every step. Then the checks run again with that worst case as their reference attack
(``Probe.reference``). A check that compares attacks passes once the escalated evaluation beats
what the check found; a check that describes the model (its outputs are probabilities, its
gradients vanish, it is random, its forward pass runs autograd) cannot change, and is *answered*
when at least one of its steps ran and every comparison passes after escalation. A cell whose
checks still fail is **unverified**: shown, never ranked.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .inference import eval_mode
from .attacks.base import live, module_calls
from .validation import check_int, check_interval
from . import zoo

_log = logging.getLogger(__name__)

VIEWS = ("surface", "inner", "rescaled", "located", "defense_bpda", "eot", "bare", "transfer")


@dataclass(frozen=True)
class Step:
    """One rung of the ladder.

    Args:
        name: the step's name in a cell's escalation record.
        view: what its attacks run on (see :data:`VIEWS`).
        attacks: attack specs, a cascade; ``{steps}`` and ``{queries}`` are filled from the
            :class:`EscalationConfig`.
        rounds: > 1 repeats the attacks with doubled steps while a round still breaks more than
            ``agree`` of the points (the "more steps" rule: stop when two rounds agree).
        about: what it answers, in words.
    """

    name: str
    view: str
    attacks: tuple[str, ...]
    about: str
    rounds: int = 1

    def specs(self, config: "EscalationConfig", round_: int = 0) -> tuple[str, ...]:
        return tuple(a.format(steps=config.steps * 2 ** round_, queries=config.queries) for a in self.attacks)


#: The rungs, in the order they run (each at most once per cell).
STEPS: dict[str, Step] = {s.name: s for s in (
    Step("inner", "inner", ("apgd_ce:steps={steps}", "apgd_dlr:targets=9,steps={steps}"),
         "the classifier the model wraps (a submodule from the input to scores of the output's shape), attacked "
         "white-box; its examples are judged on the whole model"),
    Step("located_bpda", "located", ("apgd_ce:steps={steps}", "apgd_dlr:targets=9,steps={steps}"),
         "BPDA (identity backward) at the modules, or the module input, where the gradient was found to die"),
    Step("defense_bpda", "defense_bpda", ("apgd_ce:steps={steps}", "apgd_dlr:targets=9,steps={steps}"),
         "BPDA through every declared defense step, whatever it declares about its own differentiability"),
    Step("dlr", "surface", ("apgd_dlr:steps={steps}", "apgd_dlr:targets=9,steps={steps}"),
         "margin losses (APGD-DLR, APGD-T): shift- and scale-invariant, so saturated or rescaled outputs do not flatten them"),
    Step("rescaled", "rescaled", ("apgd_ce:steps={steps}", "apgd_dlr:steps={steps}"),
         "the model in float64 with its outputs read as logits (log of a probability row) and standardised per point"),
    Step("eot", "eot", ("apgd_ce:steps={steps}",),
         "EOT: gradients of the expected prediction over repeated passes of a model that is random"),
    Step("oblivious", "bare", ("apgd_ce:steps={steps}", "pgd:steps={steps}"),
         "the examples crafted on the bare classifier join the cascade"),
    Step("more_steps", "surface", ("apgd_ce:steps={steps}", "apgd_dlr:targets=9,steps={steps}"),
         "more steps, doubled per round until two rounds agree", rounds=4),
    Step("square", "surface", ("square:queries={queries},restarts=2",),
         "score-based black-box search (Square), blind to gradients"),
    Step("transfer", "transfer", ("apgd_ce:steps={steps}", "apgd_dlr:steps={steps}"),
         "examples crafted on surrogate models of the same dataset, never on the target"),
)}

#: Which steps answer which failed check.
LADDER: dict[str, tuple[str, ...]] = {
    "logits_not_probabilities": ("dlr", "inner", "rescaled", "square", "transfer"),
    "gradients": ("dlr", "inner", "located_bpda", "defense_bpda", "rescaled", "square", "transfer"),
    "finite_differences": ("inner", "located_bpda", "defense_bpda", "square", "transfer"),
    "dynamic_forward": ("inner", "located_bpda", "defense_bpda", "square", "transfer"),
    "noise_vs_pgd": ("dlr", "inner", "located_bpda", "square", "transfer"),
    "unbounded_eps": ("dlr", "inner", "located_bpda", "square", "transfer"),
    "black_box_vs_white_box": ("dlr", "inner", "located_bpda", "square", "transfer"),
    "iterative_vs_single_step": ("dlr", "more_steps", "square"),
    "monotone_eps": ("more_steps", "square"),
    "more_steps": ("more_steps",),
    "stochastic_outputs": ("eot",),
    "adaptive_vs_oblivious": ("oblivious", "defense_bpda"),
    "binarization": ("dlr", "inner", "located_bpda", "defense_bpda", "rescaled", "more_steps", "square"),
}

#: Checks that describe the model rather than compare attacks: re-running them after escalation
#: gives the same verdict, so they count as answered when their steps ran and every comparison passes.
PROPERTIES = frozenset({"logits_not_probabilities", "gradients", "finite_differences", "dynamic_forward",
                        "stochastic_outputs"})


@dataclass(frozen=True, kw_only=True)
class EscalationConfig:
    """How hard the ladder climbs.

    Args:
        steps: iterations of each gradient attack of a step (default 100, AutoAttack's).
        queries: Square's queries per point (default 5000, AutoAttack's).
        agree: the more-steps rule stops when a round breaks at most this share of points (0.03,
            the ``more_steps`` check's threshold).
        surrogates: zoo names or checkpoint paths to transfer from; None (default) takes up to
            two trained zoo models of the dataset other than the evaluated weights.
        eot: draws per gradient of the EOT step (default 10).
    """

    steps: int = 100
    queries: int = 5000
    agree: float = 0.03
    surrogates: tuple[str, ...] | None = None
    eot: int = 10

    def __post_init__(self) -> None:

        check_int("escalation", "steps", self.steps, 1)
        check_int("escalation", "queries", self.queries, 1)
        check_int("escalation", "eot", self.eot, 1)
        check_interval("escalation", "agree", self.agree, 0, 1, "[)")
        if self.surrogates is not None and (isinstance(self.surrogates, str) or not all(
                isinstance(s, str) and s for s in self.surrogates)):
            raise ValueError(f"escalation: surrogates must be a tuple of zoo names or checkpoint paths, got {self.surrogates!r}")


def steps_for(failed: set[str] | frozenset[str]) -> list[Step]:
    """The steps that answer a set of failed checks, each once, in :data:`STEPS`' order."""
    wanted = {s for name in failed for s in LADDER.get(name, ())}
    return [s for name, s in STEPS.items() if name in wanted]


def ladder_data() -> dict[str, Any]:
    """The ladder as data, for a cell's key: an edit to a rung re-keys every escalated cell."""
    return {"steps": [dataclasses.asdict(s) for s in STEPS.values()], "ladder": {k: list(v) for k, v in LADDER.items()},
            "properties": sorted(PROPERTIES)}


def surrogates(config: EscalationConfig, dataset: str, weights_sha256: str) -> tuple[str, ...]:
    """The surrogate models the transfer step uses: the configured ones, else up to two trained zoo
    models of ``dataset`` (a standard one first, then a robust one) that are not the evaluated weights."""

    if config.surrogates is not None:
        return config.surrogates
    names = []
    for name in zoo.trained():
        try:
            _, ds, recipe = zoo.parse_name(name)
            card = zoo.load_card(name)
        except Exception:  # noqa: BLE001 - a cache entry that is not a zoo model is no surrogate
            continue
        if ds == dataset and card.weights_sha256 != weights_sha256:
            names.append((recipe != "standard", name))
    standard = [n for robust, n in sorted(names) if not robust]
    robust = [n for is_robust, n in sorted(names) if is_robust]
    return tuple((standard[:1] + robust[:1]) or [])


# --- views -----------------------------------------------------------------------------------


class Rescaled(nn.Module):
    """The model in float64, its outputs read as logits and standardised per point: a probability
    row becomes its log (the logits up to a constant), and a per-point scale (detached) undoes a
    temperature, so cross-entropy neither saturates nor underflows. The argmax is unchanged."""

    def __init__(self, model: nn.Module, double: bool):
        super().__init__()
        self.model = model
        self.double_ = double

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.double() if self.double_ else x)
        probs = bool(((out >= 0).all() & ((out.sum(1) - 1).abs() < 1e-4).all()).item())
        z = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny)) if probs else out
        z = z - z.mean(1, keepdim=True)
        scale = z.std(1, keepdim=True).detach().clamp_min(1e-12)
        return (z / scale).to(x.dtype)


def rescaled(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """:class:`Rescaled` on a float64 copy of ``model`` where that runs and stays finite, else on
    the model as it is."""
    try:
        double = copy.deepcopy(model).double()
        with torch.no_grad(), eval_mode(double):
            out = double(x[:4].double())
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64 and bool(torch.isfinite(out).all()):
            return Rescaled(double, True)
    except Exception as exc:  # noqa: BLE001 - a model that cannot run in float64 is rescaled as it is
        _log.info("the rescaled view runs in float32: the model does not run in float64 (%s)", exc)
    return Rescaled(model, False)


class EOT(nn.Module):
    """The log of the softmax averaged over ``k`` passes of a random model (as ``Defended`` does
    for a declared random defense), for a model whose randomness nothing declared."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(self.model(x), dim=1) for _ in range(self.k)])
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(self.k), device=logp.device))


@dataclass
class _Point:
    """Where a BPDA straight-through goes: a module's call (index within one forward pass), either
    on its output (identity backward through the module) or on its input (identity from the
    model's input to that call's input)."""

    module: str
    call: int
    where: str  # "output" or "input"


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[tuple[str, int, str], torch.Tensor]]:
    """Per point, whether the loss gradient is alive at the model's input, and at the input of every
    call of every submodule (and at its output, where that has the input's shape)."""
    leaves: dict[tuple[str, int, str], torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []

    def tap(t: torch.Tensor, key: tuple[str, int, str]) -> torch.Tensor:
        leaf = torch.zeros_like(t, requires_grad=True)
        leaves[key] = leaf
        return t + leaf  # the value unchanged; the gradient reaching t also reaches the leaf

    def single(args: tuple[Any, ...]) -> bool:
        return len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].is_floating_point()

    def pre(name: str) -> Callable[..., Any]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> Any:
            calls[name] = calls.get(name, -1) + 1
            return (tap(args[0], (name, calls[name], "input")),) if single(args) else None
        return hook

    def post(name: str) -> Callable[..., Any]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
            if single(args) and isinstance(out, torch.Tensor) and out.is_floating_point() and out.shape == args[0].shape:
                return tap(out, (name, calls[name], "output"))
            return None
        return hook

    for name, m in model.named_modules():
        if name:
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
    try:
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), eval_mode(model):
            loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
            keys = list(leaves)
            grads = torch.autograd.grad(loss, [xg] + [leaves[k] for k in keys], allow_unused=True)
    finally:
        for h in handles:
            h.remove()

    def alive(g: torch.Tensor | None) -> torch.Tensor:
        return live(g, len(x)).cpu()

    shapes = {k: leaves[k].shape for k in keys}
    return alive(grads[0]), {k: alive(g) for k, g in zip(keys, grads[1:], strict=True) if k[2] == "output"
                             or shapes[k] == x.shape or (k[0], k[1], "output") in shapes}


def locate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 3) -> list[_Point]:
    """The places where the loss gradient dies on most of the points. Each round takes, on the model
    with the points found so far: the innermost module calls whose output gradient is alive and
    input gradient dead (a zero or non-differentiable backward); failing those, the first call
    whose input has the model input's shape and a live gradient (an operation outside any module,
    or a detached optimisation, lies between the input and it). Stops when the input's gradient
    is alive on most points."""
    points: list[_Point] = []
    half = len(x) / 2
    for _ in range(rounds):
        root, named = _measure(Located(model, points), x, y)
        if int(root.sum()) > half:
            return points
        named = {(n.removeprefix("model."), c, w): a for (n, c, w), a in named.items() if n != "model"}
        found = [_Point(n, c, "output") for (n, c, w), a in named.items() if w == "output" and int(a.sum()) > half
                 and int(named.get((n, c, "input"), torch.zeros(1, dtype=torch.bool)).sum()) <= half  # cpu: bookkeeping
                 and not any(p.module == n and p.call == c for p in points)]
        found = [p for p in found if not any(o.module.startswith(p.module + ".") for o in found)]
        if not found:
            entry = next((_Point(n, c, "input") for (n, c, w), a in named.items() if w == "input"
                          and int(a.sum()) > half and not any(p.module == n and p.call == c for p in points)), None)
            found = [entry] if entry is not None else []
        if not found:
            break
        points += found
    root, _ = _measure(Located(model, points), x, y)
    return points if points and int(root.sum()) > half else []


class Located(nn.Module):
    """The model with BPDA at the located points: the forward pass as it is, the backward pass the
    identity there (Athalye et al. 2018's straight-through estimator, placed where the gradient died)."""

    def __init__(self, model: nn.Module, points: list[_Point]):
        super().__init__()
        self.model = model
        self.points = points

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        calls: dict[str, int] = {}
        handles = []
        modules = dict(self.model.named_modules())

        def pre(name: str) -> Callable[..., Any]:
            def hook(mod: nn.Module, args: tuple[Any, ...]) -> Any:
                calls[name] = calls.get(name, -1) + 1
                if any(p.module == name and p.call == calls[name] and p.where == "input" for p in self.points):
                    return (x + (args[0] - x).detach(),)
                return None
            return hook

        def post(name: str) -> Callable[..., Any]:
            def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
                if any(p.module == name and p.call == calls[name] and p.where == "output" for p in self.points):
                    return args[0] + (out - args[0]).detach()
                return None
            return hook

        for name in {p.module for p in self.points}:
            handles += [modules[name].register_forward_pre_hook(pre(name)), modules[name].register_forward_hook(post(name))]
        try:
            return self.model(x)
        finally:
            for h in handles:
                h.remove()


def inner(model: nn.Module, x: torch.Tensor) -> str | None:
    """The submodule that maps the model's input to scores of the model's output shape: the
    classifier a wrapper post-processes (saturates, rounds, turns into probabilities) or
    pre-processes. Preferred: the innermost one that receives the model's input exactly (what a
    post-processing wrapper wraps); else the outermost one (behind a preprocessing step, which its
    examples then cross as a transfer). None where the model is its own classifier."""
    out, calls = module_calls(model, x, lambda name, m: bool(name))
    found: dict[str, tuple[tuple[int, ...], bool]] = {}
    for name, args, o in calls:
        if (len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].shape == x.shape
                and isinstance(o, torch.Tensor) and name not in found):
            found[name] = (tuple(o.shape), bool(torch.equal(args[0], x)))
    if not isinstance(out, torch.Tensor):
        return None
    candidates = [n for n, (shape, _) in found.items() if shape == tuple(out.shape)]
    exact = [n for n in candidates if found[n][1]]
    if exact:
        return max(exact, key=lambda n: n.count("."))
    return min(candidates, key=lambda n: n.count(".")) if candidates else None


def view(step: Step, *, surface: nn.Module, bare: nn.Module | None, defense_bpda: nn.Module | None,
         x: torch.Tensor, y: torch.Tensor, config: EscalationConfig) -> tuple[nn.Module | None, str]:
    """The model a step's attacks run on, and what it is (or None and why the step does not apply)."""
    if step.view == "surface":
        return surface, "the attack surface"
    if step.view == "inner":
        name = inner(surface, x)
        if name is None:
            return None, "the model wraps no classifier of its own output's shape"
        return dict(surface.named_modules())[name], f"the wrapped classifier {name!r}"
    if step.view == "rescaled":
        v = rescaled(surface, x)
        return v, "float64, logits standardised" if v.double_ else "float32, logits standardised"
    if step.view == "located":
        points = locate(surface, x, y)
        if not points:
            return None, "no module or module input was found where the gradient dies"
        return Located(surface, points), "BPDA at " + ", ".join(
            f"{p.module} ({p.where}{'' if p.call == 0 else f', call {p.call}'})" for p in points)
    if step.view == "defense_bpda":
        return (defense_bpda, "identity backward through every defense step") if defense_bpda is not None else (
            None, "no defense in front of the model")
    if step.view == "eot":
        return EOT(surface, config.eot), f"EOT over {config.eot} passes"
    if step.view == "bare":
        return (bare, "the bare classifier") if bare is not None else (None, "no defense in front of the model")
    raise ValueError(f"unknown view {step.view!r}; allowed: {', '.join(VIEWS)}")
