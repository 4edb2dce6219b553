"""Architectures, each adapted to a dataset (channels, classes, input size) with the
dataset's normalization inside the model, so every model takes inputs in [0, 1]."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import DatasetInfo
from ..registry import MODELS


class Normalized(nn.Module):
    """``net((x - mean) / std)``: normalization lives in the model, never in the attack."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


# recipes: per-recipe defaults of the training loop where they differ from the arch's: adversarial
# training converges slower, and fast_at needs a smaller batch and learning rate to become robust
# without overfitting catastrophically (scripts/train_cost.py; wall times: README's zoo table).
@MODELS.register("smallcnn", family="small CNN", epochs=10, lr=2e-3,
                 recipes={"fast_at": dict(epochs=15, lr=1e-3, batch_size=64), "pgd_at": dict(epochs=30),
                          "trades": dict(epochs=15)})
def smallcnn(info: DatasetInfo, **_: Any) -> nn.Module:
    """The small CNN of Croce et al., AISTATS 2019 (arXiv:1810.07481), Table 1:
    conv16 4x4 stride 2, conv32 4x4 stride 2, fc100, fc(classes); 166k parameters on 28x28."""
    side = (info.img_size + 2 - 4) // 2 + 1
    side = (side + 2 - 4) // 2 + 1
    return nn.Sequential(
        nn.Conv2d(info.in_chans, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * side * side, 100), nn.ReLU(),
        nn.Linear(100, info.num_classes),
    )


def _timm(model_name: str, info: DatasetInfo, pretrained: str | None = None, **overrides: Any) -> nn.Module:
    import timm

    kw: dict[str, Any] = dict(in_chans=info.in_chans, num_classes=info.num_classes, **overrides)
    if pretrained:
        # timm's own loader adapts the stem to in_chans and drops a mismatched classifier;
        # the overlay points it at a local file, so nothing is fetched from a hub.
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained)), **kw)
    return timm.create_model(model_name, pretrained=False, **kw)


# One epoch of fast_at: `make run` trains it, and the ResNet dominates its wall time.
@MODELS.register("resnet10t", family="ResNet (timm)", epochs=2, lr=2e-3, recipes={"fast_at": dict(epochs=1)})
def resnet10t(info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """ResNet-10-T from timm ("Bag of Tricks", He et al., 2019, arXiv:1812.01187): tiered stem, 4.9M parameters."""
    return _timm("resnet10t", info, pretrained)


@MODELS.register("test_resnet", family="ResNet (timm)", epochs=3, lr=2e-3)
def test_resnet(info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """timm's ``test_resnet``: timm's ResNet code at test size (0.37M parameters, 1.5 MB of weights),
    the quick profile's ResNet: small enough to train in minutes and to ship with the leaderboard."""
    return _timm("test_resnet", info, pretrained)


@MODELS.register("mobilenetv3_small_050", family="mobile CNN (timm)", epochs=3, lr=4e-3)
def mobilenetv3_small_050(info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """MobileNetV3-Small x0.5 from timm (Howard et al., 2019, arXiv:1905.02244), 0.6M parameters."""
    return _timm("mobilenetv3_small_050", info, pretrained)


@MODELS.register("vit_tiny_p7", family="ViT (timm)", epochs=2, lr=1e-3)
def vit_tiny_p7(info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """ViT-Tiny from timm (Dosovitskiy et al., 2021, arXiv:2010.11929) cut to depth 4 with 7x7
    patches, so a 28x28 image is 16 tokens: 1.8M parameters, trainable on two CPU cores."""
    return _timm("vit_tiny_patch16_224", info, pretrained, img_size=info.img_size, patch_size=7, depth=4)


def build(arch: str, info: DatasetInfo, pretrained: str | None = None) -> Normalized:
    """Build ``arch`` for ``info``: a registered name, or ``timm:<any timm model>``."""
    if arch.startswith("timm:"):
        import timm

        name = arch[5:]
        if name not in timm.list_models():
            import difflib

            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ValueError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        net = _timm(name, info, pretrained)
    else:
        net = MODELS.get(arch).obj(info, pretrained=pretrained)
    return Normalized(net, info.mean, info.std)
