from __future__ import annotations

import pytest
import torch

from robustbench_lite import data, zoo
from robustbench_lite.train import TrainConfig, train


def test_training_is_seeded_and_writes_a_card(tmp_path):
    cfg = TrainConfig(arch="smallcnn", epochs=1, train_subset=2000, seed=3)
    a = train(cfg, out=tmp_path / "a")
    b = train(cfg, out=tmp_path / "b")
    assert a.weights_sha256 == b.weights_sha256  # bitwise identical on CPU
    assert a.clean_acc > 0.5 and a.hyperparameters["train_subset"] == 2000 and a.seed == 3
    assert len(a.curves) == 1 and {"loss", "train_acc", "test_acc_1k"} <= a.curves[0].keys()
    lm = zoo.load_checkpoint(tmp_path / "a")
    assert lm.card.weights_sha256 == a.weights_sha256


@pytest.mark.parametrize("kw,match", [
    (dict(arch="smallcnn", epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(arch="smallcnn", lr=-1.0), "lr must be a finite number > 0"),
    (dict(arch="bignet"), "unknown model architecture 'bignet'"),
    (dict(arch="smallcnn", recipe="trdaes"), "unknown training recipe 'trdaes'"),
    (dict(arch="smallcnn", dataset="imagenet"), "unknown dataset 'imagenet'"),
])
def test_bad_training_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_timm_arch_by_name_trains(tmp_path):
    card = train(TrainConfig(arch="timm:resnet10t", epochs=1, train_subset=256, batch_size=64), out=tmp_path / "t")
    assert card.arch == "timm:resnet10t"
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'"):
        zoo.build("timm:resnet10x", data.DATASETS["fmnist"])
    assert torch.is_tensor(zoo.load_checkpoint(tmp_path / "t").model(torch.rand(1, 1, 28, 28)))
