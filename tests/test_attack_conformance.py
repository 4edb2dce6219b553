"""Conformance suite, parametrized over every registered attack (scikit-learn's
parametrize_with_checks idea): a new attack gets these checks without writing a test."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from robustbench_lite import conformance
from robustbench_lite.attacks.base import Attack
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat

from .conftest import accuracy, on


def _instance(name: str, model: torch.nn.Module | None = None, x: torch.Tensor | None = None,
              request: pytest.FixtureRequest | None = None) -> Attack:
    # An attack that needs something made first (a stored perturbation) registers a
    # ``conformance`` factory that makes it from the fixture model and batch; one that needs
    # a trained generative model names the fixture that makes it (``conformance_needs``).
    entry = ATTACKS.get(name)
    if "conformance_needs" in entry.meta and request is not None:
        request.getfixturevalue(entry.meta["conformance_needs"])
    if "conformance" in entry.meta:
        return entry.meta["conformance"](model, x)
    return entry.obj(**entry.meta.get("example", {}))


def _l2_capable(name: str) -> bool:
    # fb's example is LinfPGD; the others declare the norms their example handles.
    return name != "fb" and "l2" in ATTACKS.get(name).meta.get("norms", ("linf", "l2"))


THREATS = [Threat("linf", 0.1), Threat("l2", 1.5)]
CASES = [(n, t) for n in ATTACKS.names() for t in THREATS if t.norm == "linf" or _l2_capable(n)]


@dataclasses.dataclass(frozen=True)
class Case:
    """One attack under one threat, with the fixture model and batch on one device."""

    attack: Attack
    threat: Threat
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor


@pytest.fixture(params=CASES, ids=[f"{n}-{t.norm}" for n, t in CASES])
def case(request, trained, batch, device):
    name, threat = request.param
    model, x, y = on(device, trained.model, *batch)
    return Case(_instance(name, trained.model, batch[0], request), threat, model, x, y)


# The checks live in robustbench_lite.conformance, which `rbl conformance --plugin FILE` runs too.
def _check(fn, case: Case) -> None:
    problem = fn(case.attack, case.model, case.x, case.y, case.threat)
    assert problem is None, f"{case.attack} on {case.x.device}: {problem}"


def test_keeps_shape_dtype_device_and_stays_in_threat(case):
    _check(conformance.attack_threat, case)


def test_leaves_inputs_model_and_mode_untouched(case):
    _check(conformance.attack_side_effects, case)


def test_deterministic_under_a_seed(case):
    _check(conformance.attack_determinism, case)


def test_strictly_lowers_accuracy_of_a_trained_model(case):
    assert accuracy(case.model, case.x, case.y) > 0.7, "the fixture model should be trained"
    _check(conformance.attack_effect, case)


def test_the_effect_check_fails_a_no_op_and_random_noise(trained, batch):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Noise(Attack):
        def run(self, model, x, y, threat, generator):
            return threat.project(x + 0.02 * torch.randn(x.shape, generator=generator), x)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NoOp(Attack):
        def run(self, model, x, y, threat, generator):
            return x.clone()

    for attack in (Noise(), NoOp()):
        problem = conformance.attack_effect(attack, trained.model, batch[0], batch[1], Threat("linf", 0.1))
        assert problem is not None and "sign test" in problem, problem
    assert conformance.sign_test(10, 0) == pytest.approx(2 ** -10) and conformance.sign_test(0, 0) == 1.0


def test_eps_zero_returns_the_input(case):
    _check(conformance.attack_eps_zero, case)


def test_a_batch_invariant_attack_is_one(case):
    if not case.attack.batch_invariant:
        pytest.skip(f"{type(case.attack).__name__} does not declare batch_invariant: its cells are keyed by the batch size")
    _check(conformance.attack_batches, case)


def test_the_batch_check_catches_an_attack_that_couples_its_points(trained, batch):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Coupled(Attack):
        batch_invariant = True  # a false declaration: the step depends on the batch's mean gradient

        def run(self, model, x, y, threat, generator):
            return threat.project(x + threat.eps * (x - x.mean(0, keepdim=True)).sign(), x)

    problem = conformance.attack_batches(Coupled(), trained.model, batch[0], batch[1], Threat("linf", 0.1))
    assert problem is not None and "declares batch_invariant but" in problem


@pytest.mark.parametrize("name", ATTACKS.names())
def test_rejects_bad_inputs(name, trained, batch, request):
    attack = _instance(name, trained.model, batch[0], request)
    x, y = batch
    t = Threat("linf", 0.1)
    bad = x[:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attack(trained.model, bad, y[:4], t)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        attack(trained.model, x[0], y[:1], t)
    with pytest.raises(ValueError, match="input bounds"):
        attack(trained.model, x[:4] * 2 - 0.5, y[:4], t)
    with pytest.raises(ValueError, match="int64"):
        attack(trained.model, x[:4], y[:4].float(), t)
