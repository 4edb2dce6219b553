from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from robustbench_lite import data, zoo
from robustbench_lite import train as train_mod
from robustbench_lite.train import TrainConfig, train


def test_training_is_seeded_and_writes_a_card(tmp_path):
    cfg = TrainConfig(arch="smallcnn", epochs=1, train_subset=2000, seed=3)
    a = train(cfg, out=tmp_path / "a")
    b = train(cfg, out=tmp_path / "b")
    assert a.weights_sha256 == b.weights_sha256  # bitwise identical on CPU
    assert a.clean_acc > 0.5 and a.hyperparameters["train_subset"] == 2000 and a.seed == 3
    assert len(a.curves) == 1
    assert {"loss", "lr", "train_acc", "clean_acc_train", "pgd_acc_train", "clean_acc_test", "pgd_acc_test"} <= a.curves[0].keys()
    assert a.curves[0]["pgd_acc_test"] < a.curves[0]["clean_acc_test"]  # a standard model has little robustness
    lm = zoo.load_checkpoint(tmp_path / "a")
    assert lm.card.weights_sha256 == a.weights_sha256


@pytest.mark.parametrize("kw,match", [
    (dict(arch="smallcnn", epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(arch="smallcnn", lr=-1.0), "lr must be a finite number > 0"),
    (dict(arch="bignet"), "unknown model architecture 'bignet'"),
    (dict(arch="smallcnn", recipe="trdaes"), "unknown training recipe 'trdaes'"),
    (dict(arch="smallcnn", dataset="imagenet"), "unknown dataset 'imagenet'"),
    (dict(arch="smallcnn", schedule="step"), "unknown schedule 'step'; allowed: warmup_cosine, cyclic"),
    (dict(arch="smallcnn", monitor_n=0), "monitor_n must be an integer >= 1, got 0"),
])
def test_bad_training_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_timm_arch_by_name_trains(tmp_path):
    # @32: built for 32x32 inputs (its own is 224x224, which costs 50 times as much per image here)
    card = train(TrainConfig(arch="timm:resnet10t@32", epochs=1, train_subset=256, batch_size=64, monitor_n=64),
                 out=tmp_path / "t")
    assert card.arch == "timm:resnet10t@32"
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'"):
        zoo.build("timm:resnet10x", data.DATASETS["fmnist"])
    assert torch.is_tensor(zoo.load_checkpoint(tmp_path / "t").model(torch.rand(1, 1, 28, 28)))


RESUMABLE = TrainConfig(arch="smallcnn", epochs=3, train_subset=1000, batch_size=100, seed=5, monitor_n=100)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    whole = train(RESUMABLE, out=tmp_path / "whole")
    real_save, saves = train_mod._save_resume, []

    def save_then_die(*args, **kw):
        real_save(*args, **kw)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed right after epoch 2's checkpoint reached the disk

    monkeypatch.setattr(train_mod, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(RESUMABLE, out=tmp_path / "killed")
    assert (tmp_path / "killed" / train_mod.RESUME).is_file()
    assert not (tmp_path / "killed" / zoo.checkpoint.WEIGHTS).exists()
    monkeypatch.setattr(train_mod, "_save_resume", real_save)
    resumed = train(RESUMABLE, out=tmp_path / "killed")
    assert resumed.weights_sha256 == whole.weights_sha256
    untimed = [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.curves]
    assert untimed == [{k: v for k, v in row.items() if k != "seconds"} for row in whole.curves]
    assert not (tmp_path / "killed" / train_mod.RESUME).exists()  # the finished checkpoint replaced it


def test_resume_refuses_another_runs_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "_save_resume", _save_once_then_die(train_mod._save_resume))
    with pytest.raises(KeyboardInterrupt):
        train(RESUMABLE, out=tmp_path / "m")
    monkeypatch.undo()
    other = dataclasses.replace(RESUMABLE, lr=0.01)
    with pytest.raises(zoo.CheckpointError, match="resume checkpoint is from a different run \\(differs in config\\)"):
        train(other, out=tmp_path / "m")
    (tmp_path / "m" / train_mod.RESUME).write_bytes(b"not a torch file")
    with pytest.raises(zoo.CheckpointError, match="unreadable resume checkpoint"):
        train(RESUMABLE, out=tmp_path / "m")
    card = train(other, out=tmp_path / "m", resume=False)
    assert len(card.curves) == 3


def _save_once_then_die(real_save):
    def save(*args, **kw):
        real_save(*args, **kw)
        raise KeyboardInterrupt
    return save


@pytest.mark.parametrize("name", sorted(train_mod.SCHEDULES))
def test_schedules_rise_then_fall_to_zero(name):
    f = train_mod.SCHEDULES[name](100)
    values = [f(i) for i in range(100)]
    peak = values.index(max(values))
    assert max(values) == pytest.approx(1.0) and 0 < peak < 60
    assert values[0] < 0.1 and values[-1] < 0.05
    assert all(a <= b for a, b in itertools.pairwise(values[:peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(values[peak:]))
