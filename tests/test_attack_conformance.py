"""Conformance suite, parametrized over every registered attack (scikit-learn's
parametrize_with_checks idea): a new attack gets these checks without writing a test."""
from __future__ import annotations

import pytest
import torch

from robustbench_lite.attack import Attack
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat

from .conftest import accuracy


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


@pytest.fixture(params=CASES, ids=[f"{n}-{t.norm}" for n, t in CASES])
def case(request, trained, batch):
    name, threat = request.param
    return _instance(name, trained.model, batch[0], request), threat


def test_keeps_shape_dtype_device_and_stays_in_threat(case, trained, batch):
    attack, threat = case
    x, y = batch
    x_adv = attack(trained.model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert threat.distance(x_adv, x).max().item() <= threat.eps * (1 + 1e-5) + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def test_leaves_inputs_model_and_mode_untouched(case, trained, batch):
    attack, threat = case
    x, y = batch
    x0, y0 = x.clone(), y.clone()
    state0 = {k: v.clone() for k, v in trained.model.state_dict().items()}
    trained.model.train()  # the attack must restore the caller's mode and not move BN statistics
    try:
        attack(trained.model, x, y, threat, generator=torch.Generator().manual_seed(0))
        assert trained.model.training
    finally:
        trained.model.eval()
    assert torch.equal(x, x0) and torch.equal(y, y0)
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, state0[k]), f"{k} changed"
    assert all(p.grad is None for p in trained.model.parameters())


def test_deterministic_under_a_seed(case, trained, batch):
    attack, threat = case
    x, y = batch
    a = attack(trained.model, x, y, threat, generator=torch.Generator().manual_seed(7))
    b = attack(trained.model, x, y, threat, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_strictly_lowers_accuracy_of_a_trained_model(case, trained, batch):
    attack, threat = case
    x, y = batch
    clean = accuracy(trained.model, x, y)
    adv = accuracy(trained.model, attack(trained.model, x, y, threat, generator=torch.Generator().manual_seed(0)), y)
    assert clean > 0.7, "the fixture model should be trained"
    assert adv < clean - 0.05, f"{attack} only took accuracy from {clean:.3f} to {adv:.3f}"


def test_eps_zero_returns_the_input(case, trained, batch):
    attack, threat = case
    x, y = batch
    zero = Threat(threat.norm, 0.0)
    assert torch.equal(attack(trained.model, x[:16], y[:16], zero), x[:16])


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
