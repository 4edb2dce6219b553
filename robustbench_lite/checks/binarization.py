"""The binarization test (Zimmermann, Brendel, Tramer, Carlini, NeurIPS 2022, "Increasing
Confidence in Adversarial Robustness Evaluations", arXiv:2206.13991).

For each sampled point x the classifier's head is replaced by a binary readout trained on the
features of the point's neighbourhood: x and ``INNER`` random points inside the ball of radius
``ETA * eps`` are class 0, one random point on the ball's boundary is class 1. The readout is kept
only where it separates them *and* the whole deployed model (defense, classifier, new head)
puts x in class 0 and that boundary point in class 1: then an adversarial example provably
exists inside the ball, and an attack that does not find one is provably too weak on that point.

The head is the last ``nn.Linear`` whose output is the model's output shape, replaced in place,
so whatever the model does after it (a temperature, a softmax, a rounding) and before it (a
preprocessing defense, a layer with a dead backward pass) stays in the binarized model. Where no
such layer exists the readout takes the model's output as its features. One module holds the
readouts of every sampled point and routes each input to the readout of the nearest point in
feature space, so an attack can run on all points in one batch, or on any subset of it.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..inference import eval_mode
from ..attacks.base import module_calls
from ..threat import Threat

INNER = 99  # random inner points per test, besides the point itself
ETA = 0.95  # the inner points' radius, relative to eps (the paper's default gap of 5%)
FIT_STEPS = 200  # Adam steps of the logistic readout
CLOSENESS = 0.5  # where the threshold sits between the inner points and the boundary point


class BinaryHead(nn.Module):
    """Per-point binary readouts: a row of features goes to the readout of the anchor (a sampled
    point's clean features) nearest to it, and scores ``(-s/2, s/2)``: class 1 where s > 0.
    With ``features`` set it is the head it replaced (``original``; the identity on a model's
    output) and records its inputs and the margin of that head's scores (the fitting pass)."""

    def __init__(self, k: int, dim: int, original: nn.Module | None = None):
        super().__init__()
        self.register_buffer("anchors", torch.zeros(k, dim))  # cpu: the head is moved when installed
        self.register_buffer("weight", torch.zeros(k, dim))  # cpu: as anchors
        self.register_buffer("bias", torch.zeros(k))  # cpu: as anchors
        self.original = original
        self.features: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        flat = f.flatten(1)
        if self.features is not None:
            out = self.original(f) if self.original is not None else f
            top = out.detach().flatten(1).topk(2, dim=1).values
            self.features.append((flat.detach(), top[:, 0] - top[:, 1]))
            return out
        idx = torch.cdist(flat.detach(), self.anchors.to(flat.dtype)).argmin(1)
        s = (flat * self.weight[idx].to(flat.dtype)).sum(1) + self.bias[idx].to(flat.dtype)
        return torch.stack([-s / 2, s / 2], 1)


class OnOutput(nn.Module):
    """A readout on the model's own output, for a model without a linear head."""

    def __init__(self, model: nn.Module, head: BinaryHead):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x))


def head_of(model: nn.Module, x: torch.Tensor) -> tuple[str | None, int]:
    """The name of the model's head (the last ``nn.Linear`` called once per forward pass whose
    output has the model's output shape, on a 2-d input) and its feature size; (None, the
    output's size) where there is none."""
    out, seen = module_calls(model, x, lambda name, m: isinstance(m, nn.Linear))
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    for name, args, o in seen:
        if args and isinstance(args[0], torch.Tensor) and isinstance(o, torch.Tensor):
            calls.setdefault(name, []).append((tuple(args[0].shape), tuple(o.shape)))
    heads = [n for n, c in calls.items() if len(c) == 1 and c[0][1] == tuple(out.shape) and len(c[0][0]) == 2]
    if heads:
        return heads[-1], calls[heads[-1]][0][0][1]
    return None, int(out[0].numel())


def install(model: nn.Module, x: torch.Tensor, k: int) -> tuple[nn.Module, BinaryHead]:
    """A copy of ``model`` whose head is a :class:`BinaryHead` for ``k`` points (or which gains one
    on its output), and that head."""
    model = copy.deepcopy(model)
    name, dim = head_of(model, x)
    if name is None:
        head = BinaryHead(k, dim).to(x.device)
        return OnOutput(model, head), head
    parent, _, leaf = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    head = BinaryHead(k, dim, getattr(owner, leaf)).to(x.device)
    setattr(owner, leaf, head)
    return model, head


def samples(x: torch.Tensor, threat: Threat, generator: torch.Generator, inner: int = INNER) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point: the point and ``inner`` random points in the ball of radius ETA * eps (k, inner + 1,
    ...), and one random point on the boundary of the ball (k, ...), all inside the input box."""
    k, shape = len(x), x.shape[1:]
    lo, hi = threat.bounds

    def rand(*size: int) -> torch.Tensor:
        return torch.rand(size, generator=generator, device=x.device).to(x)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, device=x.device).to(x)

    d = int(math.prod(shape))
    if threat.norm == "linf":
        delta = (2 * rand(k, inner, d) - 1) * ETA * threat.eps
        # A corner of the ball, clipped to the box: distance eps wherever the box allows it.
        edge = (2 * torch.randint(0, 2, (k, d), generator=generator, device=x.device).to(x) - 1) * threat.eps
    else:
        g = randn(k, inner, d)
        delta = g / g.norm(dim=2, keepdim=True) * rand(k, inner, 1) ** (1 / d) * ETA * threat.eps
        e = randn(k, d)
        edge = e / e.norm(dim=1, keepdim=True) * threat.eps
    inside = (x.unsqueeze(1) + delta.view(k, inner, *shape)).clamp(lo, hi)
    return torch.cat([x.unsqueeze(1), inside], 1), (x + edge.view(k, *shape)).clamp(lo, hi)


def fit(head: BinaryHead, inner: torch.Tensor, boundary: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Fit every point's readout on its features (``inner`` (k, m, F) with the clean point first,
    ``boundary`` (k, F)) and return where it separates them. The decision threshold sits at
    ``CLOSENESS`` of the way from the inner point nearest to the boundary point (along the readout)
    to it, and the scale gives the clean point the margin its scores had under the original head
    (``margin``, (k,)), so whatever follows the head (a temperature, a softmax) sees scores of
    the size it saw: a model that saturates its scores saturates the binary ones alike."""
    k, m, dim = inner.shape
    mu = inner.mean(1, keepdim=True)
    sd = inner.std(1, keepdim=True)
    sd = sd.clamp_min(1e-6 + 1e-3 * float(sd.mean()))  # a feature constant on the inner points is kept, not blown up
    zi, zb = (inner - mu) / sd, (boundary.unsqueeze(1) - mu) / sd  # standardised per point
    w = (zb.squeeze(1) / zb.squeeze(1).norm(dim=1, keepdim=True).clamp_min(1e-12)).clone().requires_grad_(True)
    b = torch.zeros(k, device=inner.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            si = (zi * w.unsqueeze(1)).sum(2) + b.unsqueeze(1)
            sb = (zb.squeeze(1) * w).sum(1) + b
            # Balanced classes: the one boundary point weighs as much as all inner points together.
            loss = F.softplus(si).mean(1) + F.softplus(-sb) + 1e-3 * w.pow(2).sum(1)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
    with torch.no_grad():
        w_raw = w / sd.squeeze(1)  # the readout on raw features
        pi = (inner * w_raw.unsqueeze(1)).sum(2)
        pb = (boundary * w_raw).sum(1)
        top = pi.amax(1)
        valid = pb > top
        t = top + CLOSENESS * (pb - top)
        scale = margin.clamp_min(1e-6) / (t - pi[:, 0]).clamp_min(1e-12)
        head.weight.copy_(torch.where(valid.unsqueeze(1), w_raw * scale.unsqueeze(1), torch.zeros_like(w_raw)))
        head.bias.copy_(torch.where(valid, -t * scale, torch.ones_like(t)))
        head.anchors.copy_(inner[:, 0])
    return valid


def features(deployed: nn.Module, head: BinaryHead, x: torch.Tensor,
             batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows the head receives when ``deployed`` runs on ``x`` (in eval mode, no gradients), and
    the margin of the original head's scores on them."""
    out, margins = [], []
    try:
        with torch.no_grad(), eval_mode(deployed):
            for i in range(0, len(x), batch_size):
                head.features = []
                xb = x[i:i + batch_size]
                deployed(xb)
                rows = torch.cat([f for f, _ in head.features])
                if len(rows) != len(xb):
                    raise ValueError(f"the head ran on {len(rows)} rows for {len(xb)} inputs")
                out.append(rows)
                margins.append(torch.cat([m for _, m in head.features]))
    finally:
        head.features = None
    return torch.cat(out), torch.cat(margins)
