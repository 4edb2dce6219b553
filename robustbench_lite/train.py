"""The training loop shared by every recipe: seeded and resumable, with a learning-rate schedule,
a progress bar, per-epoch clean and PGD curves, a catastrophic-overfitting guard, and a model
card written atomically beside the safetensors weights."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
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
from .attack import check_int
from .registry import ATTACKS, MODELS, RECIPES
from .threat import Threat

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
    batch_size: int | None = None
    weight_decay: float = 5e-4
    seed: int = 0
    train_subset: int | None = None
    schedule: str | None = None
    monitor_n: int = 500

    def __post_init__(self) -> None:
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.train_subset is not None and (not isinstance(self.train_subset, int) or self.train_subset < 1):
            raise ValueError(f"train_subset must be an integer >= 1, got {self.train_subset!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        check_int("train", "monitor_n", self.monitor_n, 1)
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
        # An arch may register per-recipe defaults (adversarial training converges slower).
        per_recipe = meta.get("recipes", {}).get(self.recipe, {})
        return dataclasses.replace(self, epochs=self.epochs or per_recipe.get("epochs") or meta.get("epochs", 5),
                                   lr=self.lr or per_recipe.get("lr") or meta.get("lr", 1e-3),
                                   batch_size=self.batch_size or per_recipe.get("batch_size") or 128)


def train(config: TrainConfig, *, out: Path | None = None, data_dir: str | None = None,
          pretrained: str | None = None, progress: bool = False, resume: bool = True,
          train_split: data_mod.Split | None = None) -> zoo.ModelCard:
    """Train ``config.arch`` on ``config.dataset`` with ``config.recipe`` and save a checkpoint.

    After every epoch the loop measures clean accuracy and PGD-10 accuracy (at the recipe's
    eps) on fixed subsets of the training and test sets, stores them as the card's curves, asks
    the recipe whether training has collapsed, and writes ``resume.pt`` into the checkpoint
    folder, so that a killed run resumes from its last finished epoch.

    Args:
        config: the hyperparameters.
        out: checkpoint folder; defaults to the zoo entry ``<arch>-<dataset>-<recipe>``.
        data_dir: searched first for the dataset.
        pretrained: local weights file to initialise a timm architecture from.
        progress: show a progress bar with loss, clean and adversarial accuracy.
        resume: continue from ``out/resume.pt`` when one exists (False starts afresh).
        train_split: train on these images and labels instead of the dataset's training split
            (a synthesized set: ``rbl experiment nonrobust``); its sha256 is in the card.

    Returns:
        The saved :class:`~robustbench_lite.zoo.ModelCard`.
    """
    cfg = config.resolved()
    info = data_mod.DATASETS[cfg.dataset]
    if train_split is None:
        train_split = data_mod.load(cfg.dataset, "train", data_dir=data_dir)
    elif train_split.dataset != cfg.dataset:
        raise ValueError(f"train_split is from {train_split.dataset!r}, the config's dataset is {cfg.dataset!r}")
    if cfg.train_subset:
        train_split = train_split.first(min(cfg.train_subset, len(train_split)))
    test_split = data_mod.load(cfg.dataset, "test", data_dir=data_dir)
    recipe = RECIPES.create(cfg.recipe, **dict(cfg.recipe_kw))
    recipe.prepare(cfg.dataset)
    name = zoo.zoo_name(cfg.arch, cfg.dataset, cfg.recipe)
    out = Path(out or zoo.checkpoint_dir(name))
    identity = _identity(cfg, recipe, train_split, pretrained)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = zoo.build(cfg.arch, info, pretrained=pretrained)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULES[cfg.schedule or recipe.schedule](cfg.epochs * steps_per_epoch))
    state = _State(curves=[], notes=[])
    if resume:
        state = _load_resume(out / RESUME, identity, model, opt, sched, gen) or state
    monitor = _Monitor(train_split.first(min(cfg.monitor_n, len(train_split))),
                       test_split.first(min(cfg.monitor_n, len(test_split))), recipe.monitor_eps, cfg.seed)
    x_all, y_all = train_split.floats(), train_split.labels
    start = time.perf_counter() - state.seconds
    for epoch in range(len(state.curves), cfg.epochs):
        epoch_start = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train_split), generator=gen)
        sums = {"loss": 0.0, "clean": 0, "clean_n": 0, "adv": 0, "adv_n": 0, "n": 0}
        bar = tqdm(perm.split(cfg.batch_size), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for i, idx in enumerate(bar):
            x, y = x_all[idx], y_all[idx]
            step = recipe.loss(model, x, y, gen, (epoch + i / steps_per_epoch) / cfg.epochs)
            if not torch.isfinite(step.loss):
                raise FloatingPointError(f"training loss became {step.loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            step.loss.backward()
            opt.step()
            sched.step()
            _accumulate(sums, step, y)
            bar.set_postfix(_postfix(sums), refresh=False)
        running = {"train_acc": _ratio(sums, "clean"), "train_adv_acc": _ratio(sums, "adv")}
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": sums["loss"] / sums["n"],
               **{k: v for k, v in running.items() if v is not None},
               "seconds": round(time.perf_counter() - epoch_start, 2), **monitor(model)}
        state.curves.append(row)
        _log.info("%s epoch %d: %s", name, epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        if state.best is None or row["pgd_acc_train"] > state.best[1]:
            state.best = (epoch + 1, row["pgd_acc_train"], {k: v.detach().clone() for k, v in model.state_dict().items()})
        reason = recipe.collapsed(state.curves)
        if reason:
            note = f"stopped after epoch {epoch + 1}: {reason}; kept the weights of epoch {state.best[0]}"
            _log.warning("%s: %s", name, note)
            state.notes.append(note)
            model.load_state_dict(state.best[2])
            break
        state.seconds = time.perf_counter() - start
        _save_resume(out / RESUME, identity, state, model, opt, sched, gen)
    model.eval()
    clean = _accuracy(model, test_split)
    hyper = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("arch", "dataset", "recipe", "seed", "recipe_kw")}
    hyper |= {"optimizer": "AdamW", "schedule": cfg.schedule or recipe.schedule, "recipe": recipe.config()}
    if pretrained:
        hyper["pretrained"] = os.path.basename(str(pretrained))
    card = zoo.ModelCard(
        name=name, arch=cfg.arch, dataset=cfg.dataset, recipe=cfg.recipe, hyperparameters=hyper, seed=cfg.seed,
        data_sha256=train_split.sha256(), clean_acc=clean, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        versions=versions(), train_seconds=round(time.perf_counter() - start, 2), curves=state.curves, notes=state.notes,
    )
    return zoo.save(model, card, out)  # replaces the folder, resume.pt included


RESUME = "resume.pt"


@dataclasses.dataclass
class _State:
    curves: list[dict[str, float]]
    notes: list[str]
    seconds: float = 0.0
    best: tuple[int, float, dict[str, torch.Tensor]] | None = None  # (epoch, PGD train accuracy, weights)


def _identity(cfg: TrainConfig, recipe: Any, split: data_mod.Split, pretrained: str | None) -> dict[str, Any]:
    """What a resume file must match: resuming someone else's run would mix two trainings."""
    def canon(obj: Any) -> str:
        return json.dumps(obj, sort_keys=True, default=str)

    return {"config": canon(dataclasses.asdict(cfg)), "recipe": canon(recipe.config()),
            "data_sha256": split.sha256(), "pretrained": os.path.basename(str(pretrained or ""))}


def _save_resume(path: Path, identity: dict[str, Any], state: _State, model: torch.nn.Module,
                 opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"identity": identity, "curves": json.dumps(state.curves), "notes": json.dumps(state.notes),
            "seconds": state.seconds, "best": state.best, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)  # a kill mid-write leaves the previous epoch's file intact
    finally:
        tmp.unlink(missing_ok=True)


def _load_resume(path: Path, identity: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                 sched: Any, gen: torch.Generator) -> _State | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise zoo.CheckpointError(f"{path}: unreadable resume checkpoint ({exc}); delete it or pass --no-resume") from exc
    if not isinstance(blob, dict) or blob.get("identity") != identity:
        theirs = blob.get("identity", {}) if isinstance(blob, dict) else {}
        diff = sorted(k for k in identity if theirs.get(k) != identity[k]) or ["format"]
        raise zoo.CheckpointError(f"{path}: resume checkpoint is from a different run (differs in {', '.join(diff)}); "
                                  "delete it or pass --no-resume")
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["opt"])
    sched.load_state_dict(blob["sched"])
    gen.set_state(blob["gen"])
    torch.set_rng_state(blob["torch_rng"])
    state = _State(curves=json.loads(blob["curves"]), notes=json.loads(blob["notes"]), seconds=float(blob["seconds"]),
                   best=blob["best"])
    _log.info("resuming %s after epoch %d", path.parent.name, len(state.curves))
    return state


class _Monitor:
    """Clean, FGSM and PGD-10 accuracy on fixed subsets, once per epoch: the training curves, and
    the signals of catastrophic overfitting (Wong 2020): PGD accuracy on training points
    collapsing, or FGSM accuracy far above PGD accuracy (a masked gradient)."""

    def __init__(self, train: data_mod.Split, test: data_mod.Split, eps: float, seed: int) -> None:
        self.sets = {"train": (train.floats(), train.labels), "test": (test.floats(), test.labels)}
        self.threat = Threat("linf", eps)
        self.seed = seed

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        attacks = {"fgsm": ATTACKS.create("fgsm"), "pgd": ATTACKS.create("pgd", steps=10, step_size=2.5 * self.threat.eps / 10)}
        row = {}
        for part, (x, y) in self.sets.items():
            row[f"clean_acc_{part}"] = _accuracy_of(model, x, y)
            for name, attack in attacks.items():
                x_adv = attack(model, x, y, self.threat, generator=torch.Generator().manual_seed(self.seed))
                row[f"{name}_acc_{part}"] = _accuracy_of(model, x_adv, y)
        return row


def _accumulate(sums: dict[str, float], step: Any, y: torch.Tensor) -> None:
    sums["loss"] += step.loss.item() * len(y)
    sums["n"] += len(y)
    for key, logits in (("clean", step.clean_logits), ("adv", step.adv_logits)):
        if logits is not None:
            sums[key] += int((logits.argmax(1) == y).sum())
            sums[f"{key}_n"] += len(y)


def _ratio(sums: dict[str, float], key: str) -> float | None:
    return sums[key] / sums[f"{key}_n"] if sums[f"{key}_n"] else None


def _postfix(sums: dict[str, float]) -> dict[str, str]:
    shown = {"loss": f"{sums['loss'] / sums['n']:.3f}"}
    for key in ("clean", "adv"):
        value = _ratio(sums, key)
        if value is not None:
            shown[f"{key}_acc"] = f"{value:.3f}"
    return shown


def warmup_cosine(total: int, warmup_frac: float = 0.25):
    """LR multiplier: linear warm-up over the first quarter, then cosine to zero (a one-cycle
    shape that, unlike OneCycleLR, is defined for any number of steps)."""
    warmup = max(1, int(warmup_frac * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def cyclic(total: int, peak_frac: float = 0.4):
    """LR multiplier of fast adversarial training (Wong 2020): linear from 0 up to the peak at
    ``peak_frac`` of training, then linear back down to 0."""
    peak = max(1, int(peak_frac * total))

    def factor(step: int) -> float:
        if step < peak:
            return (step + 1) / peak
        return max(0.0, 1 - (step - peak) / max(1, total - peak))

    return factor


#: Learning-rate schedules by name: each maps the total number of steps to a multiplier function.
SCHEDULES = {"warmup_cosine": warmup_cosine, "cyclic": cyclic}


def _accuracy(model: torch.nn.Module, split: data_mod.Split) -> float:
    return _accuracy_of(model, split.floats(), split.labels)


def _accuracy_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x).argmax(1) == y).float().mean())
