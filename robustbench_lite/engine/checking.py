"""The gradient-masking checks as the engine runs them: their key, the probe they read, the
binarization test, and :func:`recheck` (``rbl verify``)."""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Sequence

import torch
from torch import nn

from .. import devices, fingerprint, specs
from ..attacks.base import Attack
from ..cell import CellConfig, checks_config, checks_random_key, digest
from ..checks import CheckConfig, Probe, Verdict
from ..checks import binarization as binarize_mod
from ..checks import run as run_checks
from ..checks.suite import Binarized
from ..data import Split
from ..defenses.base import Defense, Detector
from ..threat import Threat
from ..zoo import LoadedModel

from .deploy import Setup, deploy
from .guard import Guard, attacked
from .plan import ADAPTIVE_MODES, Plan, cell_seed, make_plan, method_identity
from .results import EvalResult

_log = logging.getLogger(__name__)


def checked(plan: Plan, setup: Setup, x: torch.Tensor, y: torch.Tensor, results: list[EvalResult],
             cfg: CheckConfig, store: Any | None) -> tuple[Verdict, ...]:
    """The gradient-masking verdicts of this call's cells: read from the store under their own key
    (the check settings, the model and defense, the cells whose accuracies they read), else run."""
    nonzero = sorted(t.eps for t in plan.threats if t.eps > 0)
    if not nonzero:
        return ()
    eps = nonzero[len(nonzero) // 2]
    tested = tested_attacks(cfg, plan.attack_objs)
    config = checks_config(plan.configs[0], eps, dataclasses.asdict(cfg), [r.key for r in results], checks_code(),
                           [method_identity(a)[0] for a in tested] if cfg.binarization else [])
    key = digest(config)
    stored = store.get_checks(key) if store is not None else None
    if stored is not None:
        return stored
    verdicts = masking_checks(setup, x, y, Threat(plan.threats[0].norm, eps), {r.eps: r.robust_acc for r in results}, cfg,
                      cell_seed(checks_random_key(config), "checks"), sources=user_source(tested))
    setup.guard.check("the gradient-masking checks")
    if store is not None:
        store.put_checks(key, config, verdicts)
    return verdicts


def checks_code() -> str:
    """The checks' code: the suite and the binarization test."""
    return digest([fingerprint.module_code("robustbench_lite.checks.suite").sha256,
                   fingerprint.module_code("robustbench_lite.checks.binarization").sha256])


def user_source(attacks: Sequence[Attack]) -> list[Source]:
    return [("the evaluation's attacks", on_surface, attacks)] if attacks else []


def tested_attacks(cfg: CheckConfig, attacks: Sequence[Attack]) -> list[Attack]:
    """The attacks the binarization test runs: the checks' own list, else the evaluation's."""
    return [specs.attack(a) for a in cfg.attacks] if cfg.attacks is not None else list(attacks)


def masking_checks(setup: Setup, x: torch.Tensor, y: torch.Tensor, threat: Threat, accuracies: dict[float, float],
           cfg: CheckConfig, seed: int, reference: Any = None, sources: Sequence[Source] = (),
           tolerance: float = 1e-5) -> tuple[Verdict, ...]:
    deployed, surface, judge = setup.views(seed)
    binarized = None
    if cfg.binarization:
        binarized = (functools.partial(binarization_test, setup, x, y, threat, cfg, seed, sources, tolerance) if sources
                     else functools.partial(str, "no attack of the evaluation to test"))
    adaptive = setup.defended and setup.mode in ADAPTIVE_MODES
    # The defense steps whose own autograd the attack follows (adaptive mode, declared differentiable).
    followed = tuple((d.spec(), functools.partial(d.transform, generator=devices.generator(seed, x.device)))
                     for d in setup.pre if setup.mode == "adaptive" and d.differentiable)
    probe = Probe(deployed=deployed, surface=surface, judge=judge, x=x[:cfg.n].clone(), y=y[:cfg.n].clone(), threat=threat,
                  config=cfg, generator=devices.generator(seed, x.device), bare=setup.attack_model if adaptive else None,
                  declared_stochastic=any(d.stochastic for d in setup.pre),
                  bpda=adaptive and (setup.mode == "bpda" or not all(d.differentiable for d in setup.parts)),
                  rejects=setup.detector is not None, accuracies=accuracies, classifier=setup.attack_model,
                  followed=followed, reference=reference, binarized=binarized)
    torch.manual_seed(seed)
    return run_checks(probe)


#: One source of attacks in the binarization test: its label, the view its attacks run on (from
#: the binarized setup, its attack surface and the test's points and labels: a module, or None
#: and why it does not apply), and the attacks.
Source = tuple[str, Any, Sequence[Attack]]


def on_surface(setup: "Setup", surface: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, str]:
    return surface, "the attack surface"


def binarization_test(setup: Setup, x: torch.Tensor, y: torch.Tensor, threat: Threat, cfg: CheckConfig, seed: int,
                  sources: Sequence[Source], tolerance: float = 1e-5) -> Binarized | str:
    """The binarization test (checks/binarization.py) on the first ``cfg.binarization`` clean-correct
    points of the checks' subset: the head of a copy of the model binarized per point, deployed and
    attacked as the engine deploys and attacks the model (its defenses, BPDA, EOT, votes), the
    sources' attacks run as one cascade through the engine's own budget and tampering checks."""
    if setup.detector is not None:
        return "not run on a model with a detector (the binary readout replaces the classes the detector guards)"
    if threat.eps == 0 or not math.isfinite(threat.eps):
        return f"not run at eps {threat.eps:g}"
    n = min(cfg.n, len(x))
    judge = setup.views(seed)[2]
    pick = (judge(x[:n].clone()).argmax(1) == y[:n]).nonzero().squeeze(1)[: cfg.binarization]
    if pick.numel() == 0:
        return "no clean-correct point to test"
    xs = x[pick].clone()
    k = len(xs)
    g = devices.generator(seed, x.device)
    model, head = binarize_mod.install(setup.model, xs[:2], k)
    inner, boundary = binarize_mod.samples(xs, threat, g)
    m = inner.shape[1]

    def deployed_as_setup(model: nn.Module) -> Setup:
        return dataclasses.replace(setup, model=model, guard=Guard(model, None), detector=None)

    rows, margin = binarize_mod.features(deployed_as_setup(model).views(seed)[0], head,
                                         torch.cat([inner.flatten(0, 1), boundary]), setup.batch_size)
    valid = binarize_mod.fit(head, rows[: k * m].view(k, m, -1), rows[k * m:], margin[: k * m: m])
    bsetup = deployed_as_setup(model)  # its guard's snapshot holds the fitted readouts
    _, surface, bjudge = bsetup.views(seed)
    zeros = torch.zeros(k, dtype=torch.long, device=xs.device)
    # The guarantee, checked on the model as deployed and judged: the point is class 0 and a point
    # inside the ball is class 1.
    valid &= (bjudge(xs.clone()).argmax(1) == 0) & (bjudge(boundary.clone()).argmax(1) == 1)
    valid &= threat.distance(boundary, xs) <= threat.eps + tolerance
    hit = torch.zeros(k, dtype=torch.bool, device=xs.device)
    found: dict[str, int] = {}
    skipped: dict[str, str] = {}
    # No valid test: nothing to attack (and no points to build a step's view on).
    for s, (label, make, attacks) in enumerate(sources if bool(valid.any()) else ()):
        view, why = make(bsetup, surface, xs[valid], zeros[valid])
        if view is None:
            skipped[label] = why
            continue
        before = int(hit.sum())
        for i, attack in enumerate(attacks):
            todo = (valid & ~hit).nonzero().squeeze(1)
            for chunk, _, logits in attacked(f"binarization ({label})", attack, view, bjudge, xs, zeros, todo, threat,
                                              setup.batch_size, (seed, "binarization", s, i), bsetup.guard, tolerance):
                hit[chunk] |= logits.argmax(1) == 1
        found[label] = found.get(label, 0) + int(hit.sum()) - before
    bsetup.guard.check("the binarization test")
    return Binarized(points=k, valid=int(valid.sum()), found=found, found_any=int((hit & valid).sum()), skipped=skipped)


def recheck(config: dict[str, Any], model: LoadedModel, data: Split, accuracies: dict[float, float],
            defenses: Sequence[Defense | Detector], calibration: Split | None = None,
            attacks: Sequence[Attack] = (), device: str | torch.device | None = None) -> tuple[Verdict, ...]:
    """Re-run one stored set of gradient-masking verdicts from its config (``rbl verify``):
    ``accuracies`` are the robust accuracies of the cells it names, ``defenses`` and ``attacks``
    (those the binarization test ran) rebuilt from their stored configs."""
    cell = CellConfig.from_dict(config["cell"])
    plan = make_plan(model, data, ["fgsm"], [cell.eps], norm=cell.norm, n=cell.n, seed=cell.seed,
                 batch_size=cell.batch_size or 500, defense=defenses, mode=cell.mode if cell.defenses else "adaptive",
                 eot=cell.eot, votes=cell.votes, calibration=calibration, device=device)
    setup = deploy(plan)
    verdicts = masking_checks(setup, *plan.inputs(), Threat(cell.norm, cell.eps), accuracies,
                      CheckConfig(**config["settings"]), cell_seed(checks_random_key(config), "checks"),
                      sources=user_source(attacks))
    setup.guard.check("the gradient-masking checks")
    return verdicts
