"""Feature-denoising blocks (Xie et al. 2019) and the *_denoise architectures."""
from __future__ import annotations

import pytest
import torch

from robustbench_lite import zoo
from robustbench_lite.data import DATASETS
from robustbench_lite.registry import MODELS
from robustbench_lite.zoo.denoise import DenoiseBlock

from .conftest import SEED

INFO = DATASETS["fmnist"]


def test_nonlocal_means_matches_its_definition():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5)
    block = DenoiseBlock(3, "nonlocal")
    got = block.denoise(x)
    flat = x.flatten(2)  # y_i = sum_j softmax_j(x_i . x_j / sqrt(C)) x_j, one position at a time
    for n in range(2):
        for i in range(20):
            w = torch.softmax(torch.stack([flat[n, :, i] @ flat[n, :, j] for j in range(20)]) / 3 ** 0.5, 0)
            assert torch.allclose(got[n].flatten(1)[:, i], (flat[n] * w).sum(1), atol=1e-5)


def test_median_removes_a_salt_pixel_and_filters_keep_a_constant_map():
    x = torch.full((1, 2, 6, 6), 0.3)
    for op in ("mean", "median", "nonlocal"):
        assert torch.allclose(DenoiseBlock(2, op).denoise(x), x, atol=1e-6), op
    x[0, 0, 3, 3] = 5.0
    assert torch.allclose(DenoiseBlock(2, "median").denoise(x), torch.full_like(x, 0.3))


@pytest.mark.parametrize("arch", ["smallcnn_denoise", "resnet10t_denoise"])
def test_a_new_block_is_the_identity_so_the_twin_is_recovered(arch):
    torch.manual_seed(0)
    denoise = zoo.build(arch, INFO).eval()
    plain = zoo.build(arch.removesuffix("_denoise"), INFO).eval()
    assert sum(isinstance(m, DenoiseBlock) for m in denoise.modules()) == (1 if arch.startswith("smallcnn") else 4)
    # Copy the twin's weights into the shared layers: the outputs must then agree exactly.
    shared = [m for m in denoise.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d))
              and not any(m is b.conv for b in denoise.modules() if isinstance(b, DenoiseBlock))]
    twins = [m for m in plain.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d))]
    assert len(shared) == len(twins)
    for a, b in zip(shared, twins, strict=True):
        a.load_state_dict(b.state_dict())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(denoise(x), plain(x), atol=1e-5)


def test_denoise_archs_train_on_the_twin_budget():
    for arch in ("smallcnn", "resnet10t"):
        meta = {k: v for k, v in MODELS.get(arch).meta.items() if k != "family"}
        assert {k: v for k, v in MODELS.get(f"{arch}_denoise").meta.items() if k != "family"} == meta
    with pytest.raises(ValueError, match="denoising op must be one of nonlocal, mean, median, got 'gauss'"):
        DenoiseBlock(4, "gauss")


def test_gradients_reach_the_blocks_and_an_epoch_learns(tmp_path):
    from robustbench_lite.train import TrainConfig, train

    model = zoo.build("smallcnn_denoise", INFO)
    x = torch.rand(8, 1, 28, 28)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
    blocks = [m for m in model.modules() if isinstance(m, DenoiseBlock)]
    assert all(b.conv.weight.grad is not None and b.conv.weight.grad.abs().sum() > 0 for b in blocks)
    card = train(TrainConfig(arch="smallcnn_denoise", epochs=1, train_subset=3000, monitor_n=100, seed=SEED), out=tmp_path / "m")
    assert card.arch == "smallcnn_denoise" and card.clean_acc > 0.6


def test_paired_difference_interval():
    import numpy as np

    from robustbench_lite.stats import paired_difference

    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.5
    d, low, high = paired_difference(a, a)
    assert d == 0 and low < 0 < high and high - low < 0.02  # identical outcomes: a tight interval around 0
    b = a & (rng.random(400) < 0.6)  # b robust on a subset of a's points: a clearly ahead
    d, low, high = paired_difference(a, b)
    assert abs(d - (a.mean() - b.mean())) < 1e-12 and 0 < low < d < high
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(a, b[:10])


def test_twins_table_pairs_a_denoise_model_with_its_plain_twin(trained, fmnist_test, tmp_path):
    from robustbench_lite.reporting import twins
    from robustbench_lite.store import Store
    from robustbench_lite.train import TrainConfig, train

    from .conftest import evaluate

    train(TrainConfig(arch="smallcnn_denoise", epochs=1, train_subset=2000, monitor_n=50, seed=SEED), out=tmp_path / "dn")
    denoise = zoo.load_checkpoint(tmp_path / "dn")
    with Store(tmp_path / "s.sqlite") as store:
        cells = {lm.name: evaluate(lm, fmnist_test, ["pgd:steps=5"], [0.1], n=100, store=store)[0] for lm in (trained, denoise)}
        t = twins.twins(store)
        path = twins.write(store, tmp_path / "twins.md")
    # Both were trained with the standard recipe, so they pair.
    assert len(t) == 1
    r = t.iloc[0]
    assert (r["model"], r["twin"], r["n"]) == ("smallcnn_denoise-fmnist-standard", "smallcnn-fmnist-standard", 100)
    assert r["robust_acc"] == cells[r["model"]].robust_acc and r["twin_robust_acc"] == cells[r["twin"]].robust_acc
    assert r["difference_ci_low"] <= r["difference"] <= r["difference_ci_high"]
    assert "| smallcnn_denoise-fmnist-standard | smallcnn-fmnist-standard | standard | 100 |" in path.read_text()
