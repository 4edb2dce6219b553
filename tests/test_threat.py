import math

import pytest
import torch

from robustbench_lite.threat import Threat


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_project_lands_in_ball_and_box(norm, eps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g)
    far = x + 3 * torch.randn(x.shape, generator=g)
    t = Threat(norm, eps)
    p = t.project(far, x)
    assert t.distance(p, x).max() <= eps * (1 + 1e-6)
    assert p.min() >= 0 and p.max() <= 1
    inside = t.project(x + 0.001, x)  # a point already inside only gets clipped to the box
    assert torch.allclose(inside, (x + 0.001).clamp(0, 1))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_random_start_is_in_ball_and_fills_it(norm, eps):
    x = torch.full((64, 1, 8, 8), 0.5)
    t = Threat(norm, eps)
    s = t.random_start(x, torch.Generator().manual_seed(0))
    d = t.distance(s, x)
    assert d.max() <= eps * (1 + 1e-6)
    assert d.mean() > 0.5 * eps  # uniform in the ball: most mass is near the boundary in high dimension


def test_linf_distance_and_unbounded_eps():
    x = torch.zeros(2, 1, 2, 2)
    y = x.clone()
    y[1, 0, 0, 0] = 0.3
    assert Threat("linf", 0.1).distance(y, x).tolist() == pytest.approx([0.0, 0.3])
    assert torch.equal(Threat("l2", math.inf).project(y, x), y)


@pytest.mark.parametrize("kw,match", [
    (dict(norm="l1", eps=0.1), "unknown norm 'l1'; allowed: linf, l2"),
    (dict(norm="linf", eps=-0.1), "eps must be a number >= 0, got -0.1"),
    (dict(norm="linf", eps=float("nan")), "eps must be a number >= 0, got nan"),
    (dict(norm="linf", eps=0.1, bounds=(1.0, 0.0)), "bounds must satisfy low < high"),
])
def test_bad_threats_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        Threat(**kw)
