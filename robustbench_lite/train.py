"""The training loop shared by every recipe: seeded and resumable, with a learning-rate schedule,
a progress bar, per-epoch clean and PGD curves, a catastrophic-overfitting guard, and a model
card written atomically beside the safetensors weights."""
from __future__ import annotations

import contextlib
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
from . import atomic, devices, zoo
from .inference import predict
from .provenance import versions
from .validation import check_int
from .registry import ATTACKS, MODELS, RECIPES
from .threat import Threat
from .recipes.base import STANDARD_EPS
from .engine import state_sha256

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
    precision: str = "fp32"

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
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.dataset not in data_mod.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; allowed: {', '.join(data_mod.DATASETS)}")
        if not self.arch.startswith(("timm:", "tv:")):
            MODELS.get(self.arch)
        try:
            RECIPES.create(self.recipe, **dict(self.recipe_kw))
        except TypeError as exc:
            raise ValueError(f"bad arguments {dict(self.recipe_kw)} for recipe {self.recipe!r}: {exc}") from exc

    def resolved(self) -> "TrainConfig":
        meta = {} if self.arch.startswith(("timm:", "tv:")) else MODELS.get(self.arch).meta
        # An arch may register per-recipe defaults (adversarial training converges slower).
        per_recipe = meta.get("recipes", {}).get(self.recipe, {})
        return dataclasses.replace(self, recipe_kw=self._dataset_eps(),
                                   epochs=self.epochs or per_recipe.get("epochs") or meta.get("epochs", 5),
                                   lr=self.lr or per_recipe.get("lr") or meta.get("lr", 1e-3),
                                   batch_size=self.batch_size or per_recipe.get("batch_size") or 128)

    def _dataset_eps(self) -> tuple[tuple[str, Any], ...]:
        """The recipe's arguments, with the dataset's standard eps (``STANDARD_EPS``: 8/255 on
        CIFAR-10) where the recipe has an eps, none was given, and its default is another."""

        kw = dict(self.recipe_kw)
        default = {f.name: f.default for f in dataclasses.fields(RECIPES.get(self.recipe).obj)}.get("eps")
        standard = STANDARD_EPS.get(self.dataset)
        if "eps" not in kw and isinstance(default, float) and standard is not None and default != standard:
            kw["eps"] = standard
        return tuple(sorted(kw.items()))


def train(config: TrainConfig, *, out: Path | None = None, data_dir: str | None = None,
          pretrained: str | None = None, progress: bool = False, resume: bool = True,
          train_split: data_mod.Split | None = None, device: str | torch.device | None = None) -> zoo.ModelCard:
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
        device: where to train (``auto``, ``cpu``, ``cuda[:N]``, ``mps``; None is the CPU). In a
            distributed run on CUDA each rank takes the GPU of its local rank. The device type
            is in the card's hyperparameters, and the weights are saved from the CPU.

    ``config.precision`` ``bf16`` or ``fp16`` runs the forward passes (the recipe's attacks
    included) under autocast, fp16 with a gradient scaler; the weights stay float32.

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

    dev = devices.resolve(device or "cpu")
    dist = Distributed.from_env(dev)
    dev = dist.device(dev)
    devices.deterministic(dev)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # cpu: the data order, the same on every device
    # Seed policy: every rank draws the data order from the same seed (so the ranks agree on
    # each global batch) on the CPU, whatever the device; a recipe's own randomness (random
    # starts, ...) comes from a per-rank stream on the device. A single process on the CPU keeps
    # one stream for both, as it always has.
    rgen = gen if dist.world == 1 and dev.type == "cpu" else devices.generator(cfg.seed + 1_000_003 * dist.rank, dev)
    model = zoo.build(cfg.arch, info, pretrained=pretrained).to(dev)
    net = dist.wrap(model, dev)
    amp = _Precision(cfg.precision, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULES[cfg.schedule or recipe.schedule](cfg.epochs * steps_per_epoch))
    state = _State(curves=[], notes=[])
    if resume:
        state = _load_resume(out / RESUME, identity, model, opt, sched, gen, rgen, amp) or state
    monitor = _Monitor(train_split.first(min(cfg.monitor_n, len(train_split))),
                       test_split.first(min(cfg.monitor_n, len(test_split))), recipe.monitor_eps(cfg.dataset), cfg.seed, dev)
    on_device = train_split.to(dev)
    x_all, y_all = on_device.floats(), on_device.labels
    start = time.perf_counter() - state.seconds
    for epoch in range(len(state.curves), cfg.epochs):
        epoch_start = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train_split), generator=gen).to(dev)  # cpu: see gen
        sums = {"loss": 0.0, "clean": 0, "clean_n": 0, "adv": 0, "adv_n": 0, "n": 0}
        bar = tqdm(perm.split(cfg.batch_size), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress or dist.rank != 0, leave=False)
        for i, idx in enumerate(bar):
            shard, share = dist.shard(idx)
            x, y = x_all[shard], y_all[shard]
            with amp.autocast():
                step = recipe.loss(net, x, y, rgen, (epoch + i / steps_per_epoch) / cfg.epochs)
            if not torch.isfinite(step.loss):
                raise FloatingPointError(f"training loss became {step.loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighting each rank's mean by its share of the
            # global batch makes that average the gradient of the global batch's mean loss.
            amp.backward(step.loss * dist.weight(share, len(idx)))
            amp.step(opt)
            sched.step()
            if share:
                _accumulate(sums, step, y)
            bar.set_postfix(_postfix(sums), refresh=False)
        sums = dist.sum(sums)
        running = {"train_acc": _ratio(sums, "clean"), "train_adv_acc": _ratio(sums, "adv")}
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": sums["loss"] / sums["n"],
               **{k: v for k, v in running.items() if v is not None},
               "seconds": round(time.perf_counter() - epoch_start, 2), **dist.from_rank0(lambda: monitor(model))}
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
        if dist.rank == 0:
            _save_resume(out / RESUME, identity, state, model, opt, sched, gen, rgen, amp)
    model.eval()
    hyper = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("arch", "dataset", "recipe", "seed", "recipe_kw")}
    hyper |= {"optimizer": "AdamW", "schedule": cfg.schedule or recipe.schedule, "recipe": recipe.config()}
    if pretrained:
        hyper["pretrained"] = os.path.basename(str(pretrained))
    hyper["device"] = dev.type
    if dist.world > 1:
        hyper["distributed"] = dist.describe(model)
    if dist.rank != 0:  # rank 0 alone writes the checkpoint; the others return its card
        dist.barrier()
        return zoo.ModelCard.from_json(out / zoo.CARD)
    clean = _accuracy(model, test_split)
    card = zoo.ModelCard(
        name=name, arch=cfg.arch, dataset=cfg.dataset, recipe=cfg.recipe, hyperparameters=hyper, seed=cfg.seed,
        data_sha256=train_split.sha256(), clean_acc=clean, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        versions=versions(), train_seconds=round(time.perf_counter() - start, 2), curves=state.curves, notes=state.notes,
    )
    try:
        return zoo.save(model.cpu(), card, out)  # replaces the folder, resume.pt included
    finally:
        dist.barrier()


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
                 opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator, rgen: torch.Generator,
                 amp: "_Precision") -> None:
    blob = {"identity": identity, "curves": json.dumps(state.curves), "notes": json.dumps(state.notes),
            "seconds": state.seconds, "best": state.best, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state()}
    if rgen is not gen:  # the recipe's own stream, on the device
        blob["rgen"] = rgen.get_state().cpu()
    if amp.scaler is not None:
        blob["scaler"] = amp.scaler.state_dict()
    atomic.write(path, lambda tmp: torch.save(blob, tmp))  # a kill mid-write leaves the previous epoch's file intact


def _load_resume(path: Path, identity: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                 sched: Any, gen: torch.Generator, rgen: torch.Generator, amp: "_Precision") -> _State | None:
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
    if rgen is not gen and "rgen" in blob:
        rgen.set_state(blob["rgen"])
    if amp.scaler is not None and "scaler" in blob:
        amp.scaler.load_state_dict(blob["scaler"])
    best = blob["best"]
    if best is not None:  # read onto the CPU (map_location): the kept weights go where the model is
        best = (best[0], best[1], {k: v.to(devices.of(model)) for k, v in best[2].items()})
    state = _State(curves=json.loads(blob["curves"]), notes=json.loads(blob["notes"]), seconds=float(blob["seconds"]),
                   best=best)
    _log.info("resuming %s after epoch %d", path.parent.name, len(state.curves))
    return state


class _Monitor:
    """Clean, FGSM and PGD-10 accuracy on fixed subsets, once per epoch: the training curves, and
    the signals of catastrophic overfitting (Wong 2020): PGD accuracy on training points
    collapsing, or FGSM accuracy far above PGD accuracy (a masked gradient)."""

    def __init__(self, train: data_mod.Split, test: data_mod.Split, eps: float, seed: int,
                 device: torch.device = torch.device("cpu")) -> None:
        self.sets = {part: (s.floats(), s.labels) for part, s in (("train", train.to(device)), ("test", test.to(device)))}
        self.device = device
        self.threat = Threat("linf", eps)
        self.seed = seed

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        attacks = {"fgsm": ATTACKS.create("fgsm"), "pgd": ATTACKS.create("pgd", steps=10, step_size=2.5 * self.threat.eps / 10)}
        row = {}
        for part, (x, y) in self.sets.items():
            row[f"clean_acc_{part}"] = _accuracy_of(model, x, y)
            for name, attack in attacks.items():
                x_adv = attack(model, x, y, self.threat, generator=devices.generator(self.seed, self.device))
                row[f"{name}_acc_{part}"] = _accuracy_of(model, x_adv, y)
        return row


#: Training precisions: float32, or autocast to bfloat16 or float16 (with a gradient scaler).
PRECISIONS = ("fp32", "bf16", "fp16")


class _Precision:
    """The loop's precision: the forward passes under autocast in bf16 or fp16, the weights and
    the optimizer in float32; fp16 scales the loss so that small gradients do not underflow
    (and skips a step whose gradients overflowed). fp32 is the plain loop."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> Any:
        return contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)
        self.scaler.update()


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
    split = split.to(devices.of(model))
    return _accuracy_of(model, split.floats(), split.labels)


def _accuracy_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x).argmax(1) == y).float().mean())


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel training run (``rbl train --nproc N`` or
    ``torchrun``): rank 0 of 1 when not distributed, and then every method is a no-op.

    Each global batch (the same ``batch_size`` as a single process) is split into contiguous
    per-rank shards; DistributedDataParallel averages the gradients, so N processes take the
    same steps as one process would, up to floating-point summation order. On CUDA the ranks
    talk over nccl, each on the GPU of its local rank, and batch norm becomes SyncBatchNorm
    (statistics over the global batch); on the CPU they talk over gloo and a model with batch
    norm normalizes each shard with its own statistics (SyncBatchNorm needs GPUs).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: torch.device = torch.device("cpu")) -> "Distributed":
        """Join the process group torchrun describes in the environment (nccl for a CUDA device,
        else gloo), or the one the caller already initialized."""
        import torch.distributed as td

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if td.is_available() and td.is_initialized():
            return cls(td.get_rank(), td.get_world_size(), local)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not td.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if device.type == "cuda":
            torch.cuda.set_device(local)
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(td.get_rank(), td.get_world_size(), local)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: the GPU of its local rank in a distributed CUDA run."""
        return torch.device("cuda", self.local_rank) if self.world > 1 and device.type == "cuda" else device

    def wrap(self, model: torch.nn.Module, device: torch.device = torch.device("cpu")) -> torch.nn.Module:
        """The model as the loop calls it: itself alone, else DistributedDataParallel. On CUDA its
        batch norm layers are first swapped, in place, for SyncBatchNorm layers that take over
        their parameters and buffers: the state dict (what is saved) keeps its keys."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            return DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(model),
                                           device_ids=[device.index])
        return DistributedDataParallel(model)

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This rank's part of a global batch and how many of its points count. A rank left
        without points (a last batch smaller than the world) runs one point at weight 0, so
        that every rank still joins the gradient all-reduce."""
        if self.world == 1:
            return idx, len(idx)
        part = idx.tensor_split(self.world)[self.rank]
        return (part, len(part)) if len(part) else (idx[:1], 0)

    def weight(self, local: int, total: int) -> float:
        return self.world * local / total

    def sum(self, sums: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return sums
        import torch.distributed as td

        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64,
                         device="cuda" if td.get_backend() == "nccl" else "cpu")
        td.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def from_rank0(self, fn: Any) -> Any:
        """``fn()`` computed on rank 0 only and sent to every rank (the per-epoch monitor)."""
        if self.world == 1:
            return fn()
        import torch.distributed as td

        box = [fn() if self.rank == 0 else None]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        """The run's layout for the model card, after checking that every rank ended with the
        same weights (DDP keeps them in step; a divergence would be a bug worth stopping on)."""
        import torch.distributed as td


        digests: list[Any] = [None] * self.world
        td.all_gather_object(digests, state_sha256(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the {self.world} ranks ended with different weights: {digests}")
        return {"world_size": self.world, "backend": td.get_backend(), "rank_weights_sha256": digests}
