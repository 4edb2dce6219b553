"""The training loop shared by every recipe: seeded, with a one-cycle schedule, a progress
bar and a model card written atomically beside the safetensors weights."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import data as data_mod
from . import zoo
from .engine import predict, versions
from .registry import MODELS, RECIPES

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the loop; arch-specific defaults come from the arch's registration."""

    arch: str
    dataset: str = "fmnist"
    recipe: str = "standard"
    recipe_kw: tuple[tuple[str, Any], ...] = ()
    epochs: int | None = None
    lr: float | None = None
    batch_size: int = 128
    weight_decay: float = 5e-4
    seed: int = 0
    train_subset: int | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.train_subset is not None and (not isinstance(self.train_subset, int) or self.train_subset < 1):
            raise ValueError(f"train_subset must be an integer >= 1, got {self.train_subset!r}")
        if self.dataset not in data_mod.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; allowed: {', '.join(data_mod.DATASETS)}")
        if not self.arch.startswith("timm:"):
            MODELS.get(self.arch)
        try:
            RECIPES.create(self.recipe, **dict(self.recipe_kw))
        except TypeError as exc:
            raise ValueError(f"bad arguments {dict(self.recipe_kw)} for recipe {self.recipe!r}: {exc}") from exc

    def resolved(self) -> "TrainConfig":
        meta = {} if self.arch.startswith("timm:") else MODELS.get(self.arch).meta
        return dataclasses.replace(self, epochs=self.epochs or meta.get("epochs", 5), lr=self.lr or meta.get("lr", 1e-3))


def train(config: TrainConfig, *, out: Path | None = None, data_dir: str | None = None,
          pretrained: str | None = None, progress: bool = False) -> zoo.ModelCard:
    """Train ``config.arch`` on ``config.dataset`` with ``config.recipe`` and save a checkpoint.

    Args:
        config: the hyperparameters.
        out: checkpoint folder; defaults to the zoo entry ``<arch>-<dataset>-<recipe>``.
        data_dir: searched first for the dataset.
        pretrained: local weights file to initialise a timm architecture from.
        progress: show a progress bar with loss and accuracy.

    Returns:
        The saved :class:`~robustbench_lite.zoo.ModelCard`.
    """
    cfg = config.resolved()
    info = data_mod.DATASETS[cfg.dataset]
    train_split = data_mod.load(cfg.dataset, "train", data_dir=data_dir)
    if cfg.train_subset:
        train_split = train_split.first(min(cfg.train_subset, len(train_split)))
    test_split = data_mod.load(cfg.dataset, "test", data_dir=data_dir)
    recipe = RECIPES.create(cfg.recipe, **dict(cfg.recipe_kw))

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = zoo.build(cfg.arch, info, pretrained=pretrained)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps_per_epoch))
    x_all, y_all = train_split.floats(), train_split.labels
    start = time.perf_counter()
    curves = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(train_split), generator=gen)
        tot_loss = tot_correct = seen = 0
        bar = tqdm(perm.split(cfg.batch_size), desc=f"{cfg.arch} {cfg.recipe} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for i, idx in enumerate(bar):
            x, y = x_all[idx], y_all[idx]
            loss, logits = recipe.loss(model, x, y, gen, (epoch + i / steps_per_epoch) / cfg.epochs)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
            tot_correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_correct / seen:.3f}")
        test_acc = _accuracy(model, test_split.first(min(1000, len(test_split))))
        curves.append({"epoch": epoch + 1, "loss": tot_loss / seen, "train_acc": tot_correct / seen, "test_acc_1k": test_acc})
        _log.info("%s epoch %d: loss %.4f train acc %.4f test acc (1k) %.4f", cfg.arch, epoch + 1,
                  tot_loss / seen, tot_correct / seen, test_acc)
    model.eval()
    clean = _accuracy(model, test_split)
    name = zoo.zoo_name(cfg.arch, cfg.dataset, cfg.recipe)
    hyper = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("arch", "dataset", "recipe", "seed", "recipe_kw")}
    hyper |= {"optimizer": "AdamW", "schedule": "linear warm-up 25%, cosine decay", "recipe": recipe.config()}
    if pretrained:
        hyper["pretrained"] = os.path.basename(str(pretrained))
    card = zoo.ModelCard(
        name=name, arch=cfg.arch, dataset=cfg.dataset, recipe=cfg.recipe, hyperparameters=hyper, seed=cfg.seed,
        data_sha256=train_split.sha256(), clean_acc=clean, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        versions=versions(), train_seconds=round(time.perf_counter() - start, 2), curves=curves,
    )
    return zoo.save(model, card, out or zoo.checkpoint_dir(name))


def warmup_cosine(total: int, warmup_frac: float = 0.25):
    """LR multiplier: linear warm-up over the first quarter, then cosine to zero (a one-cycle
    shape that, unlike OneCycleLR, is defined for any number of steps)."""
    warmup = max(1, int(warmup_frac * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def _accuracy(model: torch.nn.Module, split: data_mod.Split) -> float:
    return float((predict(model, split.floats()).argmax(1) == split.labels).float().mean())
