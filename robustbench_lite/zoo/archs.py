"""Architectures, each adapted to a dataset (channels, classes, input size) with the
dataset's normalization inside the model, so every model takes inputs in [0, 1]."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DatasetInfo
from ..registry import MODELS
from .checkpoint import read_state


class Normalized(nn.Module):
    """``net((x - mean) / std)``: normalization lives in the model, never in the attack."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))  # cpu: moved with the model
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))  # cpu: moved with the model

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


class Resized(nn.Module):
    """A declared adapter in front of a network built for other inputs: a bilinear resize (no
    antialiasing) to ``size`` x ``size`` and, with ``channels``, a grayscale image repeated into
    that many channels. It is a module of the model, so its settings are part of the
    architecture's fingerprint and of every cell's key; the engine never resizes on its own."""

    def __init__(self, net: nn.Module, size: int, channels: int | None = None):
        super().__init__()
        self.net = net
        self.size = size
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"the model takes {self.channels} channels; only a 1-channel image is repeated into them, "
                                 f"got {x.shape[1]}")
            x = x.expand(-1, self.channels, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


@dataclass(frozen=True)
class _Family:
    """One of timm's test-size variants: real timm code of one architecture family at 0.1-1M
    parameters, trainable in seconds on tiny data (the zoo-wide family test) and in minutes on a
    dataset (the quick profile)."""

    timm_name: str
    family: str
    input_size: int | None = None  # built for this side, behind a declared Resized; None: the data's own
    summary: str = ""
    epochs: int = 3
    lr: float = 2e-3
    fast_at_epochs: int = 1  # fast_at's cyclic schedule in one epoch, as for resnet10t: the quick profile trains it

    def build(self, info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
        side = self.input_size or info.img_size
        overrides: dict[str, Any] = {}
        if self.timm_name.startswith("test_vit"):  # 4 x 4 patches of the image, whatever its side
            overrides = dict(img_size=side, patch_size=side // 4)
        elif self.timm_name in ("test_coatnet", "test_maxvit"):  # attention windows follow the input size
            overrides = dict(img_size=side)
        net = _timm(self.timm_name, info, pretrained, **overrides)
        return net if side == info.img_size else Resized(net, side)


#: timm's architecture families at test size, by zoo arch name (``rbl list models --json`` shows
#: each family, input size and whether a resize is declared in front of it).
TIMM_FAMILIES = {f.timm_name: f for f in (
    _Family("test_efficientnet", "EfficientNet (timm)", summary="EfficientNet (Tan and Le, 2019, arXiv:1905.11946): "
            "depthwise-separable MBConv blocks with squeeze-excitation"),
    _Family("test_byobnet", "BYOBNet (timm)", summary="timm's bring-your-own-blocks network (RepVGG-style "
            "blocks, Ding et al., 2021, arXiv:2101.03697)"),
    _Family("test_convnext", "ConvNeXt (timm)", input_size=32, summary="ConvNeXt (Liu et al., 2022, "
            "arXiv:2201.03545): 7x7 depthwise convolutions and LayerNorm; its stem and three downsamplings need 32x32"),
    _Family("test_vit", "ViT (timm)", lr=1e-3, summary="Vision Transformer (Dosovitskiy et al., 2021, "
            "arXiv:2010.11929) with 4x4 patches of the image"),
    _Family("test_mambaout", "MambaOut (timm)", summary="MambaOut (Yu and Wang, 2024, arXiv:2405.07992): gated "
            "convolutional blocks without the state-space mixer"),
    _Family("test_nfnet", "NFNet (timm)", summary="normalizer-free ResNet (Brock et al., 2021, arXiv:2102.06171): "
            "scaled weight standardization instead of batch norm"),
    _Family("test_coatnet", "CoAtNet (timm)", input_size=32, summary="CoAtNet (Dai et al., 2021, arXiv:2106.04803): "
            "convolution stages then relative-attention stages; windowed for 32x32"),
    _Family("test_maxvit", "MaxViT (timm)", input_size=32, summary="MaxViT (Tu et al., 2022, arXiv:2204.01697): "
            "MBConv with block and grid attention; windows for 32x32"),
)}


def _register_family(f: _Family) -> None:
    def builder(info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
        return f.build(info, pretrained)

    builder.__doc__ = f"timm's ``{f.timm_name}``: {f.summary}" + (
        f"; built for {f.input_size}x{f.input_size} inputs behind a declared bilinear resize" if f.input_size else "") + "."
    builder.__name__ = builder.__qualname__ = f.timm_name
    MODELS.register(f.timm_name, family=f.family, epochs=f.epochs, lr=f.lr, recipes={"fast_at": dict(epochs=f.fast_at_epochs)},
                    timm=f.timm_name, input_size=f.input_size, resized=f.input_size is not None)(builder)


for _f in TIMM_FAMILIES.values():
    _register_family(_f)


@MODELS.register("mobilenetv3_small_050", family="mobile CNN (timm)", epochs=3, lr=4e-3)
def mobilenetv3_small_050(info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """MobileNetV3-Small x0.5 from timm (Howard et al., 2019, arXiv:1905.02244), 0.6M parameters."""
    return _timm("mobilenetv3_small_050", info, pretrained)


@MODELS.register("vit_tiny_p7", family="ViT (timm)", epochs=2, lr=1e-3)
def vit_tiny_p7(info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """ViT-Tiny from timm (Dosovitskiy et al., 2021, arXiv:2010.11929) cut to depth 4 with 7x7
    patches, so a 28x28 image is 16 tokens: 1.8M parameters, trainable on two CPU cores."""
    return _timm("vit_tiny_patch16_224", info, pretrained, img_size=info.img_size, patch_size=7, depth=4)


def _external(arch: str) -> tuple[str, str, int | None]:
    """``timm:<name>[@<side>]`` or ``tv:<name>[@<side>]`` as (library, name, side or None)."""
    library, _, rest = arch.partition(":")
    name, at, side = rest.partition("@")
    if at and not (side.isdigit() and 8 <= int(side) <= 1024):
        raise ValueError(f"{arch!r}: the input side after '@' must be an integer in [8, 1024], got {side!r}")
    return library, name, int(side) if at else None


def _known(library: str, name: str, names: list[str]) -> None:
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=3)
        raise ValueError(f"unknown {library} model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))


def external(arch: str, info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """Any timm model (``timm:<name>``) or torchvision classification model (``tv:<name>``) at its own
    input size and channel count, with ``info``'s classes; ``@<side>`` builds it for another side.
    Where its input differs from the data's, a declared :class:`Resized` sits in front of it.
    ``pretrained``: a local weights file (timm: through timm's own loader, which adapts the stem
    and drops a mismatched classifier; torchvision: the file's tensors whose shapes fit, the rest
    named in the log)."""
    library, name, side = _external(arch)
    if library == "timm":
        import timm

        _known("timm", name, timm.list_models())
        cfg = timm.get_pretrained_cfg(name)
        channels, own = (cfg.input_size[0], cfg.input_size[-1]) if cfg is not None else (3, 224)
        side = side or own
        kw: dict[str, Any] = dict(in_chans=channels, num_classes=info.num_classes, pretrained=bool(pretrained))
        if pretrained:
            kw["pretrained_cfg_overlay"] = dict(file=str(pretrained))  # a local file: nothing is fetched
        try:  # a transformer's token grid follows the side it is built for
            net = timm.create_model(name, **kw, **({"img_size": side} if side != own else {}))
        except TypeError:  # a model without an img_size argument: a convolutional net takes any side
            net = timm.create_model(name, **kw)
    elif library == "tv":
        import torchvision

        _known("torchvision", name, torchvision.models.list_models(module=torchvision.models))
        channels = 3
        try:  # the weights' metadata, read without downloading anything
            own = int(torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
        except (ValueError, AttributeError, IndexError, TypeError):
            own = 224
        side = side or own
        net = torchvision.models.get_model(name, weights=None, num_classes=info.num_classes)
        if pretrained:
            _load_fitting(net, pretrained)
    else:
        raise ValueError(f"unknown model library {library!r} in {arch!r}; allowed: timm:<name>, tv:<name>")
    if (channels, side) == (info.in_chans, info.img_size):
        return net
    return Resized(net, side, channels=channels if channels != info.in_chans else None)


def _load_fitting(net: nn.Module, path: str) -> None:
    """A local state dict into ``net``: every tensor whose name and shape fit (a classifier for
    another number of classes does not, and is left as initialised, named in the log)."""
    import logging


    state = read_state(Path(path))
    own = net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise ValueError(f"{path}: none of its {len(state)} tensors fits the model (another architecture?)")
    left = sorted(set(own) - set(fits))
    net.load_state_dict(fits, strict=False)
    if left:
        logging.getLogger(__name__).info("%s: kept the model's own %s (no tensor of that shape in the file)", path,
                                         ", ".join(left[:6]) + (" ..." if len(left) > 6 else ""))


def build(arch: str, info: DatasetInfo, pretrained: str | None = None) -> Normalized:
    """Build ``arch`` for ``info``: a registered name, ``timm:<any timm model>`` or
    ``tv:<any torchvision classification model>`` (:func:`external`)."""
    if arch.startswith(("timm:", "tv:")):
        net = external(arch, info, pretrained)
    else:
        net = MODELS.get(arch).obj(info, pretrained=pretrained)
    return Normalized(net, info.mean, info.std)
