"""The binarization test (Zimmermann et al. 2022): where its readout is kept, an adversarial example
provably exists inside the ball; an attack that finds none fails it, a working one passes, and a
masked model's attacks are caught until escalation finds what exists."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustbench_lite import specs
from robustbench_lite.attacks.base import Attack
from robustbench_lite.checks import CheckConfig
from robustbench_lite.checks import binarization as bz
from robustbench_lite.engine import evaluate
from robustbench_lite.engine.checking import binarization_test, on_surface
from robustbench_lite.engine.deploy import Setup
from robustbench_lite.engine.guard import Guard
from robustbench_lite.escalation import LADDER, EscalationConfig
from robustbench_lite.threat import Threat
from tests.test_escalation import _Saturated, _ZeroLayer

EPS = 0.1
FAST = CheckConfig(n=50, steps=10, queries=300)


def _verdict(result, name="binarization"):
    return next(v for v in result.checks if v.name == name)


def _setup(model: nn.Module) -> Setup:
    return Setup(model, Guard(model, None), (), None, "adaptive", 1, 1, 500)


def test_where_a_readout_is_kept_the_adversarial_example_exists_inside_the_ball(trained, fmnist_test):
    x = fmnist_test.floats()[:8]
    threat = Threat("linf", EPS)
    g = torch.Generator().manual_seed(0)
    model, head = bz.install(trained.model, x[:2], len(x))
    assert isinstance(head.original, nn.Linear)  # the small CNN's own head, replaced in place
    inner, boundary = bz.samples(x, threat, g)
    assert inner.shape[:2] == (8, bz.INNER + 1) and torch.equal(inner[:, 0], x)
    assert bool((threat.distance(boundary, x) <= EPS + 1e-6).all())
    assert bool(((inner - x.unsqueeze(1)).abs().amax((2, 3, 4)) <= bz.ETA * EPS + 1e-6).all())
    rows, margin = bz.features(model, head, torch.cat([inner.flatten(0, 1), boundary]))
    m = inner.shape[1]
    valid = bz.fit(head, rows[: 8 * m].view(8, m, -1), rows[8 * m:], margin[: 8 * m: m])
    assert int(valid.sum()) >= 4
    with torch.no_grad():
        assert bool((model(x).argmax(1)[valid] == 0).all())
        assert bool((model(boundary).argmax(1)[valid] == 1).all())
        assert bool((model(inner[valid].flatten(0, 1)).argmax(1) == 0).all())  # every inner point is class 0
    # The head is a binary one and the rest of the model is untouched.
    assert model(x).shape == (8, 2) and trained.model(x).shape == (8, 10)


class _Null(Attack):
    """Returns the images it was given: no attack at all."""

    batch_invariant = True

    def run(self, model, x, y, threat, generator):
        return x.clone()


def test_an_attack_that_finds_nothing_fails_and_one_that_works_passes(trained, fmnist_test):
    x, y = fmnist_test.floats()[:60], fmnist_test.labels[:60].clone()
    threat = Threat("linf", EPS)
    cfg = CheckConfig(n=50, binarization=10)
    setup = _setup(trained.model)
    null = binarization_test(setup, x, y, threat, cfg, 0, [("nothing", on_surface, [_Null()])])
    assert null.valid >= 5 and null.found_any == 0, null
    strong = binarization_test(setup, x, y, threat, cfg, 0, [("apgd", on_surface, [specs.attack("apgd_ce:steps=50"),
                                                                                 specs.attack("apgd_dlr:steps=50,targets=9")])])
    assert strong.valid == null.valid  # the same tests: their construction does not depend on the attack
    assert strong.found_any >= strong.valid - 1, strong


def test_a_zero_backward_layer_fails_the_test_and_escalation_answers_it(trained, fmnist_test):
    masked = _ZeroLayer(copy.deepcopy(trained.model))
    raw = evaluate(masked, fmnist_test, ["pgd:steps=10"], [EPS], n=100, checks=FAST, escalate=None)[0]
    v = _verdict(raw)
    assert v.passed is False and v.value >= 0.8, v  # gradient attacks see nothing through the layer
    assert "binarization" in LADDER
    done = evaluate(masked, fmnist_test, ["pgd:steps=10"], [EPS], n=100, checks=FAST,
                    escalate=EscalationConfig(steps=30, queries=1000, surrogates=(), eot=3))[0]
    after = next(v for v in done.rechecks if v.name == "binarization")
    assert after.passed is True, after
    assert "located_bpda" in after.explanation or "square" in after.explanation, after.explanation


def test_an_honest_model_passes_with_its_own_attacks(trained, fmnist_test):
    r = evaluate(trained, fmnist_test, ["pgd:steps=20"], [EPS], n=100, checks=FAST, escalate=None)[0]
    v = _verdict(r)
    assert v.passed is True and v.value <= 0.15, v


def test_a_saturated_softmax_keeps_its_saturation_on_the_binary_head(trained, fmnist_test):
    # The head's scores keep their size, so the softmax after them saturates the binary scores too.
    r = evaluate(_Saturated(copy.deepcopy(trained.model)), fmnist_test, ["pgd:steps=10"], [EPS], n=100, checks=FAST,
                 escalate=None)[0]
    assert _verdict(r).passed is False, _verdict(r)


def test_a_model_without_a_linear_head_is_read_out_on_its_output(trained, fmnist_test):
    x = fmnist_test.floats()[:4]
    m = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (1, 28, 28)), _NoLinear(trained.model))
    name, dim = bz.head_of(m, x)
    assert name is None and dim == 10
    model, head = bz.install(m, x[:2], 4)
    assert isinstance(model, bz.OnOutput) and head.original is None
    r = evaluate(m, fmnist_test, ["pgd:steps=20"], [EPS], n=100, checks=FAST, escalate=None)[0]
    assert _verdict(r).passed is not None, _verdict(r)


class _NoLinear(nn.Module):
    """The small CNN's scores through a functional linear map: no ``nn.Linear`` gives the output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model)
        last = self.model.net[-1]
        assert isinstance(last, nn.Linear)
        self.w, self.b = nn.Parameter(last.weight.detach().clone()), nn.Parameter(last.bias.detach().clone())
        self.model.net[-1] = nn.Identity()

    def forward(self, x):
        return nn.functional.linear(self.model(x), self.w, self.b)


def test_a_preprocessing_defense_is_covered_and_a_detector_is_not(trained, fmnist_test):
    r = evaluate(trained, fmnist_test, ["pgd:steps=20"], [EPS], n=100, checks=FAST, escalate=None,
                 defense=["bit_depth:bits=5"])[0]
    assert _verdict(r).passed is True, _verdict(r)  # BPDA through the rounding finds what exists
    d = evaluate(trained, fmnist_test, ["fgsm"], [EPS], n=100, checks=FAST, escalate=None, defense=["feature_squeeze"])[0]
    assert _verdict(d).passed is None and "detector" in _verdict(d).explanation


@pytest.mark.parametrize("kw, match", [
    (dict(binarization=-1), "binarization must be an integer >= 0"),
    (dict(attacks="pgd"), "attacks must be a non-empty tuple"),
    (dict(attacks=()), "attacks must be a non-empty tuple"),
])
def test_bad_binarization_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        CheckConfig(**kw)


def test_targeted_and_margin_attacks_run_on_two_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    for spec in ("apgd_dlr:steps=5", "apgd_dlr:steps=5,targets=9", "fab:steps=5,targets=9", "square:queries=20"):
        out = specs.attack(spec)(model, x, y, Threat("linf", 0.1))
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), spec
