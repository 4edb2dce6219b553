"""Adversarial-training recipes, each trained for seconds on 5k Fashion-MNIST images: every
one must end strictly more robust under PGD than the standard recipe on the same budget."""
from __future__ import annotations

import pytest

from robustbench_lite import zoo
from robustbench_lite.registry import RECIPES
from robustbench_lite import train as train_mod
from robustbench_lite.train import TrainConfig, train

from .conftest import SEED, evaluate

BUDGET = dict(arch="smallcnn", epochs=2, train_subset=5000, seed=SEED)


@pytest.fixture(scope="module")
def standard_models(tmp_path_factory):
    """Two separately trained standard models: the baseline, and the static sources of ensemble_at."""
    root = tmp_path_factory.mktemp("std")
    for i in (0, 1):
        train(TrainConfig(recipe="standard", **BUDGET | {"seed": SEED + i}), out=root / f"seed{i}")
    return [root / "seed0", root / "seed1"]


@pytest.fixture(scope="module")
def standard_pgd(standard_models, fmnist_test):
    return evaluate(zoo.load_checkpoint(standard_models[0]), fmnist_test, ["pgd:steps=20"], [0.1], n=300)[0].robust_acc


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES.names() if r != "standard"])
def test_recipe_beats_standard_under_pgd(recipe, standard_pgd, standard_models, fmnist_test, tmp_path):
    kw = (("sources", "+".join(map(str, standard_models))),) if recipe == "ensemble_at" else ()
    card = train(TrainConfig(recipe=recipe, recipe_kw=kw, **BUDGET), out=tmp_path / "m")
    assert card.recipe == recipe and card.hyperparameters["recipe"]["eps"] == 0.1
    lm = zoo.load_checkpoint(tmp_path / "m")
    fgsm, pgd = (evaluate(lm, fmnist_test, [a], [0.1], n=300)[0] for a in ("fgsm", "pgd:steps=20"))
    assert pgd.robust_acc > standard_pgd + 0.1, (recipe, pgd.robust_acc, standard_pgd)
    assert fgsm.robust_acc >= pgd.robust_acc
    assert pgd.clean_acc > 0.6


@pytest.mark.parametrize("spec,match", [
    (dict(recipe="pgd_at", recipe_kw=(("eps", 1.5),)), r"pgd_at: eps must be a number in \(0, 1\), got 1.5"),
    (dict(recipe="pgd_at", recipe_kw=(("ramp", 2),)), r"pgd_at: ramp must be a number in \[0, 1\], got 2"),
    (dict(recipe="trades", recipe_kw=(("beta", 0),)), "trades: beta must be a finite number > 0"),
    (dict(recipe="fgsm_at", recipe_kw=(("alpha", 0.3),)), "bad arguments {'alpha': 0.3} for recipe 'fgsm_at'"),
    (dict(recipe="fast_at", recipe_kw=(("alpha", -0.1),)), "fast_at: alpha must be a finite number > 0, got -0.1"),
    (dict(recipe="fast_at", recipe_kw=(("collapse_drop", 1.5),)), r"fast_at: collapse_drop must be a number in \[0, 1\]"),
    (dict(recipe="fast_at", recipe_kw=(("masking_gap", -1),)), r"fast_at: masking_gap must be a number in \[0, 1\]"),
    (dict(recipe="ensemble_at", recipe_kw=(("sources", ""),)), "ensemble_at: sources must name at least one static model"),
    (dict(recipe="ensemble_at", recipe_kw=(("attack", "pgdd"),)), "unknown attack 'pgdd'"),
])
def test_bad_recipe_arguments(spec, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(arch="smallcnn", **spec)


def test_pgd_at_ramps_eps_linearly():
    r = RECIPES.create("pgd_at", ramp=0.5)
    assert [r.current_eps(p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.0, 0.05, 0.1, 0.1])


def test_ensemble_at_names_a_missing_static_model(tmp_path):
    cfg = TrainConfig(recipe="ensemble_at", recipe_kw=(("sources", "resnet10t"),), **BUDGET)
    with pytest.raises(zoo.ModelNotTrainedError, match="'resnet10t-fmnist-standard' has no checkpoint.*rbl train --arch resnet10t"):
        train(cfg, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_fast_at_collapse_rules():
    r = RECIPES.create("fast_at")  # collapse_drop 0.2, masking_gap 0.3
    rows = [{"pgd_acc_train": a, "fgsm_acc_train": a + 0.1} for a in (0.3, 0.6, 0.55)]
    assert r.collapsed(rows) is None  # a wobble is not a collapse
    reason = r.collapsed(rows + [{"pgd_acc_train": 0.05, "fgsm_acc_train": 0.1}])
    assert reason and "fell to 0.050 from a best of 0.600" in reason
    reason = r.collapsed(rows + [{"pgd_acc_train": 0.5, "fgsm_acc_train": 0.85}])
    assert reason and "exceeds PGD-10 accuracy (0.500) by 0.350" in reason
    off = RECIPES.create("fast_at", collapse_drop=1.0, masking_gap=1.0)
    assert off.collapsed(rows + [{"pgd_acc_train": 0.0, "fgsm_acc_train": 0.9}]) is None


@pytest.mark.slow
def test_fast_at_stops_a_run_configured_to_overfit(tmp_path):
    """FGSM training without a random start at eps 0.3 learns to beat FGSM, not PGD (Wong 2020)."""
    overfit = (("alpha", 0.6), ("eps", 0.3), ("random_start", False))
    card = train(TrainConfig(recipe="fast_at", recipe_kw=overfit, **BUDGET | {"epochs": 6, "monitor_n": 300}), out=tmp_path / "bad")
    assert len(card.curves) < 6 and len(card.notes) == 1 and "catastrophic overfitting" in card.notes[0]
    last = card.curves[-1]
    assert last["fgsm_acc_train"] - last["pgd_acc_train"] > 0.3
    best = max(card.curves, key=lambda row: row["pgd_acc_train"])
    assert f"kept the weights of epoch {best['epoch']}" in card.notes[0]
    kept = zoo.load_checkpoint(tmp_path / "bad").model
    assert train_mod._Monitor(*_monitor_sets(300), 0.3, SEED)(kept)["pgd_acc_train"] == best["pgd_acc_train"]
    healthy = train(TrainConfig(recipe="fast_at", **BUDGET | {"epochs": 6, "monitor_n": 300}), out=tmp_path / "ok")
    assert len(healthy.curves) == 6 and healthy.notes == []


def _monitor_sets(n):
    from robustbench_lite import data

    return data.load("fmnist", "train").first(n), data.load("fmnist", "test").first(n)
