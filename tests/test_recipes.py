"""Adversarial-training recipes, each trained for seconds on 5k Fashion-MNIST images: every
one must end strictly more robust under PGD than the standard recipe on the same budget."""
from __future__ import annotations

import pytest

from robustbench_lite import zoo
from robustbench_lite.engine import evaluate
from robustbench_lite.registry import RECIPES
from robustbench_lite.train import TrainConfig, train

BUDGET = dict(arch="smallcnn", epochs=2, train_subset=5000, seed=0)


@pytest.fixture(scope="module")
def standard_pgd(fmnist_test, tmp_path_factory):
    d = tmp_path_factory.mktemp("std") / "m"
    train(TrainConfig(recipe="standard", **BUDGET), out=d)
    return evaluate(zoo.load_checkpoint(d), fmnist_test, ["pgd:steps=20"], [0.1], n=300)[0].robust_acc


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES.names() if r != "standard"])
def test_recipe_beats_standard_under_pgd(recipe, standard_pgd, fmnist_test, tmp_path):
    card = train(TrainConfig(recipe=recipe, **BUDGET), out=tmp_path / "m")
    assert card.recipe == recipe and card.hyperparameters["recipe"]["eps"] == 0.1
    lm = zoo.load_checkpoint(tmp_path / "m")
    fgsm, pgd = (evaluate(lm, fmnist_test, [a], [0.1], n=300)[0] for a in ("fgsm", "pgd:steps=20"))
    assert pgd.robust_acc > standard_pgd + 0.1, (recipe, pgd.robust_acc, standard_pgd)
    assert fgsm.robust_acc >= pgd.robust_acc
    assert pgd.clean_acc > 0.6


@pytest.mark.parametrize("spec,match", [
    (dict(recipe="pgd_at", recipe_kw=(("eps", 1.5),)), r"pgd_at: eps must be a number in \(0, 1\), got 1.5"),
    (dict(recipe="pgd_at", recipe_kw=(("ramp", 2),)), r"pgd_at: ramp must be in \[0, 1\]"),
    (dict(recipe="trades", recipe_kw=(("beta", 0),)), "trades: beta must be a finite number > 0"),
    (dict(recipe="fgsm_at", recipe_kw=(("alpha", 0.3),)), "bad arguments {'alpha': 0.3} for recipe 'fgsm_at'"),
])
def test_bad_recipe_arguments(spec, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(arch="smallcnn", **spec)


def test_pgd_at_ramps_eps_linearly():
    r = RECIPES.create("pgd_at", ramp=0.5)
    assert [r.current_eps(p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
