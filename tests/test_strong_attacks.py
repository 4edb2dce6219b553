"""APGD, Square, transfer and the ``strong`` preset: AutoAttack's members (Croce & Hein 2020)
and the black-box attacks the gradient-masking checks compare white-box ones against."""
from __future__ import annotations

import pytest
import torch

from robustbench_lite.attacks.apgd import _dlr
from robustbench_lite.attacks.square import _square_fraction
from robustbench_lite import specs
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat
from robustbench_lite.train import TrainConfig, train

from .conftest import SEED, accuracy, evaluate


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


class _Blind(torch.nn.Module):
    """Rounds its input before the classifier: autograd sees a zero gradient everywhere."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 4) / 4)


def test_square_needs_no_gradient(trained, batch):
    # PGD is blind behind a rounding layer; a score-based search only reads outputs.
    x, y = batch
    blind, t, g = _Blind(trained.model).eval(), Threat("linf", 0.15), torch.Generator().manual_seed(0)
    clean = accuracy(blind, x, y)
    pgd = accuracy(blind, ATTACKS.create("pgd", steps=20)(blind, x, y, t, generator=g), y)
    square = accuracy(blind, ATTACKS.create("square", queries=500)(blind, x, y, t, generator=g), y)
    assert pgd > clean - 0.05, "rounding should mask PGD's gradient"
    assert square < pgd - 0.2, (clean, pgd, square)


def test_square_gets_stronger_with_queries(trained, batch):
    x, y = batch
    t = Threat("linf", 0.1)
    accs = [accuracy(trained.model, ATTACKS.create("square", queries=q)(trained.model, x, y, t, generator=torch.Generator().manual_seed(0)), y)
            for q in (20, 1000)]
    assert accs[1] < accs[0] - 0.1, accs


def test_square_schedule_halves_on_the_papers_checkpoints():
    assert _square_fraction(0.8, 5, 10000) == 0.8
    assert _square_fraction(0.8, 100, 10000) == 0.2
    assert _square_fraction(0.8, 50, 100) == 0.8 / 128  # rescaled: query 50 of 100 is query 5000 of 10000
    assert _square_fraction(0.8, 9999, 10000) == 0.8 / 512


def test_square_refuses_l2(trained, batch):
    x, y = batch
    with pytest.raises(ValueError, match="square: only the linf threat is implemented, got 'l2'"):
        ATTACKS.create("square")(trained.model, x[:2], y[:2], Threat("l2", 1.0))


@pytest.fixture(scope="module")
def surrogate(tmp_path_factory):
    """A second small CNN, trained on other data with another seed: a genuine surrogate."""
    out = tmp_path_factory.mktemp("surrogate")
    train(TrainConfig(arch="smallcnn", epochs=1, train_subset=5000, seed=SEED + 1), out=out)
    return str(out)


def test_transfer_hurts_but_less_than_white_box(trained, batch, surrogate):
    x, y = batch
    t, g = Threat("linf", 0.1), torch.Generator().manual_seed(0)
    clean = accuracy(trained.model, x, y)
    white = accuracy(trained.model, ATTACKS.create("pgd", steps=20)(trained.model, x, y, t, generator=g), y)
    moved = ATTACKS.create("transfer", surrogate=surrogate, attack="pgd:steps=20,early_stop=False")(trained.model, x, y, t, generator=g)
    transfer = accuracy(trained.model, moved, y)
    assert white < transfer < clean - 0.1, (clean, transfer, white)


def test_transfer_key_carries_the_surrogate_weights(surrogate):
    cfg = ATTACKS.create("transfer", surrogate=surrogate).config()
    assert len(cfg["surrogate_sha256"]) == 64


@pytest.mark.parametrize("kw,match", [
    (dict(surrogate=""), "transfer: surrogate must be a zoo model name or checkpoint path"),
    (dict(surrogate="x", attack="transfer:surrogate=y"), "cannot itself be a transfer attack"),
    (dict(surrogate="x", attack="nope"), "unknown attack 'nope'"),
])
def test_bad_transfer_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ATTACKS.create("transfer", **kw)


def test_transfer_from_an_untrained_zoo_name_says_how_to_train_it(trained, batch):
    x, y = batch
    with pytest.raises(FileNotFoundError, match="rbl train --arch resnet10t"):
        ATTACKS.create("transfer", surrogate="resnet10t-fmnist-trades")(trained.model, x[:2], y[:2], Threat("linf", 0.1))


def test_strong_preset_expands_to_the_autoattack_cascade():
    assert specs.expand(["fgsm", "strong"]) == ["fgsm", *specs.PRESETS["strong"]]
    assert specs.PRESETS["strong"][:2] == ("apgd_ce", "apgd_dlr:targets=3")  # APGD-CE, then APGD-T, then Square
    assert specs.attack(specs.PRESETS["strong"][2]).config()["attack"] == "square"


@pytest.mark.slow
def test_strong_preset_is_no_weaker_than_pgd_and_records_its_members(trained, fmnist_test):
    kw = dict(eps=[0.05], n=200)
    pgd = evaluate(trained, fmnist_test, ["pgd:steps=50"], **kw)[0]
    strong = evaluate(trained, fmnist_test, [specs.attack("apgd_ce:steps=50"), "apgd_dlr:targets=3,steps=50", "square:queries=500"], **kw)[0]
    preset = evaluate(trained, fmnist_test, ["strong"], **kw | {"n": 8})[0]  # the preset end to end, on a few points
    assert preset.attacks == specs.PRESETS["strong"]
    assert strong.robust_acc <= pgd.robust_acc, (strong.robust_acc, pgd.robust_acc)
