"""Conformance suite for every registered defense, and the engine's adaptive evaluation of them."""
from __future__ import annotations

import pytest
import torch

from robustbench_lite import conformance, specs
from robustbench_lite.views import Defended
from robustbench_lite.defenses.base import Defense, chain
from robustbench_lite.registry import DEFENSES
from robustbench_lite.store import Store
from robustbench_lite.threat import Threat

from .conftest import accuracy, evaluate

# Preprocessors and purifiers; detectors have their own conformance suite in
# test_detectors.py, and a composite (magnet) is only its parts.
NAMES = [n for n in DEFENSES.names() if DEFENSES.get(n).meta.get("kind") not in ("detector", "composite")]
PURIFIERS = [n for n in NAMES if DEFENSES.get(n).meta.get("kind") == "purifier"]
# Defense-GAN at the paper's L = 200, R = 10 costs 2000 generator passes per image; the suite
# checks the same code at a tenth of that.
FAST = {"defense_gan": "defense_gan:steps=20,restarts=2"}


@pytest.fixture(params=NAMES)
def defense(request) -> Defense:
    if request.param in PURIFIERS:
        request.getfixturevalue("generative_zoo")
    return chain([FAST.get(request.param, request.param)])[0]


def test_registry_holds_the_issue_preprocessors_and_purifiers():
    assert {"jpeg", "bit_depth", "median", "gaussian_noise", "random_resize_pad", "tv_min"} <= set(NAMES)
    assert set(PURIFIERS) == {"magnet_reformer", "vae_purify", "defense_gan"}


# The checks live in robustbench_lite.conformance, which `rbl conformance --plugin FILE` runs too.
def test_keeps_shape_dtype_bounds_and_inputs(defense, batch, device):
    problem = conformance.defense_output(defense, batch[0].to(device))  # the same device included
    assert problem is None, f"{type(defense).__name__} on {device}: {problem}"


def test_randomness_is_declared_and_seeded(defense, batch, device):
    problem = conformance.defense_randomness(defense, batch[0].to(device))
    assert problem is None, f"{type(defense).__name__} on {device}: {problem}"


def test_a_batch_invariant_defense_is_one(defense, batch, device):
    if not type(defense).batch_invariant:
        pytest.skip(f"{type(defense).__name__} does not declare batch_invariant: its cells are keyed by the batch size")
    problem = conformance.defense_batches(defense, batch[0].to(device))
    assert problem is None, f"on {device}: {problem}"


def test_the_batch_check_catches_a_defense_that_normalises_over_its_batch(batch):
    class ByBatch(Defense):
        batch_invariant = True  # a false declaration

        def transform(self, x, generator):
            return (x - x.mean(0) + 0.5).clamp(0, 1)

    problem = conformance.defense_batches(ByBatch(), batch[0])
    assert problem is not None and "declares batch_invariant but" in problem


def test_differentiability_is_declared_honestly(defense, batch, device):
    problem = conformance.defense_gradients(defense, batch[0].to(device))
    assert problem is None, f"{type(defense).__name__} on {device}: {problem}"


def test_bpda_view_forwards_the_real_step_and_passes_gradients(trained, batch):
    x = batch[0][:32]
    deployed = Defended(trained.model, chain(["jpeg", "bit_depth"]), seed=0)
    surface = deployed.surface(eot=4)
    with torch.no_grad():
        assert torch.equal(surface(x), deployed(x))  # deterministic chain: no EOT, same forward
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(surface(xg), batch[1][:32]), xg)
    assert g.abs().sum() > 0
    xg2 = x.clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(deployed(xg2).sum(), xg2, allow_unused=True)
    assert g0 is None or g0.abs().sum() == 0  # as deployed, JPEG hides the gradient entirely


def test_eot_averages_over_draws(trained, batch):
    x = batch[0][:8]
    surface = Defended(trained.model, chain(["gaussian_noise:sigma=0.3"]), seed=0).surface(eot=16)
    out = surface(x)
    assert out.shape == (8, 10) and torch.allclose(out.exp().sum(1), torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("spec,match", [
    ("jpg", "unknown defense 'jpg'.*did you mean 'jpeg'"),
    ("jpeg:quality=0", r"jpeg: quality must be an integer in \[1, 100\], got 0"),
    ("bit_depth:bits=9", r"bit_depth: bits must be an integer in \[1, 8\], got 9"),
    ("median:window=1", r"median: window must be an integer in \[2, 11\], got 1"),
    ("gaussian_noise:sigma=-1", r"gaussian_noise: sigma must be a number in \(0, 1\], got -1"),
    ("random_resize_pad:min_scale=1.5", r"random_resize_pad: min_scale must be a number in \(0, 1\)"),
    ("tv_min:keep=0", r"tv_min: keep must be a finite number in \(0, 1\], got 0"),
    ("jpeg:q=3", "bad arguments {'q': 3} for defense 'jpeg'.*allowed: quality"),
])
def test_bad_defense_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        chain([spec])


def test_engine_rejects_bad_modes(trained, fmnist_test):
    with pytest.raises(ValueError, match="unknown mode 'naive'; allowed: adaptive, bpda, oblivious"):
        evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=10, defense=["jpeg"], mode="naive")
    with pytest.raises(ValueError, match="eot must be an integer >= 1, got 0"):
        evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=10, defense=["jpeg"], eot=0)


def test_defended_cells_are_keyed_apart_and_reproducible(trained, fmnist_test, tmp_path):
    kw = dict(n=60, defense=["gaussian_noise"], eot=2, votes=3)
    with Store(tmp_path / "s.sqlite") as store:
        plain = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.1], n=60, store=store)[0]
        adaptive = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.1], store=store, **kw)[0]
        oblivious = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.1], store=store, mode="oblivious", **kw)[0]
        assert len({plain.key, adaptive.key, oblivious.key}) == 3 and len(store) == 3
        config = store.config(adaptive.key)
    assert (adaptive.defense, adaptive.mode, oblivious.mode, plain.mode) == ("gaussian_noise:sigma=0.12", "adaptive", "oblivious", "none")
    assert config["votes"] == 3 and config["eot"] == 2
    assert config["batch_size"] == 500  # a random defense draws per batch, so the batch size is part of the key
    again = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.1], **kw)[0]
    assert (again.robust == adaptive.robust).all() and again.clean_acc == adaptive.clean_acc


# What the preprocessors keep over the undefended model under this test's adaptive attack (PGD-20,
# EOT-8, 5 votes, n = 200, the 2-epoch fixture): a random defense keeps some genuine robustness (a
# noisy majority vote smooths the classifier), a deterministic one almost none (Athalye 2018).
# Each bound is the largest excess over fixtures trained from six seeds (standing in for other
# CPUs; `python scripts/test_margins.py` prints them), plus 0.06: two binomial standard errors of an
# accuracy near 0.3 on 200 points. A broken BPDA leaves a non-differentiable defense near its clean
# accuracy, far above these bounds; a missing EOT leaves a random one well above them.
SLACK = {"bit_depth": 0.05, "jpeg": 0.10, "median": 0.12, "gaussian_noise": 0.15, "random_resize_pad": 0.22, "tv_min": 0.20}
# Where the oblivious evaluation overstates robustness by far on every seed, the adaptive one must
# take back at least half of that excess (the same script prints the margin to this bound).
# bit_depth's oblivious excess is small, and random_resize_pad's adaptive attack is weaker than
# transfer from the bare model on some fixtures (the engine's adaptive_vs_oblivious check flags
# exactly that), so neither is held to it.
OVERSTATED = ("gaussian_noise", "jpeg", "median", "tv_min")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n not in PURIFIERS])
def test_adaptive_attack_breaks_what_the_oblivious_one_reports(name, trained, fmnist_test):
    """Athalye 2018: with BPDA and EOT the preprocessors give back (almost) no robustness."""
    n, attack = 200, ["pgd:steps=20"]
    undefended = evaluate(trained, fmnist_test, attack, [0.1], n=n)[0].robust_acc
    kw = dict(n=n, defense=[name], eot=8, votes=5)
    adaptive = evaluate(trained, fmnist_test, attack, [0.1], **kw)[0]
    oblivious = evaluate(trained, fmnist_test, attack, [0.1], mode="oblivious", **kw)[0]
    numbers = (name, undefended, adaptive.robust_acc, oblivious.robust_acc)
    assert adaptive.robust_acc <= undefended + SLACK[name], numbers
    if name in OVERSTATED:
        assert adaptive.robust_acc - undefended <= 0.5 * (oblivious.robust_acc - undefended), numbers
    assert adaptive.clean_acc > 0.5


def test_quantised_model_fools_the_naive_attack_but_not_bpda(trained, fmnist_test, batch):
    """A non-differentiable layer hides the gradient from a plain attack; BPDA sees through it."""
    x, y = batch
    deployed = Defended(trained.model, chain(["bit_depth:bits=3"]), seed=0)
    pgd = specs.attack("pgd:steps=10")
    threat = Threat("linf", 0.1)
    naive = pgd(deployed, x, y, threat, generator=torch.Generator().manual_seed(0))
    bpda = pgd(deployed.surface(1), x, y, threat, generator=torch.Generator().manual_seed(0))
    assert accuracy(deployed, bpda, y) < accuracy(deployed, naive, y) - 0.3


def test_a_cascade_whose_first_attack_fools_everything_is_fine_behind_a_defense(trained, fmnist_test):
    # The second attack has no point left to attack; the judge must not see an empty batch.
    r = evaluate(trained, fmnist_test, ["pgd:steps=20,step_size=0.1", "fgsm"], [1.0], n=30, defense=["jpeg"])[0]
    assert r.robust_acc == 0.0 and r.clean_acc > 0.5


def test_a_defended_evaluation_leaves_the_model_in_eval_mode(trained, fmnist_test):
    # The engine wraps the model in fresh modules (training=True by default); restoring their
    # mode must not push training mode down onto the wrapped model.
    assert not trained.model.training
    evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=20, defense=["gaussian_noise"], eot=2, votes=2)
    assert not any(m.training for m in trained.model.modules())
