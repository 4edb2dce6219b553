"""Robust and non-robust features: "Adversarial Examples Are Not Bugs, They Are Features",
Ilyas, Santurkar, Tsipras, Engstrom, Tran and Madry 2019, arXiv:1905.02175 (Sections 3.1-3.2).

Two training sets are synthesized from the first ``n`` training images, and a fresh model of
``arch`` is trained on each with the standard recipe, then tested on the *original* test set:

- the deterministic non-robust set D_det: x is moved by a targeted PGD of size ``eps`` on the
  standard model towards t = (y + 1) mod 10 and relabeled t. To a human every image is
  mislabeled; what links image and new label is the standard model's non-robust features
  (test accuracy above chance: they generalize) and, through the fixed permutation, the
  robust features of y (which predict y + 1 on the test set: below chance);
- D_rand, the same with t drawn uniformly from the other classes: the robust features then say
  nothing about t, and only the non-robust ones can carry the model to the test set;
- the robustified set D_R: an image whose representation under the robust model (the input
  of its classifier head, see :func:`representation`) matches that of x, synthesized from a
  random other training image (or from noise) by gradient descent on the pixels, labeled y.
  It keeps only what the robust model sees, and a standard model trained on it comes out more
  robust than one trained on the original images.

A third model trained on the same n original images is the baseline.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustbench_lite import devices, stats, zoo
from robustbench_lite.params import choice, integer, positive, real, value
from robustbench_lite.validation import check_choice
from robustbench_lite.inference import eval_mode
from robustbench_lite.data import DATASETS, Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.inference import predictions
from robustbench_lite.registry import ATTACKS, EXPERIMENTS, MODELS
from robustbench_lite.threat import NORMS, Threat
from robustbench_lite.train import TrainConfig, train as fit
from robustbench_lite.zoo import LoadedModel

STARTS = ("image", "noise")
EXAMPLES = 10


LAYERS = ("head", "penultimate")


def representation(model: nn.Module, x: torch.Tensor, layer: str = "penultimate") -> torch.Tensor:
    """The input of the model's last linear layer (``penultimate``: its representation before
    the logits) or of its first one (``head``: what a CNN's convolutional trunk hands its
    classifier head), caught by a forward hook, so that any zoo or timm classifier works.

    In a ResNet, whose head is one linear layer, the two are the same. The small CNN's head is
    two linear layers (fc100, fc10): its penultimate layer is a 100-dimensional bottleneck,
    while ``head`` is the 1568-dimensional trunk output that the ResNet's penultimate layer
    corresponds to. (On a transformer the first linear layer sits inside attention: use
    ``penultimate`` there.)"""
    check_choice(representation.__name__, "layer", layer, LAYERS)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer whose input is the representation")
    caught: list[torch.Tensor] = []
    hook = linears[0 if layer == "head" else -1].register_forward_hook(lambda _m, inp, _out: caught.append(inp[0].flatten(1)))
    try:
        model(x)
    finally:
        hook.remove()
    return caught[-1]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image (anisotropic TV)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1))


def robustify(model: nn.Module, x: torch.Tensor, start: torch.Tensor, *, steps: int, lr: float,
              tv: float = 0.0, layer: str = "penultimate") -> tuple[torch.Tensor, torch.Tensor]:
    """min over x_r in [0, 1] of ||g(x_r) - g(x)|| / ||g(x)|| + tv * TV(x_r) from ``start``
    (g: ``model``'s :func:`representation` at ``layer``; Ilyas 2019, Section 3.1), by Adam on
    the pixels with step ``lr``, clipped to [0, 1] after each step.

    Departures from the paper, each chosen on smallcnn-fmnist-pgd_at (README, "Robust
    architectures and non-robust features"): its normalized gradient descent (fixed L2 steps) converges slowly here,
    hence Adam; Adam alone (tv=0) paints per-pixel texture that a model trained on the set learns
    as a non-robust feature, hence the total-variation prior of feature inversion (Mahendran &
    Vedaldi 2015); and on the small CNN the matched layer is the trunk's output (``layer="head"``
    matches closer and smoother).
    Returns (x_r, relative feature distance ||g(x_r) - g(x)|| / ||g(x)|| per image)."""
    with torch.no_grad():
        goal = representation(model, x, layer)
        scale = goal.norm(dim=1).clamp_min(1e-12)
    xr = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([xr], lr=lr)
    for _ in range(steps):
        loss = ((representation(model, xr, layer) - goal).norm(dim=1) / scale + tv * total_variation(xr)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            xr.clamp_(0, 1)
    with torch.no_grad():
        rel = (representation(model, xr, layer) - goal).norm(dim=1) / scale
    return xr.detach(), rel


def relabel(model: nn.Module, x: torch.Tensor, t: torch.Tensor, threat: Threat, *, steps: int, classes: int,
            generator: torch.Generator, dataset: str, name: str) -> Split:
    """Each image moved by a targeted PGD (``steps`` steps, no early stop, so the target is
    reached with confidence) on ``model`` towards its t, and labeled t (D_det and D_rand)."""
    pgd = ATTACKS.create("pgd", steps=steps, target="next", early_stop=False)  # aimed at t as the "next" class of t - 1
    adv = torch.cat([pgd(model, xb, (tb - 1) % classes, threat, generator=generator)
                     for xb, tb in zip(x.split(500), t.split(500), strict=True)])
    return Split(dataset, name, _uint8(adv), t)


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round().clamp(0, 255).to(torch.uint8)


def _architecture(method: str, field: str, arch: str) -> None:
    MODELS.get(arch)  # raises, listing the architectures, on an unknown one


@EXPERIMENTS.register("nonrobust")
@dataclass(frozen=True, kw_only=True)
class NonRobust(Experiment):
    """Builds D_det and D_rand from the first model given (a standard one) and D_R from the
    second (an adversarially trained one), trains a fresh ``arch`` on each and on the original
    images, and
    reports each fresh model's clean accuracy on the original test set and its PGD accuracy at
    ``eval_eps``, with Wilson 95% intervals, and its PGD accuracy at eval_eps / 4 and / 2 (a
    short robustness curve: at 0.1 every standard-trained model may be near 0).

    D_R's synthesis is :func:`robustify`, matching the robust model's :func:`representation`
    at ``layer``.

    Example:
        >>> rbl experiment nonrobust --models smallcnn-fmnist-standard smallcnn-fmnist-pgd_at
    """

    n: int = integer(60000, "training images each set is built from; the default is all of Fashion-MNIST's, as the "
                            "paper uses all of CIFAR-10's, and with far fewer D_det's model falls below chance", lo=2)
    norm: str = choice("linf", "norm of the targeted PGD that builds D_det and D_rand", NORMS)
    eps: float = real(0.1, "radius of the targeted PGD that builds D_det and D_rand", lo=0, hi=1)
    steps: int = integer(50, "steps of the targeted PGD, with no early stop, so the target class is reached with "
                             "confidence", lo=1)
    synth_steps: int = integer(300, "Adam steps of D_R's synthesis", lo=1)
    synth_lr: float = positive(0.01, "Adam step size of D_R's synthesis")
    tv: float = real(0.3, "total-variation weight of D_R's synthesis", lo=0, hi=100)
    layer: str = choice("head", "the layer of the robust model whose representation D_R matches; head is the "
                                "trunk's output", LAYERS)
    start: str = choice("image", "where D_R's synthesis starts: a random other training image, or noise from U[0, 1]",
                        STARTS)
    arch: str = value("smallcnn", "architecture of the fresh models", check=_architecture,
                      allowed="a registered model architecture")
    epochs: int = integer(10, "training epochs of the fresh models, with the standard recipe", lo=1)
    eval_n: int = integer(1000, "test points the fresh models are scored on", lo=1)
    eval_eps: float = real(0.1, "L-inf radius of the PGD that scores them", lo=0, hi=1)
    eval_steps: int = integer(20, "steps of the PGD that scores them", lo=1)

    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        if len(models) != 2:
            raise ValueError(f"nonrobust: give two models, a standard one (D_det) then a robust one (D_R), "
                             f"got {len(models)}: {', '.join(m.name for m in models)}")
        standard, robust = models
        sub = train.first(min(self.n, len(train)))
        x, y = sub.floats(), sub.labels
        gen = devices.generator(seed, x.device)
        classes = DATASETS[train.dataset].num_classes

        # D_det and D_rand: targeted PGD towards t = y + 1, or towards a random t != y, relabeled t.
        targets = {"deterministic": (y + 1) % classes,
                   "random": (y + torch.randint(1, classes, y.shape, generator=gen, device=y.device)) % classes}
        relabeled = {name: relabel(standard.model, x, t, Threat(self.norm, self.eps), steps=self.steps, classes=classes,
                                   generator=gen, dataset=train.dataset, name=f"nonrobust-{name}")
                     for name, t in targets.items()}

        # D_R: match the robust model's representation, labeled y.
        if self.start == "image":
            shift = int(torch.randint(1, len(x), (1,), generator=gen, device=x.device))  # a derangement: never x itself
            start = x.roll(shift, dims=0)
        else:
            start = torch.rand(x.shape, generator=gen, device=x.device)
        with eval_mode(robust.model):
            parts = [robustify(robust.model, xb, sb, steps=self.synth_steps, lr=self.synth_lr, tv=self.tv,
                               layer=self.layer)
                     for xb, sb in zip(x.split(500), start.split(500), strict=True)]
        rob, rel = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        rob_split = Split(train.dataset, "nonrobust-robustified", _uint8(rob), y)

        sets = {"original": sub, **relabeled, "robustified": rob_split}
        evals = test.first(min(self.eval_n, len(test)))
        xt, yt = evals.floats(), evals.labels
        det_robust = predictions(robust.model, relabeled["deterministic"].floats())
        metrics: dict = {
            "n": len(x), "standard_model": standard.name, "robust_model": robust.name,
            "det_attack": f"targeted pgd:steps={self.steps},early_stop=False at {self.norm} {self.eps}",
            "det_read_as_target": float((predictions(standard.model, relabeled["deterministic"].floats())
                                         == targets["deterministic"]).float().mean()),
            "rand_read_as_target": float((predictions(standard.model, relabeled["random"].floats())
                                          == targets["random"]).float().mean()),
            # What a robust model sees in D_det: mostly still the original class y (the robust
            # features survive the perturbation), rarely the new label t.
            "det_robust_reads_original": float((det_robust == y).float().mean()),
            "det_robust_reads_target": float((det_robust == targets["deterministic"]).float().mean()),
            "det_distance_median": float(Threat(self.norm, self.eps).distance(relabeled["deterministic"].floats(), x).median()),
            "robustified_layer": self.layer,
            "robustified_feature_distance_median": float(rel.median()),
            "robustified_read_by_robust_model": float((predictions(robust.model, rob_split.floats()) == y).float().mean()),
            "eval": f"pgd:steps={self.eval_steps} at linf {self.eval_eps} on the first {len(xt)} test points",
            "sets": {},
        }
        curves: dict[str, dict[str, torch.Tensor]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, split) in enumerate(sets.items()):
                card = fit(TrainConfig(arch=self.arch, dataset=train.dataset, epochs=self.epochs, seed=seed + i),
                           out=Path(tmp) / name, train_split=split, resume=False, device=xt.device)
                lm = zoo.load_checkpoint(Path(tmp) / name)
                lm.model.to(xt.device)
                clean = predictions(lm.model, xt) == yt
                curve = {}
                for eps in (self.eval_eps / 4, self.eval_eps / 2, self.eval_eps):
                    adv = ATTACKS.create("pgd", steps=self.eval_steps)(lm.model, xt, yt, Threat("linf", eps), generator=gen)
                    curve[f"{eps:g}"] = clean & (predictions(lm.model, adv) == yt)
                robust_ok = curves.setdefault(name, curve)[f"{self.eval_eps:g}"]
                metrics["sets"][name] = {
                    "clean_acc": float(clean.float().mean()), "clean_ci": stats.wilson(int(clean.sum()), len(yt)),
                    "robust_acc": float(robust_ok.float().mean()), "robust_ci": stats.wilson(int(robust_ok.sum()), len(yt)),
                    "robust_curve": {k: float(v.float().mean()) for k, v in curve.items()},
                    "train_acc": card.curves[-1].get("train_acc"), "train_seconds": card.train_seconds,
                }
        # The robustness D_R's model gains, point by point on the same test points: the difference
        # of PGD accuracies with Newcombe's paired 95% interval, at each eps of the curve.
        metrics["robustified_minus_original"] = {
            e: list(stats.paired_difference(curves["robustified"][e].cpu().numpy(), ok.cpu().numpy())) for e, ok in curves["original"].items()}
        pick = torch.cat([(y == c).nonzero()[:1].squeeze(1) for c in range(classes)])[:EXAMPLES]
        tensors = {"originals": x[pick], "labels": y[pick], "robustified": rob_split.floats()[pick], "starts": start[pick]}
        for name, split in relabeled.items():
            tensors |= {name: split.images[pick].float() / 255, f"{name}_labels": split.labels[pick]}
        return [Outcome(f"{standard.name}+{robust.name}", metrics, tensors)]
