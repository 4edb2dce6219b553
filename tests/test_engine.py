from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from robustbench_lite.attacks import FGSM, PGD
from robustbench_lite.attacks.base import Attack
from robustbench_lite.errors import AttackBudgetError
from robustbench_lite.engine import combine
from robustbench_lite.registry import ATTACKS
from robustbench_lite.stats import wilson
from robustbench_lite.store import Store

from .conftest import evaluate


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Cheater(Attack):
    """Returns points outside the budget: the engine must refuse them."""

    factor: float = 2.0

    def run(self, model, x, y, threat, generator):
        return (x + self.factor * threat.eps).clamp(0, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Counting(Attack):
    calls: list = dataclasses.field(default_factory=list, compare=False)

    def run(self, model, x, y, threat, generator):
        self.calls.append(x.shape[0])
        return x.clone()


@pytest.fixture(autouse=True)
def _register_test_attacks():
    ATTACKS.register("test_cheater")(_Cheater)
    ATTACKS.register("test_counting")(_Counting)
    yield
    ATTACKS.unregister("test_cheater")
    ATTACKS.unregister("test_counting")


def test_eps_zero_equals_clean_and_accuracy_falls_with_eps(trained, fmnist_test):
    res = evaluate(trained, fmnist_test, ["pgd:steps=10"], [0.0, 0.02, 0.05, 0.1], n=300)
    assert res[0].robust_acc == res[0].clean_acc
    accs = [r.robust_acc for r in res]
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert accs[-1] < accs[0] - 0.3


def test_worst_case_is_per_example_and_below_each_attack(trained, fmnist_test):
    kw = dict(n=300, eps=[0.03])
    singles = [evaluate(trained, fmnist_test, [a], **kw)[0] for a in ("fgsm", "bim", "illc")]
    cascade = evaluate(trained, fmnist_test, ["fgsm", "bim", "illc"], **kw)[0]
    worst = combine(singles)
    assert np.array_equal(worst.robust, np.logical_and.reduce([s.robust for s in singles]))
    assert worst.robust_acc <= min(s.robust_acc for s in singles)
    assert cascade.robust_acc <= min(s.robust_acc for s in singles)
    assert abs(cascade.robust_acc - worst.robust_acc) <= 0.01


def test_combine_is_the_per_example_worst_case_not_the_min_of_means(trained, fmnist_test):
    a, b = (evaluate(trained, fmnist_test, ["fgsm"], [0.0], n=8, seed=s)[0] for s in (0, 1))
    a = dataclasses.replace(a, robust=np.array([1, 1, 1, 1, 0, 0, 1, 1], bool))
    b = dataclasses.replace(b, seed=0, robust=np.array([0, 0, 1, 1, 1, 1, 1, 1], bool))
    worst = combine([a, b])
    assert worst.robust.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert worst.robust_acc == 0.5  # while each attack alone leaves 0.75
    with pytest.raises(ValueError, match="differ in eps"):
        combine([a, dataclasses.replace(b, eps=0.2)])


def test_engine_refuses_an_attack_outside_its_budget(trained, fmnist_test):
    with pytest.raises(AttackBudgetError, match="left its budget: linf distance 0.2 > eps 0.1"):
        evaluate(trained, fmnist_test, [_Cheater()], [0.1], n=20)


def test_early_stop_skips_points_already_fooled(trained, fmnist_test):
    counting = _Counting()
    res = evaluate(trained, fmnist_test, ["fgsm", counting], [0.1], n=200)[0]
    # the second attack only sees points that FGSM left top-5 correct, never all 200
    assert 0 < sum(counting.calls) < 200
    assert res.n == 200


def test_results_are_deterministic_and_cached(trained, fmnist_test, tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        a = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=100, store=store)[0]
        b = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=100, store=store)[0]
        assert b.key == a.key and b.seconds == a.seconds and len(store) == 1
        assert np.array_equal(a.robust, b.robust)
    c = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=100)[0]
    assert np.array_equal(a.robust, c.robust) and c.robust_acc == a.robust_acc


def test_key_changes_with_every_config_field(trained, fmnist_test):
    base = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=50)[0].key
    others = [
        evaluate(trained, fmnist_test, ["pgd:steps=6"], [0.05], n=50)[0].key,
        evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.06], n=50)[0].key,
        evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=51)[0].key,
        evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=50, seed=1)[0].key,
        evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=50, norm="l2")[0].key,
    ]
    assert len({base, *others}) == 6


def test_wilson_interval_known_values():
    lo, hi = wilson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.0370, abs=1e-4)
    lo, hi = wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    with pytest.raises(ValueError, match="successes must be in"):
        wilson(5, 4)


@pytest.mark.parametrize("kw,match", [
    (dict(eps=[-0.1]), "eps must be a number >= 0, got -0.1"),
    (dict(eps=[0.1], n=0), "n must be a positive integer, got 0"),
    (dict(eps=[0.1], n=10**6), "exceeds the 10000 points"),
    (dict(eps=[0.1], norm="l3"), "unknown norm 'l3'"),
    (dict(eps=[]), "eps must hold at least one value"),
])
def test_bad_arguments_raise(trained, fmnist_test, kw, match):
    with pytest.raises(ValueError, match=match):
        evaluate(trained, fmnist_test, ["fgsm"], **kw)


def test_unknown_attack_suggests_close_names(trained, fmnist_test):
    with pytest.raises(ValueError, match="unknown attack 'pgdd'; did you mean 'pgd'"):
        evaluate(trained, fmnist_test, ["pgdd"], [0.1], n=10)
    with pytest.raises(ValueError, match=r"bad arguments \{'stpes': 3\} for attack 'pgd'.*allowed: steps"):
        evaluate(trained, fmnist_test, ["pgd:stpes=3"], [0.1], n=10)
    with pytest.raises(ValueError, match="pgd: steps must be an integer >= 1, got 0"):
        evaluate(trained, fmnist_test, ["pgd:steps=0"], [0.1], n=10)


def test_plain_module_is_accepted_and_identified_by_its_weights(trained, fmnist_test):
    r = evaluate(trained.model, fmnist_test, [FGSM()], [0.1], n=50)[0]
    assert r.model == "Normalized" and len(r.weights_sha256) == 64
    assert r.robust_acc < r.clean_acc


def test_iterative_is_at_least_as_strong_as_single_step_per_example(trained, fmnist_test):
    fgsm = evaluate(trained, fmnist_test, [FGSM()], [0.05], n=300)[0]
    pgd = evaluate(trained, fmnist_test, [PGD(steps=20)], [0.05], n=300)[0]
    # nearly every point FGSM fools, PGD fools too (Carlini et al. 2019, check 4); a random
    # start can miss a few corners FGSM hits, which is why the engine takes the worst case
    assert (fgsm.robust & ~pgd.robust).sum() <= 0.03 * 300
    assert pgd.robust_acc < fgsm.robust_acc


def test_unbounded_budget_drives_accuracy_to_zero(trained, fmnist_test):
    r = evaluate(trained, fmnist_test, ["pgd:steps=20,step_size=0.1"], [1.0], n=100)[0]
    assert r.robust_acc == 0.0


def test_top5_is_reported_only_when_attacks_run_to_completion(trained, fmnist_test):
    stopped = evaluate(trained, fmnist_test, ["pgd:steps=10"], [0.1], n=200)[0]
    full = evaluate(trained, fmnist_test, ["pgd:steps=10,early_stop=False"], [0.1], n=200)[0]
    assert stopped.robust_top5 is None
    assert full.robust_top5 is not None and full.robust_top5 < full.clean_top5
    assert full.robust_acc <= full.robust_top5
    assert combine([stopped, full]).robust_top5 is None
