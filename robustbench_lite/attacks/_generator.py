"""What the generator attacks (``advgan``, ``gap``) share: the perturbation network, scaling
its output onto the threat's budget, and training once per target model.

A generator is trained against one target, on that target's training split, and stored as an
artifact in the results store, keyed by a fingerprint of the target's weights (and its
wrapper: a defended model's view is another target) and by the attack's full configuration
and threat. A second evaluation of the same model, in this process or another, reuses it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustbench_lite.threat import Threat
from robustbench_lite import data
from robustbench_lite import devices
from robustbench_lite.paths import default_store
from robustbench_lite.store import Store


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.InstanceNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 1, 1), nn.InstanceNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PerturbationNet(nn.Module):
    """AdvGAN's generator (Xiao et al. 2018, after Johnson et al.'s image-transformation
    network): c(w) - c(2w, s2) - c(4w, s2) - residual blocks - u(2w) - u(w) - c(C), tanh.
    Maps (N, C, H, W) to (N, C, H, W) in (-1, 1); H and W divisible by 4."""

    def __init__(self, channels: int, width: int = 8, blocks: int = 4) -> None:
        super().__init__()

        def down(i: int, o: int, s: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, s, 1), nn.InstanceNorm2d(o), nn.ReLU()]

        def up(i: int, o: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(i, o, 4, 2, 1), nn.InstanceNorm2d(o), nn.ReLU()]

        self.net = nn.Sequential(*down(channels, width, 1), *down(width, 2 * width, 2), *down(2 * width, 4 * width, 2),
                                 *[_Residual(4 * width) for _ in range(blocks)],
                                 *up(4 * width, 2 * width), *up(2 * width, width), nn.Conv2d(width, channels, 3, 1, 1),
                                 nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_net(channels: int, width: int, state: dict[str, torch.Tensor],
             device: torch.device | str = "cpu") -> PerturbationNet:
    """A stored generator, rebuilt, loaded and frozen, on ``device``."""
    g = PerturbationNet(channels, width).to(device)
    g.load_state_dict(state)
    g.eval()
    for p in g.parameters():
        p.requires_grad_(False)
    return g


def step(net: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """An optimizer step on ``net``'s parameters alone: the target model's gradients are
    never computed, so its ``.grad`` stays untouched."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
        p.grad = g
    optimizer.step()


def to_budget(v: torch.Tensor, threat: Threat, fill: bool) -> torch.Tensor:
    """A raw output in (-1, 1) as a perturbation within the threat: L-inf ``eps * v``; L2 ``v``
    scaled down to the ball, or (``fill``, GAP's rescaling) onto its sphere."""
    if threat.norm == "linf":
        if fill:  # GAP: the largest coordinate reaches eps
            return v * (threat.eps / v.flatten(1).abs().amax(1).clamp_min(1e-12)).view(-1, *([1] * (v.ndim - 1)))
        return threat.eps * v
    norms = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = threat.eps / norms if fill else (threat.eps / norms).clamp(max=1.0)
    return v * factor.view(-1, *([1] * (v.ndim - 1)))


def fingerprint(model: nn.Module) -> str:
    """sha256 over the module tree's class names and every tensor of its state dict."""
    h = hashlib.sha256()
    for name, mod in model.named_modules():
        h.update(f"{name}:{type(mod).__qualname__};".encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def training_images(dataset: str, n: int, shape: tuple[int, ...], owner: str,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images and labels of ``dataset`` on ``device``, checked against the input shape."""

    split = data.load(dataset, "train")
    split = split.first(min(n, len(split)))
    x = split.floats()
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{owner}: dataset {dataset!r} has images of shape {tuple(x.shape[1:])}, the inputs {tuple(shape)}; "
                         f"pass dataset= the inputs' dataset")
    return x.to(device), split.labels.to(device)


_MEMO: dict[str, dict[str, torch.Tensor]] = {}


def trained(kind: str, config: dict[str, Any], model: nn.Module, threat: Threat,
            train: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The stored tensors of the generator for (kind, config, target, threat), training and
    storing them with ``train()`` the first time. One trained on a GPU is another generator than
    one trained on the CPU (its device is part of the lookup; the CPU's is implicit)."""

    device = devices.of(model).type
    meta = {"target": fingerprint(model), "config": config, "norm": threat.norm, "eps": threat.eps,
            **({"device": device} if device != "cpu" else {})}
    key = hashlib.sha256(repr(sorted(meta.items())).encode()).hexdigest()
    if key in _MEMO:
        return _MEMO[key]
    with Store(default_store()) as store:
        for _, m, tensors in store.artifacts(kind):
            if m.get("lookup") == key:
                _MEMO[key] = tensors
                return tensors
        tensors = train()
        store.put_artifact(kind, {"model": f"target {meta['target'][:12]}", "lookup": key, **meta}, tensors)
    _MEMO[key] = tensors
    return tensors
