"""Escalation: the engine climbs the ladder of attacks that answer a failed check
(``escalation.py`` holds the ladder as data) and checks the result again."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from .. import fingerprint, specs
from .. import escalation as ladder_mod
from ..attacks.base import Attack, live
from ..cell import CellConfig, digest
from ..checks import CheckConfig, Verdict
from ..checks.suite import loss_grad
from ..data import Split
from ..defenses.base import Defense
from ..escalation import EscalationConfig
from ..registry import ATTACKS
from ..threat import Threat
from ..zoo import LoadedModel

from .checking import Source, masking_checks, tested_attacks, user_source
from .deploy import Setup, deploy, held
from .guard import attacked
from .plan import Plan, cell_seed, engine_code, make_plan, method_identity
from .results import EvalResult, make_result

_log = logging.getLogger(__name__)


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


class Ladder:
    """Climbs the escalation ladder for the cells of one evaluation (see escalation.py)."""

    def __init__(self, plan: Plan, setup: Setup, x: torch.Tensor, y: torch.Tensor, checks: CheckConfig,
                 config: EscalationConfig, tolerance: float, store: Any | None, progress: bool = False,
                 attacks: Sequence[Attack] = ()):
        self.plan, self.setup, self.guard, self.x, self.y = plan, setup, setup.guard, x, y
        self.attacks = tested_attacks(checks, attacks)  # what the binarization test runs besides the steps
        self.checks, self.config, self.batch_size, self.tolerance, self.store = checks, config, plan.batch_size, tolerance, store
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
        deployed, surface, judge = self.setup.views(cell_seed(self.draws, "escalation", "defense"))
        rejects = self.setup.detector is not None
        robust = torch.from_numpy(result.robust.copy()).to(self.x.device)
        n = len(robust)
        # Where the gradient dies is looked for on clean-correct points (a wrong one has no loss to climb).
        look = robust.nonzero().squeeze(1)[:16]
        look = look if look.numel() >= 4 else torch.arange(min(n, 16), device=robust.device)
        bpda, bare = self.setup.ladder_views(cell_seed(self.draws, "escalation", "defense"))
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
                    for chunk, _, logits in attacked(spec, attack, view, judge, self.x, self.y, todo, threat,
                                                      self.batch_size, (self.draws, "escalation", st.name, round_, i),
                                                      self.guard, self.tolerance):
                        robust[chunk] &= held(logits, self.y[chunk], rejects)
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
        out = make_result(top5_measured=False, key=key, model=result.model, arch=result.arch, recipe=result.recipe,
                      dataset=result.dataset, defense=result.defense, mode=result.mode, attacks=tuple(names),
                      norm=result.norm, eps=result.eps, clean_acc=result.clean_acc, clean_top5=result.clean_top5,
                      seconds=result.seconds + time.perf_counter() - start, seed=result.seed,
                      data_sha256=result.data_sha256, weights_sha256=result.weights_sha256, versions=result.versions,
                      caught=result.caught, clean_rejected=result.clean_rejected, detection_auc=result.detection_auc,
                      combined_from=(result.key,) + tuple(result.combined_from), checks=result.checks,
                      escalated_from=result.key, escalation=tuple(record), rechecks=rechecks,
                      robust=robust.cpu().numpy().copy(), robust_top5_mask=robust.cpu().numpy().copy())
        if self.store is not None:
            self.store.put(out, config, provenance=self.plan.provenance())
        return out

    def _reference(self, robust: torch.Tensor, threat: Threat) -> Any:
        """Robust under the escalated evaluation, on the checks' points: the cell's own bits at its
        threat, and the steps that ran, re-run on those points, at any other."""
        n = min(self.checks.n, len(self.x))
        judge = self.setup.views(cell_seed(self.draws, "escalation", "recheck"))[2]
        rejects = self.setup.detector is not None

        def reference(t: Threat) -> torch.Tensor:
            if t.norm == threat.norm and abs(t.eps - threat.eps) < 1e-12:
                return robust[:n].clone()
            if t.norm == threat.norm and t.eps < threat.eps:
                # Where the checks read a smaller eps (the monotonicity sweep), a weaker attack there can
                # only raise that accuracy, never make accuracy rise with eps: the steps are not re-run.
                return torch.ones(n, dtype=torch.bool, device=robust.device)
            x, y = self.x[:n], self.y[:n]
            bits = held(judge(x.clone()), y, rejects)
            for k, (_, view, attacks) in enumerate(self.used):
                for i, attack in enumerate(attacks):
                    todo = bits.nonzero().squeeze(1)
                    for chunk, _, logits in attacked("escalation", attack, view, judge, x, y, todo, t, self.batch_size,
                                                      (self.draws, "recheck", t.eps, k, i), self.guard, self.tolerance):
                        bits[chunk] &= held(logits, y[chunk], rejects)
            return bits
        return reference

    def _recheck(self, result: EvalResult, robust: torch.Tensor, threat: Threat, failed: set[str],
                 record: list[dict[str, Any]]) -> tuple[Verdict, ...]:
        after = masking_checks(self.setup, self.x, self.y, threat, {result.eps: int(robust.sum()) / len(robust)}, self.checks,
                       cell_seed(self.draws, "recheck", result.eps), reference=self._reference(robust, threat),
                       sources=user_source(self.attacks) + self._sources(), tolerance=self.tolerance)
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

    def _sources(self) -> list[Source]:
        """The escalation steps that ran, as sources of the binarization test: each step's attacks on
        its view of the binarized model (transfer does not apply: its surrogates keep their own heads)."""
        out: list[Source] = []
        for st, _, attacks in self.used:
            def make(bsetup: Setup, surface: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     st: ladder_mod.Step = st) -> tuple[nn.Module | None, str]:
                if st.view == "transfer":
                    return None, "its surrogates are not binarized"
                bpda, bare = bsetup.ladder_views(cell_seed(self.draws, "binarization", "defense"))
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
    plan = make_plan(model, data, ["fgsm"], [result.eps], norm=result.norm, n=result.n, seed=result.seed, batch_size=batch_size,
                 defense=defense, mode=mode, eot=eot, votes=votes, calibration=calibration, device=device)
    if (plan.lm.weights_sha256, plan.subset.sha256()) != (result.weights_sha256, result.data_sha256):
        raise ValueError(f"escalate: the cell {result.key[:16]}... was computed on other weights or data than given")
    setup = deploy(plan)
    try:  # the binarization test re-runs the cell's attacks where they are specs (a profile's are)
        attacks = [specs.attack(a) for a in result.attacks]
    except (ValueError, TypeError, KeyError):
        attacks = []
    ladder = Ladder(plan, setup, *plan.inputs(), checks, config, tolerance, store, attacks=attacks)
    return ladder.climb(result)
