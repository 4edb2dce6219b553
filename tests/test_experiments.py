"""Minimal perturbations (DeepFool, L-BFGS) against foolbox, and universal perturbations with
their transfer matrices and stored artifacts."""
from __future__ import annotations

import json

import foolbox as fb
import pytest
import torch

from robustbench_lite.attacks.deepfool import deepfool
from robustbench_lite.attacks.lbfgs import lbfgs
from robustbench_lite.attacks.universal import craft
from robustbench_lite.cli import main
from robustbench_lite.experiments.base import execute
from robustbench_lite.inference import predictions
from robustbench_lite.registry import EXPERIMENTS
from robustbench_lite.store import Store, artifact_key
from robustbench_lite.threat import Threat
from robustbench_lite.verify import decided

from .conftest import SEED


@pytest.fixture(scope="module")
def correct(trained, batch):
    x, y = batch
    ok = predictions(trained.model, x) == y
    return x[ok][:100], y[ok][:100]


@pytest.fixture(scope="module")
def fmnist_train():
    from robustbench_lite import data

    return data.load("fmnist", "train")


def test_deepfool_matches_foolbox_on_the_same_points(trained, correct):
    x, y = correct
    ours, fooled = deepfool(trained.model, x, y, "l2")
    _, ref, ok = fb.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02)(fb.PyTorchModel(trained.model, bounds=(0, 1)), x, y, epsilons=None)
    d_ours, d_ref = ((v - x).flatten(1).norm(dim=1).median().item() for v in (ours, ref))
    assert bool(fooled.all()) and bool(ok.all())
    assert d_ours <= 1.1 * d_ref, (d_ours, d_ref)


def test_deepfool_linf_always_succeeds_with_a_small_perturbation(trained, correct):
    x, y = correct
    x_adv, fooled = deepfool(trained.model, x, y, "linf")
    dist = (x_adv - x).flatten(1).abs().amax(1)
    assert bool(fooled.all()) and 0 < dist.median().item() < 0.1


def test_lbfgs_succeeds_everywhere_and_is_no_larger_than_deepfool(trained, correct):
    x, y = correct[0][:30], correct[1][:30]
    x_lb, ok = lbfgs(trained.model, x, y, search_steps=5, max_iter=50)
    x_df, _ = deepfool(trained.model, x, y, "l2")
    d_lb, d_df = ((v - x).flatten(1).norm(dim=1).median().item() for v in (x_lb, x_df))
    assert bool(ok.all()) and bool((predictions(trained.model, x_lb) != y).all())
    assert 0 < d_lb <= 1.1 * d_df, (d_lb, d_df)


# The floors sit below the fooling rate either method reaches on fixtures trained from six seeds
# (`python scripts/test_margins.py` prints them) by more than three binomial standard errors on
# 300 points.
@pytest.mark.parametrize("method,floor", [("sgd", 0.1), ("deepfool", 0.05)])
def test_universal_perturbation_fools_held_out_points_but_less_than_pgd(trained, fmnist_train, fmnist_test, method, floor):
    exp = EXPERIMENTS.create("universal", method=method, n_train=1000, n_test=300, passes=3)
    (outcome, key), = execute(exp, [trained], fmnist_train, fmnist_test)
    m, v = outcome.metrics, outcome.tensors["perturbation"]
    assert v.abs().max().item() <= 0.1 + 1e-6 and key is None
    assert floor <= m["fooling_rate"] <= m["pgd_fooling_rate"], m
    assert m["acc_under_perturbation"] < m["clean_acc"]


def test_l2_universal_perturbation_stays_in_its_ball(trained, fmnist_train):
    v, _ = craft(trained.model, fmnist_train.first(200).floats(), Threat("l2", 2.0), method="deepfool", passes=1)
    assert v.norm().item() <= 2.0 + 1e-5 and v.abs().sum() > 0


def test_transfer_matrices_and_artifacts(trained, fmnist_train, fmnist_test, tmp_path):
    from robustbench_lite import zoo
    from robustbench_lite.train import TrainConfig, train

    train(TrainConfig(arch="smallcnn", epochs=1, train_subset=3000, seed=SEED + 3), out=tmp_path / "other")
    other = zoo.load_checkpoint(tmp_path / "other")
    other = zoo.LoadedModel("smallcnn-other", other.model, other.dataset, other.weights_sha256)
    exp = EXPERIMENTS.create("universal", method="sgd", n_train=500, n_test=200, passes=2)
    with Store(tmp_path / "s.sqlite") as store:
        done = execute(exp, [trained, other], fmnist_train, fmnist_test, store=store)
        stored = store.artifacts("universal")
    assert [o.model for o, _ in done] == [trained.name, "smallcnn-other"]
    for o, _ in done:
        assert set(o.metrics["pgd_transfer"]) == {trained.name, "smallcnn-other"}
        # Per-example PGD fools its own model more than it fools the other one.
        assert o.metrics["pgd_transfer"][o.model] >= max(o.metrics["pgd_transfer"].values()) - 1e-9
    assert len(stored) == 2 and stored[0][1]["model"] == trained.name
    assert torch.equal(stored[0][2]["perturbation"], done[0][0].tensors["perturbation"])


def test_experiment_cli(trained, tmp_path, capsys):
    argv = ["experiment", "universal:method=sgd,n_train=300,n_test=100,passes=1", "--models", trained.name,
            "--json", "--store", str(tmp_path / "s.sqlite")]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == trained.name and len(row["artifact"]) == 64 and 0 <= row["fooling_rate"] <= 1
    assert main(["experiment", "universal:method=magic", "--models", trained.name]) == 2
    assert "universal: method must be one of deepfool, sgd, got 'magic'" in capsys.readouterr().err
    assert main(["experiment", "unversal", "--models", trained.name]) == 2
    assert "did you mean 'universal'" in capsys.readouterr().err


def test_verify_reruns_a_stored_experiment_and_names_what_differs(trained, tmp_path, capsys):
    store_path = str(tmp_path / "s.sqlite")
    assert main(["experiment", "universal:method=sgd,n_train=300,n_test=100,passes=1", "--models", trained.name,
                 "--store", store_path, "--json"]) == 0
    capsys.readouterr()

    def verified() -> tuple[int, list[dict]]:
        code = main(["verify", "--store", store_path, "--json"])
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return code, [r for r in rows if r["kind"] == "experiment"]

    code, rows = verified()
    assert code == 0 and [r["status"] for r in rows] == ["identical"] and rows[0]["label"] == f"{trained.name} / universal"
    # An artifact whose recorded metric is not what the run gives (stored under a key that matches it).
    with Store(store_path) as store:
        (key, kind, text, blob), = store.raw_artifacts()
        meta = json.loads(text)
        original = dict(meta["metrics"])
        meta["metrics"]["fooling_rate"] += 0.01
        forged = json.dumps(meta, sort_keys=True)
        store.put_raw_artifacts([(artifact_key(kind, forged, blob), kind, forged, blob)])
        legacy = {k: v for k, v in meta.items() if k not in ("models", "train_sha256")}
        old = json.dumps(legacy, sort_keys=True)
        store.put_raw_artifacts([(artifact_key(kind, old, blob), kind, old, blob)])
        # Wall-clock fields are the machine's, not the run's: another value, at any depth, is no mismatch.
        timed = dict(meta, metrics=dict(original, seconds=9.0, train_seconds=123.4))
        timed_text = json.dumps(timed, sort_keys=True)
        store.put_raw_artifacts([(artifact_key(kind, timed_text, blob), kind, timed_text, blob)])
    code, rows = verified()
    assert code == 1 and sorted(r["status"] for r in rows) == ["MISMATCH", "identical", "identical", "unavailable"]
    by_status = {r["status"]: r for r in rows}
    assert by_status["MISMATCH"]["note"].startswith("fooling_rate: ") and "stored" in by_status["MISMATCH"]["note"]
    assert "seconds" not in by_status["MISMATCH"]["note"]
    assert "stored before experiments recorded every model" in by_status["unavailable"]["note"]
    assert decided({"a": 1, "seconds": 2, "x": [{"fit_seconds": 3, "b": 4}]}) == {"a": 1, "x": [{"b": 4}]}


@pytest.mark.parametrize("kw,match", [
    (dict(xi=-0.1), "universal: xi must be a finite number > 0, got -0.1"),
    (dict(norm="l1"), "unknown norm 'l1'"),
    (dict(delta=1.0), r"universal: delta must be a number in \[0, 1\), got 1.0"),
])
def test_bad_universal_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        EXPERIMENTS.create("universal", **kw)


@pytest.mark.parametrize("method,floor", [("gradient", 1.0), ("evolution", 0.5)])
def test_fooling_images_reach_high_confidence(trained, fmnist_train, fmnist_test, method, floor):
    (outcome, _), = execute(EXPERIMENTS.create("fooling", method=method), [trained], fmnist_train, fmnist_test)
    images, conf = outcome.tensors["images"], outcome.tensors["confidence"]
    assert images.shape == (10, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert outcome.metrics["classes_reached"] >= floor, outcome.metrics
    with torch.no_grad():
        probs = torch.softmax(trained.model(images), dim=1)
    assert torch.allclose(probs.diagonal(), conf, atol=1e-5)  # the stored confidences are the model's
    assert float((conf >= 0.99).float().mean()) == outcome.metrics["classes_reached"]


def test_fooling_images_are_not_test_images(trained, fmnist_train, fmnist_test):
    # "Unrecognizable": far from every real image of the class they are assigned.
    (outcome, _), = execute(EXPERIMENTS.create("fooling"), [trained], fmnist_train, fmnist_test)
    real = fmnist_test.first(1000)
    x, y = real.floats(), real.labels
    for c, img in enumerate(outcome.tensors["images"]):
        nearest = (x[y == c] - img).flatten(1).norm(dim=1).min().item()
        assert nearest > 3.0, (c, nearest)


@pytest.mark.parametrize("kw,match", [
    (dict(method="cppn"), "fooling: method must be one of gradient, evolution, got 'cppn'"),
    (dict(threshold=1.0), r"fooling: threshold must be a number in \(0, 1\), got 1.0"),
    (dict(population=1), "fooling: population must be an integer >= 2, got 1"),
])
def test_bad_fooling_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        EXPERIMENTS.create("fooling", **kw)


def test_min_norm_reports_distances_with_full_success(trained, fmnist_train, fmnist_test):
    exp = EXPERIMENTS.create("min_norm", methods="deepfool+fb_deepfool", n=40)
    (outcome, _), = execute(exp, [trained], fmnist_train, fmnist_test)
    ours, ref = outcome.metrics["deepfool"], outcome.metrics["fb_deepfool"]
    assert ours["success"] == 1.0 and ref["success"] == 1.0
    assert ours["median"] <= 1.1 * ref["median"] and ours["p10"] <= ours["median"] <= ours["p90"]
    assert outcome.tensors["deepfool_distance"].shape == (40,)


def test_min_norm_refuses_a_meaningless_combination():
    with pytest.raises(ValueError, match="min_norm: lbfgs minimises the L2 norm; use norm=l2"):
        EXPERIMENTS.create("min_norm", methods="lbfgs", norm="linf")
    with pytest.raises(ValueError, match="min_norm: methods must be one of deepfool, lbfgs, fb_deepfool, fb_cw, got 'cw'"):
        EXPERIMENTS.create("min_norm", methods="deepfool+cw")


def test_destruction_rates_follow_kurakin(trained, fmnist_train, fmnist_test):
    # FGSM examples survive transformations better than the minimal, early-stopped BIM ones,
    # and stronger transformations destroy more (Kurakin et al. 2017, Section 4).
    exp = EXPERIMENTS.create("transforms", attacks="fgsm+bim", n=300)
    (outcome, _), = execute(exp, [trained], fmnist_train, fmnist_test)
    rates = outcome.tensors["destruction_rate"]  # (attacks, transforms, strengths)
    assert rates.shape == (2, 7, 5) and bool(((rates >= 0) & (rates <= 1)).all())
    fgsm, bim = rates.nanmean((1, 2))
    assert fgsm < bim - 0.2, (fgsm, bim)
    jpeg = outcome.metrics["destruction_rate"]["fgsm"]["jpeg_quality"]
    assert jpeg[-1] > jpeg[0], jpeg  # quality 10 destroys more than quality 90
    assert min(r for r in outcome.metrics["destruction_rate"]["bim"]["rotation_degrees"]) > 0


def test_galleries_render_from_stored_artifacts_only(trained, fmnist_train, fmnist_test, tmp_path, monkeypatch):
    from robustbench_lite.reporting import galleries

    other = zoo_copy(trained, "smallcnn-twin")
    with Store(tmp_path / "s.sqlite") as store:
        assert galleries.write_all(store, tmp_path / "empty") == []
        execute(EXPERIMENTS.create("universal", method="sgd", n_train=200, n_test=50, passes=1), [trained, other],
                fmnist_train, fmnist_test, store=store)
        execute(EXPERIMENTS.create("fooling", steps=20), [trained], fmnist_train, fmnist_test, store=store)
        execute(EXPERIMENTS.create("transforms", attacks="fgsm", n=50), [trained], fmnist_train, fmnist_test, store=store)
        # Drawing must not run a model: break every forward pass while the figures are made.
        monkeypatch.setattr(torch.nn.Module, "__call__", lambda *a, **k: pytest.fail("a figure ran a model"))
        written = galleries.write_all(store, tmp_path / "out")
    assert [p.name for p in written] == ["universal_perturbations.png", "fooling_images.png", "adversarial_examples.png",
                                         "transfer_matrix.png", "destruction_rate.png"]
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)


def zoo_copy(lm, name):
    from robustbench_lite import zoo

    return zoo.LoadedModel(name, lm.model, lm.dataset, lm.weights_sha256[::-1])


def test_a_stored_universal_perturbation_is_reusable_as_an_attack(trained, fmnist_train, fmnist_test, tmp_path):
    from robustbench_lite.engine import evaluate

    store_path = tmp_path / "s.sqlite"
    with Store(store_path) as store:
        (outcome, key), = execute(EXPERIMENTS.create("universal", method="sgd", n_train=500, n_test=300, passes=2),
                                  [trained], fmnist_train, fmnist_test, store=store)
    r = evaluate(trained, fmnist_test, [f"universal:artifact={key[:8]},store='{store_path}'"], [0.1], n=300, checks=None)[0]
    # The engine scores exactly the stored perturbation (robust = clean-correct and still correct).
    sub = fmnist_test.first(300)
    x, y, v = sub.floats(), sub.labels, outcome.tensors["perturbation"]
    expected = int(((predictions(trained.model, x) == y) & (predictions(trained.model, (x + v).clamp(0, 1)) == y)).sum()) / len(y)
    assert r.robust_acc == pytest.approx(float(expected), abs=1e-9)
    assert r.robust_acc <= outcome.metrics["acc_under_perturbation"] + 1e-9
    with pytest.raises(ValueError, match="no stored universal perturbations match artifact 'ffff"):
        evaluate(trained, fmnist_test, [f"universal:artifact=ffff,store='{store_path}'"], [0.1], n=10)


@pytest.mark.parametrize("name,kw,match", [
    ("deepfool", dict(overshoot=2), r"deepfool: overshoot must be a number in \[0, 1\], got 2"),
    ("deepfool", dict(candidates=1), "deepfool: candidates must be an integer >= 2, got 1"),
    ("square", dict(p_init=float("nan")), r"square: p_init must be a number in \(0, 1\], got nan"),
    ("lbfgs", dict(c_init=0), "lbfgs: c_init must be a finite number > 0, got 0"),
])
def test_bad_minimal_perturbation_arguments(name, kw, match):
    from robustbench_lite.registry import ATTACKS

    with pytest.raises(ValueError, match=match):
        ATTACKS.create(name, **kw)
