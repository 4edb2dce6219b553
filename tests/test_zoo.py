from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from robustbench_lite import data, zoo
from robustbench_lite.registry import MODELS
from robustbench_lite.zoo import CheckpointError

FMNIST = data.DATASETS["fmnist"]


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_arch_takes_unit_inputs_and_returns_logits(arch):
    torch.manual_seed(0)
    model = zoo.build(arch, FMNIST).eval()
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    # normalization lives inside the model
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.2860])) and torch.allclose(model.std.flatten(), torch.tensor([0.3530]))


def test_smallcnn_is_the_166k_network_of_the_reference():
    n = sum(p.numel() for p in zoo.build("smallcnn", FMNIST).parameters())
    assert n == 166_406


def test_card_round_trip_and_sha(trained, tmp_path):
    card = trained.card
    assert card.arch == "smallcnn" and card.recipe == "standard" and card.dataset == "fmnist"
    assert {"epochs", "lr", "batch_size", "optimizer"} <= card.hyperparameters.keys()
    assert len(card.weights_sha256) == 64 and len(card.data_sha256) == 64 and 0.7 < card.clean_acc < 1
    again = zoo.load_checkpoint(zoo.checkpoint_dir(trained.name))
    for (k, v), (k2, v2) in zip(trained.model.state_dict().items(), again.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def _copy_checkpoint(trained, dst):
    import shutil

    shutil.copytree(zoo.checkpoint_dir(trained.name), dst)
    return dst


def test_corrupt_weights_are_detected(trained, tmp_path):
    d = _copy_checkpoint(trained, tmp_path / "ck")
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is corrupt: sha256"):
        zoo.load_checkpoint(d)


def test_truncated_safetensors_without_card_is_rejected(trained, tmp_path):
    src = zoo.checkpoint_dir(trained.name) / "model.safetensors"
    (tmp_path / "w.safetensors").write_bytes(src.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        zoo.load_checkpoint(tmp_path / "w.safetensors", arch="smallcnn", dataset="fmnist")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rbl-pwned",))


def test_untrusted_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing checkpoint .*weights_only=True"):
        zoo.load_checkpoint(path, arch="smallcnn", dataset="fmnist")
    assert not os.path.exists("/tmp/rbl-pwned")


def test_plain_state_dict_loads_with_arch_and_dataset(trained, tmp_path):
    path = tmp_path / "net.pt"
    torch.save(trained.model.net.state_dict(), path)  # a bare network, as users usually save it
    lm = zoo.load_checkpoint(path, arch="smallcnn", dataset="fmnist")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(lm.model(x), trained.model(x))
    with pytest.raises(CheckpointError, match="no model card beside it; pass --arch and --dataset"):
        zoo.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not fit the architecture"):
        zoo.load_checkpoint(path, arch="mobilenetv3_small_050", dataset="fmnist")


def test_timm_local_pretrained_weights_load_through_the_same_path(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    imagenet = timm.create_model("resnet10t", pretrained=False)  # 3 channels, 1000 classes
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(path))
    model = zoo.build("resnet10t", FMNIST, pretrained=str(path))
    sd, ref = model.net.state_dict(), imagenet.state_dict()
    # timm adapts the RGB stem to one channel by summing, and keeps every body weight
    assert torch.allclose(sd["conv1.0.weight"], ref["conv1.0.weight"].sum(1, keepdim=True))
    assert torch.equal(sd["layer4.0.conv1.weight"], ref["layer4.0.conv1.weight"])
    assert sd["fc.weight"].shape == (10, 512)


@pytest.mark.parametrize("name,match", [
    ("smallcnn-fmnist", "must look like <arch>-<dataset>-<recipe>"),
    ("smallcn-fmnist-standard", "unknown model architecture 'smallcn'; did you mean 'smallcnn'"),
    ("smallcnn-svhn-standard", "unknown dataset 'svhn'"),
    ("smallcnn-fmnist-madry", "unknown training recipe 'madry'"),
])
def test_bad_zoo_names(name, match):
    with pytest.raises(ValueError, match=match):
        zoo.load(name)


def test_untrained_zoo_model_says_how_to_train_it():
    with pytest.raises(zoo.ModelNotTrainedError, match="rbl train --arch mobilenetv3_small_050 --dataset mnist --recipe standard"):
        zoo.load("mobilenetv3_small_050-mnist-standard")


def test_card_missing_fields_is_an_error(trained, tmp_path):
    d = _copy_checkpoint(trained, tmp_path / "ck")
    card = json.loads((d / "card.json").read_text())
    del card["arch"]
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"model card lacks \['arch'\]"):
        zoo.load_checkpoint(d)


def test_every_timm_test_family_is_registered_and_listed_with_its_family(capsys):
    """timm's test-size models (test_resnet, test_vit, ...) each belong to a registered family:
    a variant (test_vit_relpos, test_convnext2) to the family whose name it extends. A family timm
    adds later fails here until it is registered in zoo/archs.py."""
    import json

    import timm

    from robustbench_lite.cli import main

    in_tree = [n for n in MODELS.names() if MODELS.get(n).obj.__module__.startswith("robustbench_lite.")]  # not a test's plugin
    registered = sorted(n for n in in_tree if n.startswith("test_"))
    uncovered = [m for m in timm.list_models("test_*") if not any(m.startswith(r) for r in registered)]
    assert not uncovered, f"timm test models of no registered family: {uncovered}"
    assert len(registered) >= 9
    assert main(["list", "models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    families = {listed[n]["family"] for n in registered}
    assert len(families) == len(registered)  # one family each
    assert all(listed[n].get("family") for n in in_tree), [n for n in in_tree if not listed[n].get("family")]
    assert listed["test_convnext"]["input_size"] == 32 and listed["test_convnext"]["resized"] is True
    assert listed["test_resnet"].get("resized", False) is False


def test_any_timm_or_torchvision_model_runs_at_its_own_input_behind_a_declared_adapter(tmp_path):
    """timm:<name> and tv:<name> are built at their own input size and channel count; the data's
    28x28 grayscale images reach them through a Resized module that is part of the model (and so
    of its fingerprint): never a silent resize. @SIDE builds one for another side."""
    from robustbench_lite.fingerprint import model_fingerprint
    from robustbench_lite.zoo.archs import Resized

    x = torch.rand(2, 1, 28, 28)
    for arch, side in (("timm:test_resnet", 160), ("timm:test_vit@32", 32), ("tv:mobilenet_v3_small@64", 64)):
        model = zoo.build(arch, FMNIST).eval()
        assert isinstance(model.net, Resized) and (model.net.size, model.net.channels) == (side, 3), arch
        with torch.no_grad():
            assert model(x).shape == (2, 10), arch
    a, b = zoo.build("timm:test_resnet@32", FMNIST), zoo.build("timm:test_resnet@64", FMNIST)
    assert model_fingerprint(a, zoo.builder("timm:test_resnet@32"))[0] != model_fingerprint(b, zoo.builder("timm:test_resnet@64"))[0]
    for bad, match in (("timm:test_resnet@big", "integer in \\[8, 1024\\]"), ("tv:resnet1800", "unknown torchvision model"),
                       ("tv:resnet18@4", "integer in \\[8, 1024\\]")):
        with pytest.raises(ValueError, match=match):
            zoo.build(bad, FMNIST)


def test_torchvision_local_weights_load_where_they_fit(tmp_path):
    """A torchvision state dict for 1000 ImageNet classes: every tensor loads but the classifier,
    which keeps its own initialisation for the dataset's 10 classes."""
    import torchvision
    from safetensors.torch import save_file

    imagenet = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    path = tmp_path / "mnv3.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(path))
    model = zoo.build("tv:mobilenet_v3_small@32", FMNIST, pretrained=str(path))
    mine, theirs = model.net.net.state_dict(), imagenet.state_dict()
    same = [k for k in mine if mine[k].shape == theirs[k].shape]
    assert all(torch.equal(mine[k], theirs[k]) for k in same) and len(same) == len(mine) - 2  # the last layer's weight and bias
    path.write_bytes(b"not weights")
    with pytest.raises(CheckpointError):
        zoo.build("tv:mobilenet_v3_small@32", FMNIST, pretrained=str(path))
