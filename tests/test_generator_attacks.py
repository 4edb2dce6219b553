"""The generator attacks (advgan, gap), the latent attack and the unrestricted latent
experiment: training once per target, reuse from the store, and what each must achieve."""
from __future__ import annotations

import pytest
import torch

from robustbench_lite.attacks import _generator
from robustbench_lite import data, specs
from robustbench_lite.experiments.base import execute
from robustbench_lite.paths import default_store
from robustbench_lite.registry import ATTACKS, EXPERIMENTS
from robustbench_lite.store import Store
from robustbench_lite.threat import Threat

from .conftest import accuracy

FAST = {"train_n": 2000, "epochs": 2}
T = Threat("linf", 0.1)


def _count(kind: str) -> int:
    with Store(default_store()) as s:
        return len(s.artifacts(kind))


@pytest.mark.parametrize("name", ["advgan", "gap"])
def test_generator_is_trained_once_per_target_and_reused(name, trained, batch):
    x, y = batch
    _generator._MEMO.clear()
    attack = ATTACKS.create(name, seed=3, **FAST)
    before = _count(name)
    a = attack(trained.model, x, y, T)
    assert _count(name) == before + 1
    _generator._MEMO.clear()  # a new process: the stored generator is found, not retrained
    b = attack(trained.model, x, y, T)
    assert _count(name) == before + 1 and torch.equal(a, b)
    # Another eps is another generator.
    attack(trained.model, x, y, Threat("linf", 0.05))
    assert _count(name) == before + 2


def test_generator_is_keyed_by_the_target_weights(trained):
    fp = _generator.fingerprint(trained.model)
    state = {k: v.clone() for k, v in trained.model.state_dict().items()}
    try:
        with torch.no_grad():
            next(trained.model.parameters()).add_(1e-3)
        assert _generator.fingerprint(trained.model) != fp
    finally:
        trained.model.load_state_dict(state)
    assert _generator.fingerprint(trained.model) == fp
    # A defended view of the same weights is another target.
    from robustbench_lite.views import Defended
    from robustbench_lite.defenses.base import chain

    assert _generator.fingerprint(Defended(trained.model, chain(["jpeg"]))) != fp


def test_gap_universal_adds_one_perturbation_to_every_input(trained, batch):
    x, y = batch
    attack = ATTACKS.create("gap", mode="universal", **FAST)
    # Away from the [0, 1] bounds every input moves by the same delta, at the full budget.
    mid = torch.full((4, 1, 28, 28), 0.5)
    out = attack(trained.model, mid, y[:4], T)
    delta = out - mid
    assert torch.allclose(delta, delta[:1].expand_as(delta), atol=1e-6)
    assert abs(delta.abs().max().item() - 0.1) < 1e-5
    img = ATTACKS.create("gap", mode="image", **FAST)(trained.model, x[:8], y[:8], T) - x[:8]
    assert not torch.allclose(img[0], img[1])


def test_advgan_beats_chance_and_is_no_stronger_than_pgd(trained, batch):
    x, y = batch
    adv = accuracy(trained.model, ATTACKS.create("advgan", train_n=3000, epochs=3, lr=3e-3)(trained.model, x, y, T), y)
    pgd = accuracy(trained.model, ATTACKS.create("pgd", steps=20)(trained.model, x, y, T), y)
    assert adv < accuracy(trained.model, x, y) - 0.2 and pgd <= adv + 0.02, (adv, pgd)


@pytest.mark.parametrize("spec,match", [
    ("advgan:epochs=0", "advgan: epochs must be an integer >= 1, got 0"),
    ("advgan:kappa=-1", "advgan: kappa must be a number >= 0, got -1"),
    ("gap:mode=both", "gap: mode must be one of universal, image"),
    ("latent:radius=0", "latent: radius must be"),
    ("latent:source=dae-fmnist", "latent: model 'dae-fmnist' is a dae, which cannot decode"),
    ("latent:anchor=z", "latent: anchor must be one of x, reconstruction, got 'z'"),
])
def test_bad_specs(generative_zoo, spec, match):
    with pytest.raises(ValueError, match=match):
        specs.attack(spec)


def test_wrong_dataset_for_the_inputs_is_named(trained):
    with pytest.raises(ValueError, match=r"advgan: dataset 'fmnist' has images of shape \(1, 28, 28\), the inputs \(3, 32, 32\)"):
        ATTACKS.create("advgan", **FAST)._train(trained.model, (3, 32, 32), T)


def test_latent_projected_stays_in_the_ball_and_unrestricted_does_not(generative_zoo, trained, fmnist_test, tmp_path):
    x, y = fmnist_test.first(64).floats(), fmnist_test.labels[:64]
    adv = specs.attack("latent:steps=30")(trained.model, x, y, T)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert accuracy(trained.model, adv, y) < accuracy(trained.model, x, y)
    exp = EXPERIMENTS.create("latent", n=64, steps=30, radius=2.0)
    with Store(tmp_path / "s.sqlite") as store:
        (outcome, _key), = execute(exp, [trained], data.load("fmnist", "train"), fmnist_test, store=store)
        from robustbench_lite.reporting.galleries import latent_gallery, unrestricted_table

        assert latent_gallery(store, tmp_path / "l.png") is not None
        table = unrestricted_table(store, tmp_path / "u.md").read_text()
    m = outcome.metrics
    assert 0 < m["attacked"] <= 64 and m["success"] > 0.2
    assert m["median_latent_distance"] <= 2.0 + 1e-4
    assert m["median_linf_to_x"] > 0.1  # unrestricted: well outside the eps ball
    assert "| smallcnn-fmnist-standard | vae-fmnist | 64 |" in table
