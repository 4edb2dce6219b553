"""The evaluation loop: :func:`evaluate`."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks.base import Attack
from ..checks import CheckConfig
from ..data import Split
from ..defenses.base import Defense
from ..escalation import EscalationConfig
from ..inference import predict
from ..zoo import LoadedModel

from .checking import checked
from .deploy import deploy, detection_rates, held
from .guard import attacked
from .ladder import Ladder
from .plan import cell_seed, make_plan
from .results import EvalResult, make_result

_log = logging.getLogger(__name__)


@torch.no_grad()
def in_top5(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k = min(5, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1)


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
    plan = make_plan(model, data, attacks, eps, norm=norm, n=n, seed=seed, batch_size=batch_size, defense=defense,
                 mode=mode, eot=eot, votes=votes, calibration=calibration, device=device)
    lm, subset, pre, detector = plan.lm, plan.subset, plan.pre, plan.detector
    attack_names, attack_objs, defenses = plan.attack_names, plan.attack_objs, pre + ((detector,) if detector else ())
    if store is not None:
        store.put_model(plan.model, lm.card, source=lm.source)
    setup = deploy(plan)
    guard, fitted = setup.guard, setup.detector
    # The engine's own copies of the images and labels: attacks, defenses and detectors only ever
    # see copies, and every budget check and every verdict is made against these.
    x, y = plan.inputs()
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
        deployed, surface, judge = setup.views(cell_seed(draws, "defense"))
        clean_logits = judge(x.clone()) if plain_logits is None else plain_logits
        robust = clean_logits.argmax(1) == y  # a rejected clean input is an error
        clean_correct = robust.clone()
        top5 = in_top5(clean_logits[:, :-1] if rejects else clean_logits, y)
        clean_top5 = top5.clone()
        x_final = x.clone()
        for i, (name, attack) in enumerate(zip(attack_names, attack_objs, strict=True)):
            # Early-stopped attacks only decide top-1, so only still-robust points are worth
            # attacking; full-length ones also get the top-1-fooled points still in the top 5.
            todo = (top5 if top5_measured else robust).nonzero().squeeze(1)
            for chunk, x_adv, logits in attacked(name, attack, surface, judge, x, y, todo, threat, batch_size,
                                                  (draws, "attack", i), guard, tolerance):
                x_final[chunk] = x_adv
                robust[chunk] &= held(logits, y[chunk], rejects)
                top5[chunk] &= in_top5(logits, y[chunk])
            bar.update(1)
        detection = detection_rates(deployed, judge, x, y, x_final, clean_correct, clean_logits) if rejects else {}
        arch, recipe = (lm.card.arch, lm.card.recipe) if lm.card else (plan.model.arch, "")
        result = make_result(
            top5_measured=top5_measured,
            key=key, model=lm.name, arch=arch, recipe=recipe, dataset=data.dataset, defense=defense_name,
            mode=config.mode, attacks=attack_names, norm=norm, eps=threat.eps, clean_acc=int(clean_correct.sum()) / len(subset),
            clean_top5=int(clean_top5.sum()) / len(subset), seconds=time.perf_counter() - start, seed=seed,
            data_sha256=config.data_sha256, weights_sha256=lm.weights_sha256, versions=config.versions,
            robust=robust.cpu().numpy().copy(), robust_top5_mask=top5.cpu().numpy().copy(), **detection,
        )
        if store is not None:
            store.put(result, config, provenance=plan.provenance())
        results.append(result)
    bar.close()
    guard.check("the evaluation")
    if checks is not None:
        verdicts = checked(plan, setup, x, y, results, checks, store)
        results = [dataclasses.replace(r, checks=verdicts) for r in results]
        if escalate is not None and plan.configs[0].mode != "oblivious" and any(v.passed is False for v in verdicts):
            ladder = Ladder(plan, setup, x, y, checks, escalate, tolerance, store, progress, attacks=plan.attack_objs)
            results = [ladder.climb(r) if r.eps > 0 else r for r in results]
    return results
