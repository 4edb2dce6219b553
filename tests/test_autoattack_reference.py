"""Known-answer tests against the authors' AutoAttack code (``pyautoattack``, the ``reference``
extra): each member of ``aa_standard`` on the trained fixture, same points, same eps, same settings,
within 1 point of the reference's robust accuracy.

The settings are cut from the standard version's (fewer steps, targets and queries) to keep the
suite fast; both sides run the same ones. At eps 0.03 the fixture keeps about half its points, so
a weaker or broken member shows as a gap of many points, far beyond the 1-point margin (5 of the
500 points), which two independent random streams do not reach.
"""
from __future__ import annotations

import pytest

from .conftest import evaluate

pytest.importorskip("pyautoattack", reason="the reference extra: pip install -e '.[reference]'")

from robustbench_lite.reference import cases, robust_under  # noqa: E402

N, EPS, MARGIN = 500, 0.03, 0.01
CASES = cases(EPS)


@pytest.fixture(scope="module")
def points(trained, fmnist_test):
    """A copy of the fixture for the reference, whose attacks call backward() on the model and leave
    .grad on its parameters (the session's fixture must stay as every other test finds it)."""
    import copy

    sub = fmnist_test.first(N)
    return copy.deepcopy(trained.model).eval(), sub.floats(), sub.labels.clone()


@pytest.mark.slow
@pytest.mark.parametrize("member", list(CASES))
def test_each_member_is_within_one_point_of_the_reference(member, trained, fmnist_test, points):
    spec, build = CASES[member]
    model, x, y = points
    ours = evaluate(trained, fmnist_test, [spec], [EPS], n=N)[0].robust_acc
    ref = float(robust_under(build(model), model, x, y, EPS).float().mean())
    assert 0.2 < ref < 0.9, ref  # an eps where the attack has work to do, or the comparison says nothing
    assert abs(ours - ref) <= MARGIN + 1e-9, (member, ours, ref)


def test_aa_standard_is_the_reference_protocol():
    from robustbench_lite import specs

    members = [specs.attack(a).config() for a in specs.expand(["aa_standard"])]
    assert [(m["attack"], m.get("targets", 0)) for m in members] == [("apgd_ce", 0), ("apgd_dlr", 9), ("fab", 9), ("square", 0)]
    assert all(m.get("steps", 100) == 100 and m.get("restarts", 1) == 1 for m in members)
    square = members[-1]
    assert square["queries"] == 5000 and square["p_init"] == 0.8 and square["rescale"] is False
