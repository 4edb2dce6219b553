"""APGD (Croce & Hein 2020): the DLR loss's invariances and strength against PGD."""
from __future__ import annotations

import pytest
import torch

from attacks.apgd import _dlr
from robustbench_lite.engine import evaluate
from robustbench_lite.registry import ATTACKS


def test_dlr_ignores_shift_and_scale_of_the_logits():
    g = torch.Generator().manual_seed(0)
    z, y, t = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g), torch.randint(0, 10, (64,), generator=g)
    for target in (None, t):
        assert torch.allclose(_dlr(7.0 * z + 3.0, y, target), _dlr(z, y, target), atol=1e-5)
    ce = torch.nn.functional.cross_entropy
    assert not torch.allclose(ce(7.0 * z, y), ce(z, y))  # what DLR fixes: cross-entropy moves with the scale


@pytest.mark.slow
def test_apgd_is_at_least_as_strong_as_pgd(trained, fmnist_test):
    kw = dict(eps=[0.05], n=300)
    pgd_cell = evaluate(trained, fmnist_test, ["pgd:steps=100"], **kw)[0]
    pgd = pgd_cell.robust_acc
    ce = evaluate(trained, fmnist_test, ["apgd_ce"], **kw)[0].robust_acc
    dlr_t = evaluate(trained, fmnist_test, ["apgd_dlr:targets=3"], **kw)[0].robust_acc
    assert 0.05 < pgd < pgd_cell.clean_acc - 0.1  # a budget where the comparison means something
    assert ce <= pgd + 0.01 and dlr_t <= pgd + 0.01, (pgd, ce, dlr_t)


@pytest.mark.parametrize("spec,match", [
    (dict(targets=10), r"apgd_ce: targets must be an integer in \[0, 9\], got 10"),
    (dict(steps=0), "apgd_ce: steps must be an integer >= 1, got 0"),
    (dict(rho=1.5), r"apgd_ce: rho must be a number in \(0, 1\], got 1.5"),
])
def test_bad_apgd_arguments(spec, match):
    with pytest.raises(ValueError, match=match):
        ATTACKS.create("apgd_ce", **spec)
