"""The one evaluation engine behind the CLI, the API, the reports and the benchmarks.

It enforces the threat model (checks each attack's output against the budget, raises on
a violation, projects), judges every example with its own forward pass, and counts an
example as robust only if it is clean-correct and correct under *every* attack in the
list (the per-example worst case, as AutoAttack does).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import data as data_mod
from . import devices, fingerprint, numerics, specs
from . import escalation as ladder_mod
from .attacks.base import Attack, live, without_early_stop
from .cell import CellConfig, ModelId, checks_config, checks_random_key, digest, model_id, worst_case_config
from .checks import CheckConfig, Probe, Verdict
from .checks import binarization as binarize_mod
from .checks import run as run_checks
from .checks.suite import Binarized, loss_grad
from .data import Split
from .defenses.base import Defense, Detector, chain
from .errors import AttackBudgetError, IntegrityError, TamperingError  # noqa: F401  (raised here, and public as engine.*)
from .escalation import EscalationConfig
from .inference import eval_mode, predict
from .registry import ATTACKS
from .rng import PointStreams
from .stats import auc, wilson
from .threat import Threat
from .validation import check_int
from .views import Defended, Fitted, Guarded, vote
from .views import fit as fit_detector
from .zoo import LoadedModel
from .provenance import machine, now
from . import conformance

_log = logging.getLogger(__name__)


MODES = ("adaptive", "bpda", "oblivious")
ADAPTIVE_MODES = ("adaptive", "bpda")  # the defense is in the attack's loop


@dataclass(frozen=True)
class EvalResult:
    """One cell: a model under a list of attacks at one eps."""

    key: str
    model: str
    arch: str
    recipe: str
    dataset: str
    defense: str
    attacks: tuple[str, ...]
    norm: str
    eps: float
    n: int
    clean_acc: float
    robust_acc: float
    robust_acc_ci: tuple[float, float]
    clean_top5: float
    robust_top5: float | None  # None when an attack stopped points at the top-1 flip (see evaluate)
    seconds: float
    seed: int
    data_sha256: str
    weights_sha256: str
    versions: dict[str, str] = field(default_factory=dict)
    mode: str = "none"  # how a defense was attacked: none (no defense), adaptive, bpda or oblivious
    checks: tuple[Verdict, ...] = ()  # gradient-masking verdicts; empty when none were run
    # With a detector: the share of the n points whose final adversarial input it rejected,
    # the share of clean points it rejected (its false-positive rate on this subset), and the
    # ROC-AUC of its score between clean inputs and adversarial ones that fool the classifier.
    caught: float | None = None
    clean_rejected: float | None = None
    detection_auc: float | None = None
    combined_from: tuple[str, ...] = ()  # a worst case's cells (combine); empty for a computed cell
    # An escalated cell (see escalation.py): the cell it escalated, each step of the ladder it climbed
    # (what ran, on which view, what it took, the robust accuracy after it), and the checks run again
    # afterwards. Its ``checks`` are the verdicts that triggered it.
    escalated_from: str = ""
    escalation: tuple[dict[str, Any], ...] = ()
    rechecks: tuple[Verdict, ...] = ()
    robust: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False, compare=False)
    robust_top5_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False, compare=False)

    _ARRAYS = ("robust", "robust_top5_mask")

    def to_row(self) -> dict[str, Any]:
        """A flat row for pandas, the store and the reports (per-example bits left out)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in self._ARRAYS + ("versions", "checks", "combined_from", "escalation", "rechecks")}
        row["attacks"] = "+".join(self.attacks)
        row["checks_run"] = sum(v.passed is not None for v in self.final_checks)
        row["checks_failed"] = ",".join(v.name for v in self.failed_checks)
        row["checks_failed_before"] = ",".join(v.name for v in self.checks if v.passed is False)
        row["escalation"] = "+".join(s["step"] for s in self.escalation if not s.get("skipped"))
        row["verified"] = self.verified
        row["robust_acc_ci_low"], row["robust_acc_ci_high"] = row.pop("robust_acc_ci")
        row.update({f"version_{k}": v for k, v in self.versions.items()})
        return row

    def to_record(self) -> dict[str, Any]:
        """Every field but the per-example bits, JSON-ready; :meth:`from_record` inverts it."""
        rec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._ARRAYS}
        return rec | {"attacks": list(self.attacks), "robust_acc_ci": list(self.robust_acc_ci),
                      "checks": [v.to_dict() for v in self.checks], "combined_from": list(self.combined_from),
                      "escalation": [dict(s) for s in self.escalation], "rechecks": [v.to_dict() for v in self.rechecks]}

    @classmethod
    def from_record(cls, rec: dict[str, Any], robust: np.ndarray, robust_top5: np.ndarray) -> "EvalResult":
        return cls(**(rec | {"attacks": tuple(rec["attacks"]), "robust_acc_ci": tuple(rec["robust_acc_ci"]),
                            "checks": tuple(Verdict.from_dict(v) for v in rec.get("checks", ())),
                            "combined_from": tuple(rec.get("combined_from", ())),
                            "escalation": tuple(rec.get("escalation", ())),
                            "rechecks": tuple(Verdict.from_dict(v) for v in rec.get("rechecks", ())),
                            "robust": robust, "robust_top5_mask": robust_top5}))

    @property
    def final_checks(self) -> tuple[Verdict, ...]:
        """The verdicts that stand: after escalation where the cell was escalated, else its checks."""
        return self.rechecks if self.escalated_from else self.checks

    @property
    def failed_checks(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.final_checks if v.passed is False)

    @property
    def verified(self) -> bool | None:
        """None: no check ran; True: every check that ran passes (after escalation, if any);
        False: one still fails, and the number is shown but never ranked."""
        if not any(v.passed is not None for v in self.final_checks):
            return None
        return not self.failed_checks

    def to_json(self) -> dict[str, Any]:
        """The ``rbl eval --json`` object."""
        return {"key": self.key, "model": self.model, "weights_sha256": self.weights_sha256, "defense": self.defense, "mode": self.mode, "attacks": list(self.attacks), "norm": self.norm,
                "eps": self.eps, "n": self.n, "clean_acc": self.clean_acc, "robust_acc": self.robust_acc,
                "robust_acc_ci": list(self.robust_acc_ci), "clean_top5": self.clean_top5,
                "robust_top5": self.robust_top5, "seconds": self.seconds,
                "checks": [v.to_dict() for v in self.checks], "verified": self.verified,
                "escalation": [dict(s) for s in self.escalation], "rechecks": [v.to_dict() for v in self.rechecks]} | (
                {"caught": self.caught, "clean_rejected": self.clean_rejected, "detection_auc": self.detection_auc}
                if self.caught is not None else {})


def _state_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _as_loaded(model: LoadedModel | nn.Module, dataset: str) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or LoadedModel, got {type(model).__name__}")
    return LoadedModel(type(model).__name__, model, dataset, _state_sha256(model))


def engine_code() -> fingerprint.Code:
    """The fingerprint of the engine: this module and every project module it imports."""
    return fingerprint.module_code(__name__)


@torch.no_grad()
def _top5(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k = min(5, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1)


def _check_output(attack: str, x_adv: torch.Tensor, x: torch.Tensor, threat: Threat, tol: float) -> None:
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
        raise AttackBudgetError(f"attack {attack} returned {type(x_adv).__name__} {getattr(x_adv, 'dtype', '')} "
                                f"{tuple(getattr(x_adv, 'shape', ()))}; expected {x.dtype} {tuple(x.shape)} on {x.device}")
    if not torch.isfinite(x_adv).all():
        raise AttackBudgetError(f"attack {attack} returned NaN or infinite values")
    dist = threat.distance(x_adv, x).max().item() if x.shape[0] else 0.0
    if dist > threat.eps + tol * max(1.0, threat.eps):
        raise AttackBudgetError(f"attack {attack} left its budget: {threat.norm} distance {dist:.6g} > eps {threat.eps:.6g}")
    lo, hi = threat.bounds
    if x_adv.numel() and (x_adv.min().item() < lo - tol or x_adv.max().item() > hi + tol):
        raise AttackBudgetError(f"attack {attack} left the input bounds {threat.bounds}: "
                                f"range [{x_adv.min().item():.6g}, {x_adv.max().item():.6g}]")


def evaluate(
    model: LoadedModel | nn.Module,
    data: Split,
    attacks: Sequence[str | Attack],
    eps: Sequence[float] | float,
    *,
    norm: str = "linf",
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    store: Any | None = None,
    progress: bool = False,
    tolerance: float = 1e-5,
    defense: Sequence[str | Defense] = (),
    mode: str = "adaptive",
    eot: int = 20,
    votes: int = 10,
    checks: CheckConfig | None = CheckConfig(),
    calibration: Split | None = None,
    escalate: EscalationConfig | None = EscalationConfig(),
    device: str | torch.device | None = None,
) -> list[EvalResult]:
    """Evaluate ``model`` on the first ``n`` points of ``data`` under ``attacks`` at each eps.

    Args:
        model: a zoo/checkpoint :class:`LoadedModel`, or any ``nn.Module`` taking [0, 1] inputs.
        data: the evaluation split (e.g. ``data.load("fmnist", "test")``).
        attacks: specs (``"pgd:steps=20"``), presets (``"strong"``, see ``specs.PRESETS``) or
            Attack instances, run as a cascade: each attack only sees the points that every
            earlier one failed on.
        eps: one radius or a sweep, each >= 0.
        norm: ``linf`` or ``l2``.
        n: evaluate the first n points (default: all).
        seed: seeds every random choice; a cell's result does not depend on other cells.
        batch_size: points per attack call (> 0). It changes no result where every attack and
            defense is batch-invariant (``Attack.batch_invariant``); elsewhere it is part of
            the cell's key.
        store: a :class:`~robustbench_lite.store.Store`; cells already in it are read, not rerun.
        progress: show a progress bar.
        tolerance: slack on the budget check, for float rounding.
        defense: defenses (specs or instances) in front of the model, in order: preprocessing
            steps, then at most one detector, which guards the preprocessed classifier. A
            detector is attacked jointly with the classifier in adaptive mode, and only the
            classifier is attacked in oblivious mode; its rejections of adversarial inputs count
            as robust ("caught"), its rejections of clean inputs as errors.
        mode: how a defended model is attacked. ``adaptive`` (default): white-box through the
            defense, with BPDA for steps declared non-differentiable and EOT over ``eot`` draws
            for random ones. ``bpda``: the identity in the backward pass of every defense, even
            a differentiable one (a purifier's own gradients can vanish or mislead; Athalye
            2018), with EOT as above. ``oblivious``: the attack sees the bare model and its examples are
            then judged on the defended one (the number papers reported before Athalye 2018).
        eot: draws of the randomness averaged per gradient for a random defense (> 0).
        votes: passes whose majority label is the prediction of a random defense (> 0).
        calibration: clean points a detector is fitted and thresholded on (default: the last
            ``detector.calibration`` points of the training split).
        checks: how the gradient-masking checks run (:class:`~robustbench_lite.checks.CheckConfig`),
            once per call at the middle non-zero eps, their verdicts attached to every cell;
            None skips them (and escalation).
        escalate: how the engine answers a failed check on a ranked (non-oblivious) evaluation
            (:class:`~robustbench_lite.escalation.EscalationConfig`): every cell at eps > 0 climbs
            the ladder of attacks that answer the failed checks, as a cascade over its surviving
            points, and the checks run again against the result. The returned (and stored) cell
            is the escalated one, its accuracy the per-example worst case over the attacks and
            every step; a cell whose checks still fail is unverified (``EvalResult.verified``).
            None keeps the raw number, which stays unverified while a check fails.
        device: where everything runs (``auto``, ``cpu``, ``cuda[:N]``, ``mps``;
            :mod:`~robustbench_lite.devices`): the model is moved there, and the engine's copies
            of the data are made there. None keeps the model where it is. The device type is
            part of each cell's key (on a GPU, with its model and libraries).

    Returns:
        One :class:`EvalResult` per eps, in the given order.

    Raises:
        AttackBudgetError: an attack returned a point outside its threat.
        TamperingError: an attack, defense or detector edited the images or labels it was
            handed, the threat, or the model's parameters or buffers.
    """
    plan = _plan(model, data, attacks, eps, norm=norm, n=n, seed=seed, batch_size=batch_size, defense=defense,
                 mode=mode, eot=eot, votes=votes, calibration=calibration, device=device)
    lm, subset, pre, detector = plan.lm, plan.subset, plan.pre, plan.detector
    attack_names, attack_objs, defenses = plan.attack_names, plan.attack_objs, pre + ((detector,) if detector else ())
    if store is not None:
        store.put_model(plan.model, lm.card, source=lm.source)
    fitted = _fit(detector, lm, pre, plan.calibration, seed) if detector is not None else None
    # The engine's own copies of the images and labels: attacks, defenses and detectors only ever
    # see copies, and every budget check and every verdict is made against these.
    x, y = plan.inputs()
    guard = _Guard(lm.model, fitted)
    setup = _Setup(lm.model, guard, pre, fitted, mode, eot, votes, batch_size)
    # An attack that stops a point as soon as it leaves top-1 leaves it next to the boundary,
    # with its label still in the top 5: top-5 robustness is only measured without early stop.
    # And only for one attack: in a cascade every later attack would have to run again on each
    # point an earlier one already fooled (its label still in the top 5), which on a model that
    # breaks costs the cascade many times what top-1 does; a cascade decides top-1 only.
    top5_measured = (len(attack_objs) == 1 and not getattr(attack_objs[0], "early_stop", False)
                     and fitted is None)
    defense_name = " + ".join(d.spec() for d in defenses) or "none"
    plain_logits = None if defenses else predict(lm.model, x.clone(), batch_size)
    rejects = fitted is not None

    results = []
    bar = tqdm(total=len(plan.threats) * len(attack_objs), desc=lm.name, disable=not progress, leave=False)
    for threat, config in zip(plan.threats, plan.configs, strict=True):
        key = config.key
        cached = store.get(key) if store is not None else None
        if cached is not None:
            results.append(cached)
            bar.update(len(attack_objs))
            continue
        start = time.perf_counter()
        torch.manual_seed(seed)
        draws = config.random_key
        deployed, surface, judge = setup.views(_seed(draws, "defense"))
        clean_logits = judge(x.clone()) if plain_logits is None else plain_logits
        robust = clean_logits.argmax(1) == y  # a rejected clean input is an error
        clean_correct = robust.clone()
        top5 = _top5(clean_logits[:, :-1] if rejects else clean_logits, y)
        clean_top5 = top5.clone()
        x_final = x.clone()
        for i, (name, attack) in enumerate(zip(attack_names, attack_objs, strict=True)):
            # Early-stopped attacks only decide top-1, so only still-robust points are worth
            # attacking; full-length ones also get the top-1-fooled points still in the top 5.
            todo = (top5 if top5_measured else robust).nonzero().squeeze(1)
            for chunk, x_adv, logits in _attacked(name, attack, surface, judge, x, y, todo, threat, batch_size,
                                                  (draws, "attack", i), guard, tolerance):
                x_final[chunk] = x_adv
                robust[chunk] &= _held(logits, y[chunk], rejects)
                top5[chunk] &= _top5(logits, y[chunk])
            bar.update(1)
        detection = _detection(deployed, judge, x, y, x_final, clean_correct, clean_logits) if rejects else {}
        arch, recipe = (lm.card.arch, lm.card.recipe) if lm.card else (plan.model.arch, "")
        result = _result(
            top5_measured=top5_measured,
            key=key, model=lm.name, arch=arch, recipe=recipe, dataset=data.dataset, defense=defense_name,
            mode=config.mode, attacks=attack_names, norm=norm, eps=threat.eps, clean_acc=int(clean_correct.sum()) / len(subset),
            clean_top5=int(clean_top5.sum()) / len(subset), seconds=time.perf_counter() - start, seed=seed,
            data_sha256=config.data_sha256, weights_sha256=lm.weights_sha256, versions=config.versions,
            robust=robust.cpu().numpy().copy(), robust_top5_mask=top5.cpu().numpy().copy(), **detection,
        )
        if store is not None:
            store.put(result, config, provenance=_provenance(lm, batch_size, x.device))
        results.append(result)
    bar.close()
    guard.check("the evaluation")
    if checks is not None:
        verdicts = _checked(plan, setup, guard, x, y, results, checks, store)
        results = [dataclasses.replace(r, checks=verdicts) for r in results]
        if escalate is not None and plan.configs[0].mode != "oblivious" and any(v.passed is False for v in verdicts):
            ladder = _Ladder(plan, setup, guard, x, y, checks, escalate, batch_size, tolerance, store, progress,
                             attacks=plan.attack_objs)
            results = [ladder.climb(r) if r.eps > 0 else r for r in results]
    return results


def _attacked(name: str, attack: Attack, surface: nn.Module, judge: Any, x: torch.Tensor, y: torch.Tensor,
              todo: torch.Tensor, threat: Threat, batch_size: int, seed: tuple[Any, ...], guard: "_Guard",
              tolerance: float) -> Any:
    """Run one attack on the points ``todo`` in chunks, as the engine does everywhere: on copies of
    the images and labels, each chunk's random numbers from per-point streams (a batch-invariant
    attack) or a generator per chunk, every output checked against the engine's own copies and the
    threat, then projected and judged. Yields (chunk, projected x_adv, the judge's scores)."""
    for j, chunk in enumerate(todo.split(batch_size) if todo.numel() else ()):
        xc, yc = x[chunk], y[chunk]  # the engine's, for checking and judging
        xb, yb = xc.clone(), yc.clone()  # the attack's
        rng: PointStreams | torch.Generator = (
            PointStreams.for_points(_seed(*seed), chunk) if attack.batch_invariant
            else devices.generator(_seed(*seed, j), x.device))
        x_adv = attack(surface, xb, yb, dataclasses.replace(threat), generator=rng)
        _check_untouched(f"attack {name}", xb, xc, yb, yc)
        guard.check(f"attack {name}")
        _check_output(name, x_adv, xc, threat, tolerance)
        x_adv = threat.project(x_adv, xc)
        yield chunk, x_adv, judge(x_adv)


def _seed(key: str, *what: Any) -> int:
    """A 60-bit seed for one use of randomness in a cell, from its ``random_key``."""
    return int(digest([key, *what])[:15], 16)


def _provenance(lm: LoadedModel, batch_size: int, device: torch.device) -> dict[str, Any]:

    return {"batch_size": batch_size, "model_source": lm.source, "created": now(), "machine": machine(device.type)}


def _check_untouched(who: str, xb: torch.Tensor, x: torch.Tensor, yb: torch.Tensor, y: torch.Tensor) -> None:
    if not torch.equal(yb, y):
        raise TamperingError(f"{who} modified the labels it was handed ({int((yb != y).sum())} of {len(y)} changed); "
                             "the engine judges against its own copy and refuses the result")
    if not torch.equal(xb, x):
        raise TamperingError(f"{who} modified the images it was handed in place (largest change "
                             f"{(xb - x).abs().max().item():.4g}); an attack returns x_adv and leaves x as it got it")


class _Guard:
    """The model the attacks run on, as a private copy, and a check that neither it nor the
    engine's own model (nor a detector's fitted parts) changed: an attack that edits the weights
    it attacks would otherwise weaken the model it is judged on."""

    def __init__(self, model: nn.Module, fitted: Fitted | None):
        self.model = model
        self.parts = fitted.parts if fitted is not None else None
        self.snapshot = _state(model, self.parts)

    @functools.cached_property
    def attack_model(self) -> nn.Module:
        """Made on first use: an evaluation whose cells are all stored copies nothing."""
        try:
            return copy.deepcopy(self.model)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be copied is attacked in place, still checked
            _log.warning("the model could not be copied for the attacks (%s: %s); they run on the engine's own, "
                         "whose state is checked after each call", type(exc).__name__, exc)
            return self.model

    def check(self, who: str) -> None:
        models = [self.model] + ([self.attack_model] if "attack_model" in vars(self) else [])
        for module in models:
            _compare(who, "model", self.snapshot[0], module.state_dict())
        if self.parts is not None:
            _compare(who, "detector", self.snapshot[1], self.parts.state_dict())


def _state(model: nn.Module, parts: nn.Module | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    copy_of = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
    return copy_of(model), (copy_of(parts) if parts is not None else {})


def _compare(who: str, label: str, before: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> None:
    if before.keys() != now.keys():
        raise TamperingError(f"the {label}'s parameters and buffers changed during {who}: "
                             f"entries {sorted(set(before) ^ set(now))[:5]} appeared or went")
    for k, v in before.items():
        if not torch.equal(v, now[k]):
            raise TamperingError(f"the {label}'s {k!r} changed during {who} (by the code run there, or by a forward "
                                 "pass that updates its own state); the engine refuses to score a moving model")


@dataclass(frozen=True)
class _Plan:
    """What :func:`evaluate` will compute, checked and keyed before any attack runs."""

    lm: LoadedModel
    model: ModelId
    subset: Split
    threats: tuple[Threat, ...]
    attack_names: tuple[str, ...]
    attack_objs: tuple[Attack, ...]
    pre: tuple[Defense, ...]
    detector: Detector | None
    calibration: Split | None
    configs: tuple[CellConfig, ...]  # one per threat
    device: torch.device

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's own copies of the evaluation's images and labels, on the plan's device."""
        return self.subset.floats().to(self.device), self.subset.labels.clone().to(self.device)


def _plan(model: LoadedModel | nn.Module, data: Split, attacks: Sequence[str | Attack], eps: Sequence[float] | float, *,
          norm: str, n: int | None, seed: int, batch_size: int, defense: Sequence[str | Defense], mode: str, eot: int,
          votes: int, calibration: Split | None, device: str | torch.device | None = None) -> _Plan:
    eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not eps_list:
        raise ValueError("eps must hold at least one value")
    threats = tuple(Threat(norm, float(e)) for e in eps_list)
    attacks = specs.expand(attacks)
    attack_objs = [specs.attack(a) for a in attacks]
    if not attack_objs:
        raise ValueError("attacks must hold at least one attack")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    defenses = chain(defense)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    check_int("evaluate", "eot", eot, 1)
    check_int("evaluate", "votes", votes, 1)
    subset = data.first(n) if n is not None else data
    lm = _as_loaded(model, data.dataset)
    if lm.dataset != data.dataset:
        raise ValueError(f"model {lm.name} was built for {lm.dataset} but the data is {data.dataset}")
    dev = devices.of(lm.model) if device is None else devices.resolve(device)
    if devices.of(lm.model) != dev:
        lm.model.to(dev)
    devices.deterministic(dev)
    pre, detector = _split(defenses)
    for d in pre if dev.type != "cpu" else ():
        if type(d).cpu_only:
            _log.info("defense %s runs on the CPU only: each batch goes there from %s and back", d.spec(), dev)
    random_defense = any(d.stochastic for d in pre)
    if random_defense and mode in ADAPTIVE_MODES:
        attack_objs = [without_early_stop(a) for a in attack_objs]
    attack_names = tuple(a if isinstance(a, str) else a.config()["attack"] for a in attacks)
    identity, libraries = model_id(lm)
    engine = engine_code()
    versions = dict(engine.libraries) | dict(libraries)
    methods: list[list[dict[str, Any]]] = [[], []]
    for kind, objs in ((0, attack_objs), (1, defenses)):
        for obj in objs:
            ident, libs = method_identity(obj)
            methods[kind].append(ident)
            versions |= dict(libs)
    calib = None
    calibration_id = None
    if detector is not None:
        calib = calibration if calibration is not None else data_mod.load(data.dataset, "train")
        calib = calib.last(min(detector.calibration, len(calib)))
        calibration_id = {"split": calib.split, "n": len(calib), "sha256": calib.sha256()}
    invariant = _batch_invariant(lm.model, subset, attack_objs, pre, detector, max(threats, key=lambda t: t.eps), dev)
    common = dict(model=identity, dataset=data.dataset, split=subset.split, n=len(subset), data_sha256=subset.sha256(),
                  norm=norm, bounds=threats[0].bounds, attacks=tuple(methods[0]), defenses=tuple(methods[1]),
                  mode=mode if defenses else "none",
                  eot=eot if random_defense and mode in ADAPTIVE_MODES else 1, votes=votes if random_defense else 1,
                  calibration=calibration_id, seed=seed, batch_size=None if invariant else batch_size,
                  device=dev.type, dtype="float32", engine_sha256=engine.sha256,
                  versions={"python": platform.python_version(),
                            **dict(sorted((versions | numerics.environment(dev)).items()))})
    configs = tuple(CellConfig(eps=t.eps, **common) for t in threats)  # type: ignore[arg-type]
    return _Plan(lm, identity, subset, threats, attack_names, tuple(attack_objs), pre, detector, calib, configs, dev)


def method_identity(method: Attack | Defense | Detector) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """A method's identity in a cell's key: its config (registered name, every resolved
    hyperparameter, the weights of the models it loads) and its code's fingerprint; and the
    libraries its code calls into."""
    code = fingerprint.code_of(type(method))
    return method.config() | {"code_sha256": code.sha256}, code.libraries


#: The packages whose methods' declarations the test suite checks; a declaration made anywhere
#: else (a plugin) is tested by the engine before it is believed.
_IN_TREE = frozenset({"robustbench_lite", "attacks", "defenses", "generative", "experiments"})
_PROBED: dict[str, bool] = {}


def _batch_invariant(model: nn.Module, subset: Split, attacks: Sequence[Attack], pre: Sequence[Defense],
                     detector: Detector | None, threat: Threat, device: torch.device) -> bool:
    """Whether a cell's bits cannot depend on how its points are batched: every attack declares
    it (and draws from per-point streams), no defense is random (its draws follow the batches)
    or undeclared, and the model's outputs for a point do not change with its batch-mates. A
    plugin's declaration is tested on a few points first (``conformance``); one that fails keys
    its cells by the batch size."""

    if not all(a.batch_invariant for a in attacks):
        return False
    if any(d.stochastic or not type(d).batch_invariant for d in pre):
        return False
    if detector is not None and not type(detector).batch_invariant:
        return False
    k = min(len(subset), 8)
    if k < 2:
        return True
    probe = subset.first(min(len(subset), 24))
    xp, yp = probe.floats().to(device), probe.labels.clone().to(device)
    for a in attacks:
        # On a copy of the model: the code under test has not earned the engine's trust yet.
        if threat.eps > 0 and not _honest(a, lambda a=a: conformance.attack_batches(a, copy.deepcopy(model), xp, yp, threat)):
            return False
    for d in pre:
        if not _honest(d, lambda d=d: conformance.defense_batches(d, xp)):
            return False
    x = subset.first(k).floats().to(device)
    alone = predict(model, x, batch_size=1)
    together = predict(model, x.flip(0), batch_size=k).flip(0)
    # Float rounding differs between batch shapes; batch statistics (a train-mode norm layer, a
    # layer that normalises over the batch) move logits by orders of magnitude more.
    coupled = not torch.allclose(alone, together, rtol=1e-3, atol=1e-3 * (1 + alone.abs().max().item()))
    if coupled:
        _log.warning("the model's output for a point depends on the other points of its batch: its cells are keyed "
                     "by the batch size")
    return not coupled


def _honest(method: Attack | Defense, probe: Any) -> bool:
    """Whether a method's ``batch_invariant`` declaration holds: believed for in-tree code (the test
    suite checks it), tested once per process (and per configuration) for anything else."""
    if type(method).__module__.split(".")[0] in _IN_TREE:
        return True
    key = digest(method_identity(method)[0])
    if key not in _PROBED:
        try:
            problem = probe()
        except Exception as exc:  # noqa: BLE001 - it will raise again where it runs, and be reported there
            problem = f"raised {type(exc).__name__} when its batch invariance was tested: {exc}"
        _PROBED[key] = problem is None
        if problem:
            _log.warning("%s %s; its cells are keyed by the batch size", method.config(), problem)
    return _PROBED[key]


def cell_keys(model: LoadedModel | nn.Module, data: Split, attacks: Sequence[str | Attack], eps: Sequence[float] | float, *,
              norm: str = "linf", n: int | None = None, seed: int = 0, batch_size: int = 500,
              defense: Sequence[str | Defense] = (), mode: str = "adaptive", eot: int = 20, votes: int = 10,
              calibration: Split | None = None, device: str | torch.device | None = None) -> list[str]:
    """The store keys :func:`evaluate` would give its cells, one per eps, computed without
    attacking: a scheduler skips the cells already stored (same arguments, same meaning)."""
    return [c.key for c in cell_configs(model, data, attacks, eps, norm=norm, n=n, seed=seed, batch_size=batch_size,
                                        defense=defense, mode=mode, eot=eot, votes=votes, calibration=calibration,
                                        device=device)]


def cell_configs(model: LoadedModel | nn.Module, data: Split, attacks: Sequence[str | Attack],
                 eps: Sequence[float] | float, *, norm: str = "linf", n: int | None = None, seed: int = 0,
                 batch_size: int = 500, defense: Sequence[str | Defense] = (), mode: str = "adaptive", eot: int = 20,
                 votes: int = 10, calibration: Split | None = None,
                 device: str | torch.device | None = None) -> list[CellConfig]:
    """The :class:`CellConfig` of each cell :func:`evaluate` would compute, one per eps."""
    plan = _plan(model, data, attacks, eps, norm=norm, n=n, seed=seed, batch_size=batch_size, defense=defense, mode=mode,
                 eot=eot, votes=votes, calibration=calibration, device=device)
    return list(plan.configs)


def _split(defenses: tuple[Defense | Detector, ...]) -> tuple[tuple[Defense, ...], Detector | None]:
    detectors = [i for i, d in enumerate(defenses) if isinstance(d, Detector)]
    if len(detectors) > 1:
        raise ValueError(f"at most one detector per evaluation, got {len(detectors)}: "
                         + ", ".join(defenses[i].spec() for i in detectors))
    if detectors and detectors[0] != len(defenses) - 1:
        raise ValueError(f"the detector {defenses[detectors[0]].spec()} must come last: it guards the preprocessed classifier")
    pre = tuple(d for d in defenses if isinstance(d, Defense))
    return pre, (defenses[detectors[0]] if detectors else None)  # type: ignore[return-value]


_FITTED: dict[str, Fitted] = {}


def _fit(detector: Detector, lm: LoadedModel, pre: tuple[Defense, ...], calib: Split, seed: int) -> Fitted:
    """Fit a detector on clean calibration points, once per model, chain and calibration set."""
    key = digest({"weights": lm.weights_sha256, "detector": method_identity(detector)[0],
                  "pre": [method_identity(d)[0] for d in pre], "calibration": calib.sha256(), "seed": seed,
                  "device": str(devices.of(lm.model))})
    if key not in _FITTED:
        classifier = Defended(lm.model, pre, seed=int(key[:15], 16))
        with eval_mode(lm.model):
            dev = devices.of(lm.model)
            _FITTED[key] = fit_detector(detector, classifier.surface(1), lm.model, calib.floats().to(dev),
                                        calib.labels.to(dev), seed=int(key[15:30], 16))
        while len(_FITTED) > 16:
            _FITTED.pop(next(iter(_FITTED)))
    return _FITTED[key]


def _held(logits: torch.Tensor, y: torch.Tensor, rejects: bool) -> torch.Tensor:
    """Whether the defense held at adversarial inputs: classified correctly, or rejected."""
    pred = logits.argmax(1)
    return (pred == y) | (pred == logits.shape[1] - 1) if rejects else pred == y


def _detection(deployed: nn.Module, judge: Any, x: torch.Tensor, y: torch.Tensor, x_final: torch.Tensor,
               clean_correct: torch.Tensor, clean_logits: torch.Tensor) -> dict[str, float | None]:
    final = judge(x_final)
    reject = final.shape[1] - 1
    caught = clean_correct & (final.argmax(1) == reject)

    def margin(v: torch.Tensor) -> torch.Tensor:  # reject logit over the best class: monotone in the score
        return torch.cat([o[:, -1] - o[:, :-1].amax(1) for o in map(deployed, v.split(500))])

    with torch.no_grad(), eval_mode(deployed):
        m_clean, m_adv = margin(x), margin(x_final)
    # Adversarial inputs that fool the classifier alone (its K columns) against clean inputs.
    fooled = clean_correct & (final[:, :-1].argmax(1) != y)
    return {"caught": int(caught.sum()) / len(x),
            "clean_rejected": int((clean_logits.argmax(1) == reject).sum()) / len(x),
            "detection_auc": auc(m_clean[clean_correct], m_adv[fooled])}


@dataclass(frozen=True)
class _Setup:
    """A model with its defenses as the engine attacks and judges it: the deployed model and the
    judge run on the engine's own model, the attack's view on the private copy (``_Guard``), with
    its own copies of the defenses."""

    model: nn.Module
    guard: _Guard
    pre: tuple[Defense, ...]
    detector: Fitted | None
    mode: str
    eot: int
    votes: int
    batch_size: int

    @property
    def attack_model(self) -> nn.Module:
        return self.guard.attack_model

    @property
    def defended(self) -> bool:
        return bool(self.pre) or self.detector is not None

    @property
    def parts(self) -> tuple[Defense | Detector, ...]:
        return self.pre + ((self.detector.detector,) if self.detector is not None else ())

    def ladder_views(self, seed: int) -> tuple[nn.Module | None, nn.Module | None]:
        """What the escalation's defense_bpda and oblivious steps attack: BPDA through every defense
        step, and the bare classifier; (None, None) without a defense."""
        if not self.defended:
            return None, None
        return dataclasses.replace(self, mode="bpda").views(seed)[1], self.attack_model

    def views(self, seed: int) -> tuple[nn.Module, nn.Module, Any]:
        """The deployed model, the attack's view of it, and the judge of its predictions."""
        if not self.defended:
            return self.model, self.attack_model, functools.partial(predict, self.model, batch_size=self.batch_size)
        classifier = Defended(self.model, self.pre, seed=seed)
        deployed: nn.Module = classifier
        attacked = Defended(self.attack_model, copy.deepcopy(self.pre), seed=seed)
        attacked.generator = classifier.generator  # one stream of defense randomness per cell, as before
        surface: nn.Module = (attacked.surface(self.eot, bpda_all=self.mode == "bpda") if self.mode in ADAPTIVE_MODES
                              else self.attack_model)
        if self.detector is not None:
            deployed = Guarded(classifier, self.model, self.detector, bpda=False)
            if self.mode in ADAPTIVE_MODES:
                surface = Guarded(surface, self.attack_model, self.detector, bpda=True)
        return deployed, surface, functools.partial(vote, deployed, votes=self.votes, batch_size=self.batch_size)


def _checked(plan: _Plan, setup: _Setup, guard: _Guard, x: torch.Tensor, y: torch.Tensor, results: list[EvalResult],
             cfg: CheckConfig, store: Any | None) -> tuple[Verdict, ...]:
    """The gradient-masking verdicts of this call's cells: read from the store under their own key
    (the check settings, the model and defense, the cells whose accuracies they read), else run."""
    nonzero = sorted(t.eps for t in plan.threats if t.eps > 0)
    if not nonzero:
        return ()
    eps = nonzero[len(nonzero) // 2]
    tested = _tested(cfg, plan.attack_objs)
    config = checks_config(plan.configs[0], eps, dataclasses.asdict(cfg), [r.key for r in results], _checks_code(),
                           [method_identity(a)[0] for a in tested] if cfg.binarization else [])
    key = digest(config)
    stored = store.get_checks(key) if store is not None else None
    if stored is not None:
        return stored
    verdicts = _check(setup, x, y, Threat(plan.threats[0].norm, eps), {r.eps: r.robust_acc for r in results}, cfg,
                      _seed(checks_random_key(config), "checks"), sources=_user_source(tested))
    guard.check("the gradient-masking checks")
    if store is not None:
        store.put_checks(key, config, verdicts)
    return verdicts


def _checks_code() -> str:
    """The checks' code: the suite and the binarization test."""
    return digest([fingerprint.module_code("robustbench_lite.checks.suite").sha256,
                   fingerprint.module_code("robustbench_lite.checks.binarization").sha256])


def _user_source(attacks: Sequence[Attack]) -> list[_Source]:
    return [("the evaluation's attacks", _on_surface, attacks)] if attacks else []


def escalation_config(result: EvalResult, failed: set[str], checks: CheckConfig, config: EscalationConfig,
                      steps: list[tuple[ladder_mod.Step, list[Attack]]]) -> dict[str, Any]:
    """The key of an escalated cell: the cell it escalates (its key holds everything that decided
    it), the failed checks that chose the steps, the check and ladder settings, the ladder as data,
    every step's attacks (their configs and code, surrogates by weights) and the code that climbs it."""
    return {"schema": CellConfig.__dataclass_fields__["schema"].default, "kind": "escalated", "cell": result.key,
            "failed": sorted(failed), "checks": dataclasses.asdict(checks),
            "settings": dataclasses.asdict(config), "ladder": ladder_mod.ladder_data(),
            "steps": [{"step": st.name, "attacks": [method_identity(a)[0] for a in attacks]} for st, attacks in steps],
            "escalation_sha256": fingerprint.module_code("robustbench_lite.escalation").sha256,
            "engine_sha256": engine_code().sha256}


class _Ladder:
    """Climbs the escalation ladder for the cells of one evaluation (see escalation.py)."""

    def __init__(self, plan: _Plan, setup: _Setup, guard: _Guard, x: torch.Tensor, y: torch.Tensor, checks: CheckConfig,
                 config: EscalationConfig, batch_size: int, tolerance: float, store: Any | None, progress: bool = False,
                 attacks: Sequence[Attack] = ()):
        self.plan, self.setup, self.guard, self.x, self.y = plan, setup, guard, x, y
        self.attacks = _tested(checks, attacks)  # what the binarization test runs besides the steps
        self.checks, self.config, self.batch_size, self.tolerance, self.store = checks, config, batch_size, tolerance, store
        self.progress = progress
        # Seeded from the cell's inputs without its attacks or any code fingerprint, so a re-run
        # under changed code (rbl verify) draws the same numbers.
        self.draws = dataclasses.replace(plan.configs[0], attacks=(), eps=0.0).random_key

    def _steps(self, failed: set[str]) -> list[tuple[ladder_mod.Step, list[Attack]]]:
        surrogates = ladder_mod.surrogates(self.config, self.plan.lm.dataset, self.plan.lm.weights_sha256)
        out = []
        for st in ladder_mod.steps_for(failed):
            if st.view == "transfer":
                attacks: list[Attack] = [ATTACKS.create("transfer", surrogate=s, attack=a) for s in surrogates
                                         for a in st.specs(self.config)]
            else:
                attacks = [specs.attack(a) for a in st.specs(self.config)]
            out.append((st, attacks))
        return out

    def climb(self, result: EvalResult) -> EvalResult:
        failed = {v.name for v in result.checks if v.passed is False}
        steps = self._steps(failed)
        config = escalation_config(result, failed, self.checks, self.config, steps)
        key = digest(config)
        stored = self.store.get(key) if self.store is not None else None
        if stored is not None:
            return stored
        start = time.perf_counter()
        threat = Threat(result.norm, result.eps)
        deployed, surface, judge = self.setup.views(_seed(self.draws, "escalation", "defense"))
        rejects = self.setup.detector is not None
        robust = torch.from_numpy(result.robust.copy()).to(self.x.device)
        n = len(robust)
        # Where the gradient dies is looked for on clean-correct points (a wrong one has no loss to climb).
        look = robust.nonzero().squeeze(1)[:16]
        look = look if look.numel() >= 4 else torch.arange(min(n, 16), device=robust.device)
        bpda, bare = self.setup.ladder_views(_seed(self.draws, "escalation", "defense"))
        record: list[dict[str, Any]] = []
        self.used: list[tuple[ladder_mod.Step, nn.Module, list[Attack]]] = []
        self.followed: dict[str, nn.Module] = {"the attack surface": surface}  # views whose gradients an attack followed
        names = list(result.attacks)
        for st, attacks in steps:
            t0 = time.perf_counter()
            before = int(robust.sum())
            answers = sorted(c for c in failed if st.name in ladder_mod.LADDER.get(c, ()))
            if st.view == "transfer":
                view, what = (surface, "from " + ", ".join(sorted({a.surrogate for a in attacks}))) if attacks else (
                    None, "no surrogate model of this dataset is trained (escalation surrogates=...)")
            else:
                view, what = ladder_mod.view(st, surface=surface, bare=bare, defense_bpda=bpda, x=self.x[look],
                                             y=self.y[look], config=self.config)
            entry: dict[str, Any] = {"step": st.name, "answers": answers, "view": what}
            if view is None:
                record.append(entry | {"skipped": True})
                continue
            ran: list[str] = []
            for round_ in range(st.rounds):
                round_attacks = attacks if round_ == 0 else [specs.attack(a) for a in st.specs(self.config, round_)]
                at_start = int(robust.sum())
                for i, attack in enumerate(round_attacks):
                    spec = specs.render(attack.config(), "attack")
                    ran.append(spec)
                    todo = robust.nonzero().squeeze(1)
                    for chunk, _, logits in _attacked(spec, attack, view, judge, self.x, self.y, todo, threat,
                                                      self.batch_size, (self.draws, "escalation", st.name, round_, i),
                                                      self.guard, self.tolerance):
                        robust[chunk] &= _held(logits, self.y[chunk], rejects)
                self.used.append((st, view, round_attacks))
                if st.view != "transfer" and not any(a.config()["attack"] == "square" for a in round_attacks):
                    self.followed[what] = view
                if st.rounds > 1 and at_start - int(robust.sum()) <= self.config.agree * n:
                    break
            names += [f"{st.name}[{a}]" for a in ran]
            record.append(entry | {"attacks": ran, "broken": before - int(robust.sum()),
                                   "robust_acc": int(robust.sum()) / n, "seconds": round(time.perf_counter() - t0, 3)})
            _log.info("escalation %s: robust %.4f", st.name, int(robust.sum()) / n)
        self.guard.check("the escalation")
        rechecks = self._recheck(result, robust, threat, failed, record)
        self.guard.check("the checks after escalation")
        out = _result(top5_measured=False, key=key, model=result.model, arch=result.arch, recipe=result.recipe,
                      dataset=result.dataset, defense=result.defense, mode=result.mode, attacks=tuple(names),
                      norm=result.norm, eps=result.eps, clean_acc=result.clean_acc, clean_top5=result.clean_top5,
                      seconds=result.seconds + time.perf_counter() - start, seed=result.seed,
                      data_sha256=result.data_sha256, weights_sha256=result.weights_sha256, versions=result.versions,
                      caught=result.caught, clean_rejected=result.clean_rejected, detection_auc=result.detection_auc,
                      combined_from=(result.key,) + tuple(result.combined_from), checks=result.checks,
                      escalated_from=result.key, escalation=tuple(record), rechecks=rechecks,
                      robust=robust.cpu().numpy().copy(), robust_top5_mask=robust.cpu().numpy().copy())
        if self.store is not None:
            self.store.put(out, config, provenance=_provenance(self.plan.lm, self.batch_size, self.x.device))
        return out

    def _reference(self, robust: torch.Tensor, threat: Threat) -> Any:
        """Robust under the escalated evaluation, on the checks' points: the cell's own bits at its
        threat, and the steps that ran, re-run on those points, at any other."""
        n = min(self.checks.n, len(self.x))
        judge = self.setup.views(_seed(self.draws, "escalation", "recheck"))[2]
        rejects = self.setup.detector is not None

        def reference(t: Threat) -> torch.Tensor:
            if t.norm == threat.norm and abs(t.eps - threat.eps) < 1e-12:
                return robust[:n].clone()
            if t.norm == threat.norm and t.eps < threat.eps:
                # Where the checks read a smaller eps (the monotonicity sweep), a weaker attack there can
                # only raise that accuracy, never make accuracy rise with eps: the steps are not re-run.
                return torch.ones(n, dtype=torch.bool, device=robust.device)
            x, y = self.x[:n], self.y[:n]
            bits = _held(judge(x.clone()), y, rejects)
            for k, (_, view, attacks) in enumerate(self.used):
                for i, attack in enumerate(attacks):
                    todo = bits.nonzero().squeeze(1)
                    for chunk, _, logits in _attacked("escalation", attack, view, judge, x, y, todo, t, self.batch_size,
                                                      (self.draws, "recheck", t.eps, k, i), self.guard, self.tolerance):
                        bits[chunk] &= _held(logits, y[chunk], rejects)
            return bits
        return reference

    def _recheck(self, result: EvalResult, robust: torch.Tensor, threat: Threat, failed: set[str],
                 record: list[dict[str, Any]]) -> tuple[Verdict, ...]:
        after = _check(self.setup, self.x, self.y, threat, {result.eps: int(robust.sum()) / len(robust)}, self.checks,
                       _seed(self.draws, "recheck", result.eps), reference=self._reference(robust, threat),
                       sources=_user_source(self.attacks) + self._sources(), tolerance=self.tolerance)
        comparisons_ok = all(v.passed is not False for v in after if v.name not in ladder_mod.PROPERTIES)
        alive, where = self._survivors_alive(robust)
        out = []
        for v in after:
            if v.name in ladder_mod.PROPERTIES and v.passed is False:
                ran = [s["step"] for s in record if not s.get("skipped") and v.name in s["answers"]]
                # A property of the model is answered only where the points still standing are not the
                # ones it hides: some view an attack followed has a live gradient on them (a random
                # model's is answered by EOT itself).
                needs_gradient = v.name != "stochastic_outputs"
                why = ("no step of its ladder applied" if not ran else
                       "an attack comparison still fails after escalation" if not comparisons_ok else
                       f"on the points still robust, no view an attack followed has a live gradient ({where})"
                       if needs_gradient and not alive else "")
                if not why:
                    v = Verdict(v.name, True, v.value, v.threshold,
                                f"answered by escalation ({', '.join(ran)}): the number is the per-example worst case over "
                                f"them, every attack comparison passes against it" + (f", and {where}" if needs_gradient else "")
                                + f". As found: {v.explanation}")
                else:
                    v = dataclasses.replace(v, explanation=v.explanation + "; not answered: " + why)
            out.append(v)
        return tuple(out)

    def _sources(self) -> list[_Source]:
        """The escalation steps that ran, as sources of the binarization test: each step's attacks on
        its view of the binarized model (transfer does not apply: its surrogates keep their own heads)."""
        out: list[_Source] = []
        for st, _, attacks in self.used:
            def make(bsetup: _Setup, surface: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     st: ladder_mod.Step = st) -> tuple[nn.Module | None, str]:
                if st.view == "transfer":
                    return None, "its surrogates are not binarized"
                bpda, bare = bsetup.ladder_views(_seed(self.draws, "binarization", "defense"))
                return ladder_mod.view(st, surface=surface, bare=bare, defense_bpda=bpda, x=x, y=y, config=self.config)
            out.append((st.name, make, attacks))
        return out

    def _survivors_alive(self, robust: torch.Tensor, threshold: float = 0.1) -> tuple[bool, str]:
        """Whether, on (up to the checks' n of) the points still robust, some view whose gradient an
        attack followed has a zero or non-finite input gradient on at most ``threshold`` of them
        (the gradients check's rule), and where."""
        left = robust.nonzero().squeeze(1)[: self.checks.n]
        if left.numel() == 0:
            return True, "no point is left standing"
        x, y = self.x[left], self.y[left]
        best, name = -1.0, ""
        for what, view in self.followed.items():
            share = float(live(loss_grad(view, x, y)[1]).float().mean())
            if share > best:
                best, name = share, what
        return best >= 1 - threshold, (f"on the {len(left)} points still robust the gradient of {name} is alive on "
                                       f"{best:.0%} of them")


def escalate(result: EvalResult, model: LoadedModel | nn.Module, data: Split, *, defense: Sequence[str | Defense] = (),
             mode: str = "adaptive", eot: int = 20, votes: int = 10, batch_size: int = 500,
             checks: CheckConfig = CheckConfig(), config: EscalationConfig = EscalationConfig(), store: Any | None = None,
             calibration: Split | None = None, tolerance: float = 1e-5,
             device: str | torch.device | None = None) -> EvalResult:
    """Escalate one stored or combined cell whose checks failed (a profile's per-example worst case
    over single-attack cells), as :func:`evaluate` escalates its own: ``model``, ``data`` and the
    defense arguments must be those the cell was computed with. A cell whose checks passed, an
    oblivious one and one at eps 0 are returned as they are."""
    if result.escalated_from or result.mode == "oblivious" or result.eps == 0 or not any(
            v.passed is False for v in result.checks):
        return result
    plan = _plan(model, data, ["fgsm"], [result.eps], norm=result.norm, n=result.n, seed=result.seed, batch_size=batch_size,
                 defense=defense, mode=mode, eot=eot, votes=votes, calibration=calibration, device=device)
    if (plan.lm.weights_sha256, plan.subset.sha256()) != (result.weights_sha256, result.data_sha256):
        raise ValueError(f"escalate: the cell {result.key[:16]}... was computed on other weights or data than given")
    fitted = _fit(plan.detector, plan.lm, plan.pre, plan.calibration, result.seed) if plan.detector is not None else None
    guard = _Guard(plan.lm.model, fitted)
    setup = _Setup(plan.lm.model, guard, plan.pre, fitted, mode, eot, votes, batch_size)
    try:  # the binarization test re-runs the cell's attacks where they are specs (a profile's are)
        attacks = [specs.attack(a) for a in result.attacks]
    except (ValueError, TypeError, KeyError):
        attacks = []
    ladder = _Ladder(plan, setup, guard, *plan.inputs(), checks, config, batch_size, tolerance, store, attacks=attacks)
    return ladder.climb(result)


def recheck(config: dict[str, Any], model: LoadedModel, data: Split, accuracies: dict[float, float],
            defenses: Sequence[Defense | Detector], calibration: Split | None = None,
            attacks: Sequence[Attack] = (), device: str | torch.device | None = None) -> tuple[Verdict, ...]:
    """Re-run one stored set of gradient-masking verdicts from its config (``rbl verify``):
    ``accuracies`` are the robust accuracies of the cells it names, ``defenses`` and ``attacks``
    (those the binarization test ran) rebuilt from their stored configs."""
    cell = CellConfig.from_dict(config["cell"])
    plan = _plan(model, data, ["fgsm"], [cell.eps], norm=cell.norm, n=cell.n, seed=cell.seed,
                 batch_size=cell.batch_size or 500, defense=defenses, mode=cell.mode if cell.defenses else "adaptive",
                 eot=cell.eot, votes=cell.votes, calibration=calibration, device=device)
    fitted = _fit(plan.detector, plan.lm, plan.pre, plan.calibration, cell.seed) if plan.detector is not None else None
    guard = _Guard(plan.lm.model, fitted)
    mode = cell.mode if cell.defenses else "adaptive"
    setup = _Setup(plan.lm.model, guard, plan.pre, fitted, mode, cell.eot, cell.votes, cell.batch_size or 500)
    verdicts = _check(setup, *plan.inputs(), Threat(cell.norm, cell.eps), accuracies,
                      CheckConfig(**config["settings"]), _seed(checks_random_key(config), "checks"),
                      sources=_user_source(attacks))
    guard.check("the gradient-masking checks")
    return verdicts


def _tested(cfg: CheckConfig, attacks: Sequence[Attack]) -> list[Attack]:
    """The attacks the binarization test runs: the checks' own list, else the evaluation's."""
    return [specs.attack(a) for a in cfg.attacks] if cfg.attacks is not None else list(attacks)


def _check(setup: _Setup, x: torch.Tensor, y: torch.Tensor, threat: Threat, accuracies: dict[float, float],
           cfg: CheckConfig, seed: int, reference: Any = None, sources: Sequence[_Source] = (),
           tolerance: float = 1e-5) -> tuple[Verdict, ...]:
    deployed, surface, judge = setup.views(seed)
    binarized = None
    if cfg.binarization:
        binarized = (functools.partial(_binarization, setup, x, y, threat, cfg, seed, sources, tolerance) if sources
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
_Source = tuple[str, Any, Sequence[Attack]]


def _on_surface(setup: "_Setup", surface: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, str]:
    return surface, "the attack surface"


def _binarization(setup: _Setup, x: torch.Tensor, y: torch.Tensor, threat: Threat, cfg: CheckConfig, seed: int,
                  sources: Sequence[_Source], tolerance: float = 1e-5) -> Binarized | str:
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

    def deployed_as_setup(model: nn.Module) -> _Setup:
        return _Setup(model, _Guard(model, None), setup.pre, None, setup.mode, setup.eot, setup.votes, setup.batch_size)

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
            for chunk, _, logits in _attacked(f"binarization ({label})", attack, view, bjudge, xs, zeros, todo, threat,
                                              setup.batch_size, (seed, "binarization", s, i), bsetup.guard, tolerance):
                hit[chunk] |= logits.argmax(1) == 1
        found[label] = found.get(label, 0) + int(hit.sum()) - before
    bsetup.guard.check("the binarization test")
    return Binarized(points=k, valid=int(valid.sum()), found=found, found_any=int((hit & valid).sum()), skipped=skipped)


def _result(*, robust: np.ndarray, robust_top5_mask: np.ndarray, top5_measured: bool, **fields: Any) -> EvalResult:
    n = len(robust)
    k = int(robust.sum())
    top5 = int(robust_top5_mask.sum()) / n if top5_measured else None
    return EvalResult(n=n, robust_acc=k / n, robust_acc_ci=wilson(k, n), robust_top5=top5,
                      robust=robust, robust_top5_mask=robust_top5_mask, **fields)


def combine(results: Sequence[EvalResult]) -> EvalResult:
    """The per-example worst case of single-attack cells of one model, eps and subset.

    An example is robust only if it is robust in every cell: the same rule as running the
    attacks as one list, computed from stored bits instead of attacking again. Its key is that
    of :func:`~robustbench_lite.cell.worst_case_config` over the cells' keys.
    """
    if len(results) < 2:
        raise ValueError(f"combine needs at least two results, got {len(results)}")
    first = results[0]
    same = ("model", "weights_sha256", "dataset", "defense", "mode", "norm", "eps", "n", "data_sha256", "seed")
    for r in results[1:]:
        diff = [f for f in same if getattr(r, f) != getattr(first, f)]
        if diff:
            raise ValueError(f"cannot combine results that differ in {', '.join(diff)}")
    attacks = tuple(a for r in results for a in r.attacks)
    keys = tuple(sorted(r.key for r in results))
    return _result(
        top5_measured=all(r.robust_top5 is not None for r in results), key=digest(worst_case_config(keys)), combined_from=keys,
        model=first.model, arch=first.arch, recipe=first.recipe, dataset=first.dataset,
        defense=first.defense, mode=first.mode, attacks=attacks, checks=next((r.checks for r in results if r.checks), ()), norm=first.norm, eps=first.eps, clean_acc=first.clean_acc,
        clean_top5=first.clean_top5, seconds=sum(r.seconds for r in results), seed=first.seed,
        data_sha256=first.data_sha256, weights_sha256=first.weights_sha256, versions=first.versions,
        robust=np.logical_and.reduce([r.robust for r in results]),
        robust_top5_mask=np.logical_and.reduce([r.robust_top5_mask for r in results]),
    )
