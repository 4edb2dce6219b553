"""Benchmark profiles: which zoo models, attacks, eps grid and subset ``rbl run`` evaluates."""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import data as data_mod
from . import zoo
from .cell import worst_case_config
from .checks import CheckConfig
from .engine import EvalResult, cell_keys, combine, escalate
from .executors import Executor, Failed, LocalExecutor, Plugin, Progress, Task, execute
from .store import Store
from .train import TrainConfig, train
from .zoo import LoadedModel
from . import devices
from .plugins import load_all
from . import bundle
from robustbench_lite.reporting import galleries, leaderboard
from robustbench_lite.reporting import site
from robustbench_lite import atomic
from .provenance import commit, machine, now, versions

_log = logging.getLogger(__name__)

EPS_GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)  # REFERENCES.md, Fashion-MNIST L-inf
HEADLINE_EPS = 0.1


@dataclass(frozen=True)
class Profile:
    name: str
    models: tuple[str, ...]
    attacks: tuple[str, ...]
    eps: tuple[float, ...] = EPS_GRID
    n: int = 1000
    norm: str = "linf"
    dataset: str = "fmnist"
    checks: bool = True  # run the gradient-masking checks (once per model, with the first attack); escalate on a failure
    headline: float = HEADLINE_EPS  # the eps the leaderboard ranks at

    def select(self, models: Sequence[str] | None = None, eps: Sequence[float] | None = None) -> "Profile":
        """The same profile restricted to the models matching any of the ``models`` globs (in
        profile order, so static models come before the recipes that need them), at ``eps``."""
        chosen = self.models
        if models:
            chosen = tuple(m for m in self.models if any(fnmatch.fnmatchcase(m, g) for g in models))
            if not chosen:
                raise ValueError(f"no model of profile {self.name!r} matches {' '.join(models)}; "
                                 f"allowed: {', '.join(self.models)}")
        return dataclasses.replace(self, models=chosen, eps=tuple(eps) if eps else self.eps)


ARCHS = ("smallcnn", "resnet10t", "mobilenetv3_small_050", "vit_tiny_p7")
QUICK_ARCHS = ("smallcnn", "test_resnet", "test_efficientnet", "test_byobnet", "test_convnext", "test_vit")


def _zoo(archs: tuple[str, ...], recipes: tuple[str, ...], dataset: str = "fmnist") -> tuple[str, ...]:
    return tuple(zoo.zoo_name(a, dataset, r) for a in archs for r in recipes)


#: CIFAR-10's standard protocols (REFERENCES.md; RobustBench's two boards): L-inf 8/255 and L2 0.5,
#: each on a grid around it. Adversarial recipes train at 8/255 there (recipes.base.STANDARD_EPS).
CIFAR_LINF = (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
CIFAR_L2 = (0.0, 0.25, 0.5, 1.0)
CIFAR_ARCHS = ("test_resnet", "test_efficientnet", "test_convnext", "test_vit", "resnet10t")


PROFILES = {
    "quick": Profile(
        "quick",
        # The small CNN and five of timm's families at test size (ResNet, EfficientNet, BYOBNet,
        # ConvNeXt, ViT): small enough to ship with the published board (reports/zoo, 0.4-1.5 MB
        # per model) and to evaluate in minutes on two cores.
        models=_zoo(QUICK_ARCHS, ("standard", "fast_at")),
        attacks=("fgsm", "bim", "pgd", "illc"),
        n=500,  # what `make run` evaluates, training included (its wall time: README)
    ),
    "full": Profile(
        "full",
        models=_zoo(ARCHS, ("standard", "fast_at", "pgd_at", "trades")) + _zoo(("smallcnn",), ("fgsm_at", "ensemble_at")),
        attacks=("fgsm", "bim", "pgd:steps=50,restarts=5", "illc"),
        n=10000,
    ),
}


PROFILES |= {
    # What trains in minutes on two cores when CIFAR-10 is on the machine: two timm families.
    "cifar10-quick": Profile("cifar10-quick", models=_zoo(("test_resnet", "test_convnext"), ("standard", "fast_at"), "cifar10"),
                             attacks=("fgsm", "bim", "pgd", "illc"), eps=CIFAR_LINF, n=500, dataset="cifar10",
                             headline=8 / 255),
    "cifar10": Profile("cifar10", models=_zoo(CIFAR_ARCHS, ("standard", "fast_at", "pgd_at", "trades"), "cifar10"),
                       attacks=("fgsm", "bim", "pgd:steps=50,restarts=5", "apgd_ce"), eps=CIFAR_LINF, n=10000,
                       dataset="cifar10", headline=8 / 255),
    "cifar10-l2": Profile("cifar10-l2", models=_zoo(CIFAR_ARCHS, ("standard", "fast_at", "pgd_at", "trades"), "cifar10"),
                          attacks=("pgd:steps=50,restarts=5", "apgd_ce"), eps=CIFAR_L2, n=10000, norm="l2",
                          dataset="cifar10", headline=0.5),
}


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class Grid:
    """What a profile run produced: every result (cells and worst cases) and every failed task."""

    results: list[EvalResult]
    failures: list[Failed]


class GridError(RuntimeError):
    """Some cells of a grid failed; the others are stored."""


def tasks(profile: Profile, models: dict[str, LoadedModel], test: data_mod.Split, device: str = "cpu") -> list[Task]:
    """The grid as tasks: one per (model, attack), over every eps, with the store keys of its cells."""
    out = []
    for name in profile.models:
        for i, attack in enumerate(profile.attacks):
            keys = cell_keys(models[name], test, [attack], profile.eps, norm=profile.norm, n=profile.n, device=device)
            # The masking checks describe the model, not an attack: one run, with the first attack.
            out.append(Task(name, attack, profile.eps, profile.norm, profile.n, checks=profile.checks and i == 0, keys=tuple(keys),
                            check_attacks=profile.attacks, device=device))
    return out


def run_grid(profile: Profile, store: Store, *, data_dir: str | None = None, progress: bool = False,
             on_model: Callable[[str], Any] | None = None, executor: Executor | None = None,
             plugins: Sequence[str | Path] = (), on_progress: Callable[[Progress, Any], Any] | None = None,
             zoo_dir: str | Path | None = None, device: str | None = None) -> Grid:
    """Train what is missing (here, one model after another), evaluate every (model, attack, eps)
    cell with ``executor`` (default: in this process), then store the per-example worst case
    over the attacks. Cells already in the store are read, not recomputed; a (model, eps) with a
    failed attack gets no worst case (it would overstate robustness).

    With ``zoo_dir`` (a bundle, :mod:`robustbench_lite.bundle`) the models are the bundle's,
    verified, and nothing is trained or read from the cache. ``device`` (``auto``, ``cpu``,
    ``cuda[:N]``, ``mps``; None is the CPU) is where models train and cells run."""

    device = str(devices.resolve(device or "cpu"))

    load_all([str(p) for p in plugins])  # here, for planning and the local executor; shipped by content to Ray
    shipped = None
    if zoo_dir is not None:

        shipped = bundle.read(Path(zoo_dir))
        held = [e.name for e in shipped.models("zoo")]
        missing = [m for m in profile.models if m not in held]
        if missing:
            raise bundle.BundleError(f"the bundle {zoo_dir} lacks {', '.join(missing)} of profile {profile.name!r}; "
                                     f"it holds {', '.join(held) or 'no zoo model'} "
                                     f"(select with --models, or run without --zoo to train)")
    test = data_mod.load(profile.dataset, "test", data_dir=data_dir)
    models: dict[str, LoadedModel] = {}
    for name in profile.models:
        if on_model:
            on_model(name)
        if shipped is not None:
            models[name] = dataclasses.replace(zoo.load_checkpoint(shipped.model_dir(name)), source=name)
            continue
        arch, dataset, recipe = zoo.parse_name(name)
        if not zoo.is_trained(name) and not zoo.fetchable(name):
            _log.info("training %s", name)
            train(TrainConfig(arch=arch, dataset=dataset, recipe=recipe), data_dir=data_dir, progress=progress, device=device)
        models[name] = zoo.load(name)
    grid = tasks(profile, models, test, device)
    cells, failures = execute(grid, store, executor or LocalExecutor(), models, test,
                              plugins=[Plugin.read(p) for p in plugins], on_progress=on_progress)
    by_key = {r.key: r for r in cells}
    results: list[EvalResult] = []
    for name in profile.models:
        columns = [t for t in grid if t.model == name]
        for i in range(len(profile.eps)):
            row = [by_key.get(t.keys[i]) for t in columns]
            results += [r for r in row if r is not None]
            if all(r is not None for r in row):
                worst = combine(row)
                store.put(worst, worst_case_config(worst.combined_from))
                worst = store.get(worst.key) or worst
                results.append(worst)
                # A failed check escalates the row's worst case, the number that is ranked.
                if profile.checks and any(v.passed is False for v in worst.checks):
                    results.append(escalate(worst, models[name], test, store=store, checks=CheckConfig(attacks=profile.attacks),
                                            device=device))
    return Grid(results, failures)


def run(profile: Profile, store: Store, **kw: Any) -> list[EvalResult]:
    """:func:`run_grid`'s results; raises :class:`GridError` naming the failed tasks, if any."""
    grid = run_grid(profile, store, **kw)
    if grid.failures:
        raise GridError(f"{len(grid.failures)} task(s) failed: "
                        + "; ".join(f"{f.task.label}: {f.error}" for f in grid.failures))
    return grid.results


def write_reports(store: Store, out: Path, headline_eps: float = HEADLINE_EPS) -> list[Path]:
    """The leaderboard from the store, the training curves of every trained zoo model it ranks,
    and the figures of every experiment whose artifacts the store holds."""


    frame = leaderboard.frame(store)
    ranked = set(frame.get("model", ()))
    # Cards as they were when the model was evaluated, matched by weights: never the cache's
    # current file under the same name (a retrained model has other weights).
    shown = set(zip(frame["model_name"], frame["weights_sha256"])) if ranked else set()
    cards = [c for c in store.cards() if (c.name, c.weights_sha256) in shown]
    written = leaderboard.write_all(store, out, headline_eps=headline_eps, cards=cards) if ranked else []
    if ranked and not leaderboard.table(store, headline_eps).empty:
        tex = site.latex(store, headline_eps)
        leaderboard.atomic.write_text(Path(out) / "leaderboard.tex", tex)
        written.append(Path(out) / "leaderboard.tex")
        written += site.write_robustbench(store, Path(out) / "robustbench", headline_eps)
        # The site draws the galleries itself, into its experiments/ folder; write_all drew the plots.
        written += site.write_site(store, out, headline_eps, plotted=True)
    else:
        written += galleries.write_all(store, out)
    return written + [write_manifest(store, Path(out))]


def write_manifest(store: Store, out: Path) -> Path:
    """``manifest.json`` in a report folder: what produced it (the commit, the library versions, the
    machine) and every stored cell behind it (key, model and weights, attacks, eps, n, robust
    accuracy), so that a reader can tell what the figures rest on and ``rbl verify`` them."""
    import json
    import os



    cells = [{"key": r.key, "model": r.model, "weights_sha256": r.weights_sha256, "defense": r.defense, "mode": r.mode,
              "attacks": list(r.attacks), "norm": r.norm, "eps": r.eps, "n": r.n, "clean_acc": r.clean_acc,
              "robust_acc": r.robust_acc, "combined_from": list(r.combined_from),
              "checks_failed": [v.name for v in r.failed_checks], "verified": r.verified,
              "escalated_from": r.escalated_from or None,
              "escalation": [s["step"] for s in r.escalation if not s.get("skipped")]} for r in store.results()]
    manifest = {"written": now(), "store": os.path.relpath(store.path, out), **commit(), "versions": versions(), "machine": machine(),
                "models": [{k: m[k] for k in ("name", "weights_sha256", "source")} | {"arch": m["identity"]["arch"],
                                                                                    "arch_sha256": m["identity"]["arch_sha256"]}
                           for m in store.models()],
                "cells": cells, "legacy_cells": len(store.legacy())}
    path = out / "manifest.json"
    text = json.dumps(manifest, indent=1) + "\n"
    atomic.write_text(path, text)
    return path
