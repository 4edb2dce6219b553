"""Detectors (feature squeezing, SafetyNet-style): conformance, thresholds at a fixed
false-positive rate, and the joint classifier+detector attack (Carlini & Wagner 2017)."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from robustbench_lite.attacks.base import scores
from robustbench_lite.cli import main
from robustbench_lite.defenses.base import chain
from robustbench_lite.defenses.base import Detector
from robustbench_lite.views import Guarded, fit
from robustbench_lite.registry import ATTACKS, DEFENSES
from robustbench_lite.stats import auc
from robustbench_lite.threat import Threat

from .conftest import evaluate, on

DETECTORS = [n for n in DEFENSES.names() if DEFENSES.get(n).meta.get("kind") == "detector"]
# Small calibration sets keep the fits to seconds; the defaults (2000 points) are the real ones.
# MagNet's own rate is 0.1%; at 5% the same threshold tests apply to it.
FAST = {"feature_squeeze": "feature_squeeze:calibration=1000", "safetynet": "safetynet:calibration=1000,epochs=10",
        "magnet_detector": "magnet_detector:calibration=1000,fpr=0.05"}


def test_registry_holds_the_issue_detectors():
    assert set(DETECTORS) == {"feature_squeeze", "safetynet", "magnet_detector"}


@pytest.fixture(scope="module")
def calibration():
    from robustbench_lite import data

    return data.load("fmnist", "train")


@pytest.fixture(scope="module", params=DETECTORS)
def fitted(request, trained, calibration):
    if request.param == "magnet_detector":
        request.getfixturevalue("generative_zoo")
    det = chain([FAST[request.param]])[0]
    calib = calibration.last(det.calibration)
    return fit(det, trained.model, trained.model, calib.floats(), calib.labels, seed=0)


def test_score_shape_determinism_and_inputs_untouched(fitted, trained, batch, device):
    model, x = on(device, trained.model, batch[0])
    if fitted.parts is not None:  # the fitted parts move with the model
        fitted = dataclasses.replace(fitted, parts=copy.deepcopy(fitted.parts).to(device))
    x0 = x.clone()
    g = Guarded(model, model, fitted, bpda=False).eval()
    with torch.no_grad():
        a, b = g(x), g(x)
    assert a.shape == (len(x), 11) and a.device == x.device and torch.equal(a, b) and torch.isfinite(a).all()
    assert torch.equal(x, x0)


def test_threshold_holds_its_false_positive_rate_on_test_data(fitted, trained, batch):
    x, _ = batch
    with torch.no_grad():
        rejected = (Guarded(trained.model, trained.model, fitted, bpda=False)(x).argmax(1) == 10).float().mean().item()
    assert 0.0 < rejected < 0.15, rejected  # set at 5% on held-out training points


def test_detector_separates_pgd_examples_from_clean_ones(fitted, trained, batch):
    x, y = batch
    x_adv = ATTACKS.create("pgd", steps=10)(trained.model, x, y, Threat("linf", 0.1), generator=torch.Generator().manual_seed(0))
    g = Guarded(trained.model, trained.model, fitted, bpda=False)
    with torch.no_grad():
        s_clean, s_adv = (g.score(v)[1] for v in (x, x_adv))
    assert auc(s_clean, s_adv) > 0.6


def test_joint_surface_has_gradients_through_the_detector(fitted, trained, batch):
    x = batch[0][:16].clone().requires_grad_(True)
    g = Guarded(trained.model, trained.model, fitted, bpda=True)
    (grad,) = torch.autograd.grad(g.score(x)[1].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# The tiny test DAE's reconstruction error only separates the larger perturbations: at eps 0.1 it
# catches too few of the classifier-only attack's examples for 200 points to tell the two attacks
# apart, at 0.15 many, on every fixture seed (`python scripts/test_margins.py` prints the rates).
EPS = {"magnet_detector": 0.15}


@pytest.mark.parametrize("name", DETECTORS)
def test_joint_attack_is_caught_less_than_the_classifier_only_attack(name, trained, fmnist_test, calibration, request):
    if name == "magnet_detector":
        request.getfixturevalue("generative_zoo")
    kw = dict(eps=[EPS.get(name, 0.1)], n=200, defense=[FAST[name]], calibration=calibration)
    # Full-length PGD: an early-stopped one leaves its examples at the boundary, where even
    # the classifier-only attack is rarely caught.
    attack = ["pgd:steps=20,early_stop=False"]
    oblivious = evaluate(trained, fmnist_test, attack, mode="oblivious", **kw)[0]
    joint = evaluate(trained, fmnist_test, attack, mode="adaptive", **kw)[0]
    assert oblivious.caught > 0.05, oblivious.caught  # the detector does catch the naive attack
    assert joint.caught < oblivious.caught - 0.03, (joint.caught, oblivious.caught)
    assert joint.robust_acc < oblivious.robust_acc, (joint.robust_acc, oblivious.robust_acc)
    assert joint.clean_rejected == oblivious.clean_rejected and 0 < joint.clean_rejected < 0.15
    assert joint.robust_top5 is None  # top-5 means nothing when one column is "rejected"


def test_folded_scores_count_rejection_as_correct():
    class Rejecting(torch.nn.Module):
        rejects = True

        def forward(self, x):
            return x.flatten(1)

    y = torch.tensor([0, 0, 0])
    out = torch.tensor([[0.0, 5.0, 6.0], [0.0, 5.0, -9.0], [0.0, -9.0, 5.0]])  # last column: reject
    folded = scores(Rejecting(), out.view(3, 1, 1, 3), y)
    assert folded.shape == (3, 2)
    # Fooled only where class 1 beats both the true class and the reject logit.
    assert folded.argmax(1).tolist() == [0, 1, 0]
    p = out.softmax(1)
    assert torch.allclose(F.cross_entropy(folded, y, reduction="none"), -(p[:, 0] + p[:, 2]).log())


def test_auc_known_values():
    assert auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert auc(torch.tensor([]), torch.tensor([1.0])) is None


@pytest.mark.parametrize("defenses,match", [
    (["feature_squeeze", "jpeg"], "the detector feature_squeeze.* must come last"),
    (["feature_squeeze", "safetynet"], "at most one detector per evaluation, got 2"),
])
def test_bad_detector_chains(trained, fmnist_test, defenses, match):
    with pytest.raises(ValueError, match=match):
        evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=10, defense=defenses)


@pytest.mark.parametrize("spec,match", [
    ("feature_squeeze:fpr=0", r"feature_squeeze: fpr must be a number in \(0, 1\), got 0"),
    ("safetynet:calibration=10", "safetynet: calibration must be an integer >= 100, got 10"),
    ("feature_squeeze:bits=0", r"feature_squeeze: bits must be an integer in \[1, 8\], got 0"),
])
def test_bad_detector_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        chain([spec])


def test_foolbox_refuses_a_joint_attack(fitted, trained, batch):
    x, y = batch
    g = Guarded(trained.model, trained.model, fitted, bpda=True)
    with pytest.raises(ValueError, match="cannot attack a classifier and its detector jointly"):
        ATTACKS.create("fb", attack="LinfPGD")(g, x[:4], y[:4], Threat("linf", 0.1))


def test_cli_reports_caught_rates(trained, tmp_path, capsys):
    rc = main(["eval", "--model", trained.name, "--attack", "pgd:steps=5", "--eps", "0.1", "--n", "40",
               "--defense", FAST["feature_squeeze"], "--json", "--no-checks", "--store", str(tmp_path / "s.sqlite")])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in rows] == ["adaptive", "oblivious"]
    assert all(0 <= r["caught"] <= 1 and r["clean_rejected"] is not None for r in rows)
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite")]) == 0
    assert "caught %" in capsys.readouterr().out
    assert main(["eval", "--model", trained.name, "--attack", "fgsm", "--eps", "0.1",
                 "--defense", "safetynet", "--defense", "jpeg"]) == 2


def test_detector_is_a_detector():
    assert all(issubclass(DEFENSES.get(n).obj, Detector) for n in DETECTORS)
