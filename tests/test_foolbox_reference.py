"""Known-answer tests against foolbox, an independent implementation."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import evaluate


def test_fgsm_matches_foolbox_example_by_example(trained, fmnist_test):
    ours = evaluate(trained, fmnist_test, ["fgsm"], [0.02, 0.1], n=500)
    ref = evaluate(trained, fmnist_test, ["fb:LinfFastGradientAttack"], [0.02, 0.1], n=500)
    for a, b in zip(ours, ref):
        assert a.robust_acc == b.robust_acc
        assert np.array_equal(a.robust, b.robust)


@pytest.mark.slow
def test_pgd_fixed_step_matches_foolbox_linfpgd(trained, fmnist_test):
    ours = evaluate(trained, fmnist_test, ["pgd:steps=20,step_size=0.01,random_start=False"], [0.02, 0.05], n=500)
    ref = evaluate(trained, fmnist_test, ["fb:LinfPGD:steps=20,abs_stepsize=0.01,random_start=False"], [0.02, 0.05], n=500)
    for a, b in zip(ours, ref):
        assert abs(a.robust_acc - b.robust_acc) <= 0.01, (a.eps, a.robust_acc, b.robust_acc)
