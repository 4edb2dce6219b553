"""Feature denoising: "Feature Denoising for Improving Adversarial Robustness", Xie, Wu, van
der Maaten, Yuille and He, CVPR 2019, arXiv:1812.03411. A denoising block filters a feature
map (non-local means, or a mean or median filter), passes it through a 1x1 convolution and
adds it back: z = x + conv1x1(denoise(x)). ``<arch>_denoise`` inserts blocks after chosen
stages of the small CNN and of timm's ResNet-10-T; they are trained with the same recipes
and budgets as their plain twins, so the leaderboard compares like with like."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DatasetInfo
from ..registry import MODELS
from .archs import _timm, smallcnn

OPS = ("nonlocal", "mean", "median")


class DenoiseBlock(nn.Module):
    """z = x + conv1x1(denoise(x)), the 1x1 convolution zero-initialised so that a new block
    starts as the identity.

    ``nonlocal``: the paper's Gaussian (softmax) non-local means over all positions,
    y_i = sum_j softmax_j(x_i . x_j / sqrt(C)) x_j. ``mean`` / ``median``: a 3x3 filter.
    """

    def __init__(self, channels: int, op: str = "nonlocal") -> None:
        super().__init__()
        if op not in OPS:
            raise ValueError(f"denoising op must be one of {', '.join(OPS)}, got {op!r}")
        self.op = op
        self.conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.op == "nonlocal":
            # softmax(x^T x / sqrt(c)) x over the hw positions: attention with q = k = v = the
            # feature vectors, whose fused kernel is 2-3x faster than matmul-softmax-matmul.
            q = x.flatten(2).transpose(1, 2).unsqueeze(1)  # (n, 1, hw, c)
            return F.scaled_dot_product_attention(q, q, q).squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        if self.op == "mean":
            return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(n, c, 9, h, w)
        return patches.median(dim=2).values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.denoise(x))


def insert_after(net: nn.Sequential, positions: dict[int, int], op: str) -> nn.Sequential:
    """A copy of ``net`` with a block after layer i, for each i -> channels in ``positions``."""
    layers: list[nn.Module] = []
    for i, layer in enumerate(net):
        layers.append(layer)
        if i in positions:
            layers.append(DenoiseBlock(positions[i], op))
    return nn.Sequential(*layers)


_SMALLCNN = MODELS.get("smallcnn").meta


@MODELS.register("smallcnn_denoise", family="small CNN", **{k: v for k, v in _SMALLCNN.items() if k != "family"})
def smallcnn_denoise(info: DatasetInfo, op: str = "nonlocal", **_: Any) -> nn.Module:
    """The small CNN with a denoising block after its last convolution stage (32 channels,
    7x7 on 28x28 inputs), the stage the paper's blocks follow in every residual stage. A
    block after the first stage (16 channels, 14x14) costs 10x that convolution on a CPU
    (196 x 196 attention per image) and made pgd_at 8x slower than the twin; this one about 2x."""
    return insert_after(smallcnn(info), {3: 32}, op)


_RESNET = MODELS.get("resnet10t").meta


@MODELS.register("resnet10t_denoise", family="ResNet (timm)", **{k: v for k, v in _RESNET.items() if k != "family"})
def resnet10t_denoise(info: DatasetInfo, pretrained: str | None = None, op: str = "nonlocal") -> nn.Module:
    """timm's ResNet-10-T with a denoising block after each of its four stages, as the paper
    places them after res2-res5."""
    net = _timm("resnet10t", info, pretrained)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(net, name)
        channels = [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        setattr(net, name, nn.Sequential(stage, DenoiseBlock(channels, op)))
    return net
