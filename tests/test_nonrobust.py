"""The robust/non-robust features experiment (Ilyas et al. 2019) and the feature-map
visualisation around a denoising block (Xie et al. 2019), on tiny settings."""
from __future__ import annotations

import pytest
import torch

from robustbench_lite import data, zoo
from robustbench_lite.cli import main
from robustbench_lite.data import DATASETS
from robustbench_lite.experiments.base import execute
from robustbench_lite.registry import EXPERIMENTS
from robustbench_lite.store import Store

from robustbench_lite.experiments.nonrobust import representation, robustify

TINY = dict(n=1000, steps=20, synth_steps=15, epochs=2, eval_n=100, eval_steps=3)


def test_nonrobust_builds_both_sets_trains_on_them_and_writes_its_page(trained, fmnist_test, tmp_path):
    from robustbench_lite.reporting.galleries import nonrobust_figure, nonrobust_table

    train = data.load("fmnist", "train")
    with Store(tmp_path / "s.sqlite") as store:
        (outcome, key), = execute(EXPERIMENTS.create("nonrobust", **TINY), [trained, trained], train, fmnist_test, store=store)
        figure, page = nonrobust_figure(store, tmp_path / "f.png"), nonrobust_table(store, tmp_path / "n.md")
        _, meta, tensors = next(iter(store.artifacts("nonrobust")))
    m = outcome.metrics
    assert set(m["sets"]) == {"original", "deterministic", "random", "robustified"}
    for v in m["sets"].values():
        assert 0 <= v["robust_acc"] <= v["clean_acc"] <= 1 and v["clean_ci"][0] <= v["clean_acc"] <= v["clean_ci"][1]
    # The original set gives a working model; the D_det images are relabeled y + 1, stay in the
    # eps ball and mostly read as their new label by the model that made them.
    assert m["sets"]["original"]["clean_acc"] > 0.5
    t = tensors
    assert torch.equal(t["deterministic_labels"], (t["labels"] + 1) % 10)
    assert (t["deterministic"] - t["originals"]).abs().max() <= 0.1 + 1 / 255 + 1e-6
    # The tiny test model resists PGD towards a fixed class far more than the zoo's, so the bound
    # is loose: a tenth of the images, and five times the rate at which unperturbed ones read as y + 1.
    sub = train.first(TINY["n"])
    with torch.no_grad():
        clean_rate = float((trained.model(sub.floats()).argmax(1) == (sub.labels + 1) % 10).float().mean())
    assert m["det_read_as_target"] > max(0.1, 5 * clean_rate) and m["rand_read_as_target"] > 0.1
    assert (t["random_labels"] != t["labels"]).all()
    paired = m["robustified_minus_original"]
    assert set(paired) == set(m["sets"]["original"]["robust_curve"])
    for e, (d, lo, hi) in paired.items():
        assert lo <= d <= hi
        assert d == pytest.approx(m["sets"]["robustified"]["robust_curve"][e] - m["sets"]["original"]["robust_curve"][e])
    assert figure is not None and figure.stat().st_size > 0
    text = page.read_text()
    assert "minus the original-images model, point by point" in text
    assert "| deterministic | targeted PGD towards t = y + 1" in text and "| random |" in text and "nonrobust_examples.png" in text
    assert meta["config"]["experiment"] == "nonrobust" and key


def test_robustify_moves_the_representation_towards_the_goal(trained, fmnist_test):
    x = fmnist_test.first(32).floats()
    start = x.roll(1, dims=0)
    with torch.no_grad():
        goal = representation(trained.model, x, "head")
        before = (representation(trained.model, start, "head") - goal).norm(dim=1) / goal.norm(dim=1)
    assert goal.shape == (32, 32 * 7 * 7)  # the small CNN's trunk output, not its 100-unit bottleneck
    assert representation(trained.model, x).shape == (32, 100)
    out, rel = robustify(trained.model, x, start, steps=40, lr=0.1, tv=0.3, layer="head")
    assert out.min() >= 0 and out.max() <= 1
    assert float(rel.median()) < 0.6 * float(before.median()), (rel.median(), before.median())


def test_nonrobust_needs_a_standard_and_a_robust_model(trained, fmnist_test, tmp_path):
    with pytest.raises(ValueError, match="nonrobust: give two models, a standard one .* got 1: smallcnn-fmnist-standard"):
        execute(EXPERIMENTS.create("nonrobust", **TINY), [trained], data.load("fmnist", "train"), fmnist_test)
    assert main(["experiment", "nonrobust:start=edge", "--models", "smallcnn-fmnist-standard"]) == 2


def test_feature_maps_of_a_denoising_model(fmnist_test, tmp_path):
    from robustbench_lite.reporting.galleries import feature_maps_figure
    from robustbench_lite.zoo.denoise import DenoiseBlock

    torch.manual_seed(0)
    net = zoo.build("smallcnn_denoise", DATASETS["fmnist"]).eval()
    for block in net.modules():
        if isinstance(block, DenoiseBlock):
            torch.nn.init.normal_(block.conv.weight, std=0.3)  # not the identity it starts as
    lm = zoo.LoadedModel("smallcnn_denoise-fmnist-test", net, "fmnist", "0" * 64)
    with Store(tmp_path / "s.sqlite") as store:
        (outcome, _), = execute(EXPERIMENTS.create("feature_maps", n=20, steps=3), [lm], data.load("fmnist", "train"),
                                fmnist_test, store=store)
        assert feature_maps_figure(store, tmp_path / "fm.png") is not None
    m = outcome.metrics
    assert m["op"] == "nonlocal" and m["channels"] == 32
    assert m["feature_noise_before"] > 0 and m["feature_noise_after"] > 0
    assert m["feature_noise_before"] != m["feature_noise_after"]
    plain = zoo.LoadedModel("smallcnn-plain", zoo.build("smallcnn", DATASETS["fmnist"]).eval(), "fmnist", "0" * 64)
    with pytest.raises(ValueError, match=r"model smallcnn-plain has 0 denoising blocks.*<arch>_denoise"):
        execute(EXPERIMENTS.create("feature_maps", n=5), [plain], data.load("fmnist", "train"), fmnist_test)
