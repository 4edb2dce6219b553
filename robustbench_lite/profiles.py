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
from .checks import CheckConfig
from .engine import EvalResult, combine, evaluate
from .store import Store
from .train import TrainConfig, train

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


def _zoo(archs: tuple[str, ...], recipes: tuple[str, ...], dataset: str = "fmnist") -> tuple[str, ...]:
    return tuple(zoo.zoo_name(a, dataset, r) for a in archs for r in recipes)


PROFILES = {
    "quick": Profile(
        "quick",
        models=_zoo(("smallcnn", "resnet10t"), ("standard", "fast_at")),
        attacks=("fgsm", "bim", "pgd", "illc"),
        n=500,  # make run, training included: 917 s on 2 cores from a clean clone (2026-11-28)
    ),
    "full": Profile(
        "full",
        models=_zoo(ARCHS, ("standard", "fast_at", "pgd_at", "trades")) + _zoo(("smallcnn",), ("fgsm_at", "ensemble_at")),
        attacks=("fgsm", "bim", "pgd:steps=50,restarts=5", "illc"),
        n=10000,
    ),
}


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return PROFILES[name]


def run(profile: Profile, store: Store, *, data_dir: str | None = None, progress: bool = False,
        on_model: Callable[[str], Any] | None = None) -> list[EvalResult]:
    """Train what is missing, evaluate every (model, attack, eps) cell, then the per-example
    worst case over the attacks. Cells already in the store are read, not recomputed."""
    test = data_mod.load(profile.dataset, "test", data_dir=data_dir)
    results: list[EvalResult] = []
    for name in profile.models:
        if on_model:
            on_model(name)
        arch, dataset, recipe = zoo.parse_name(name)
        if not zoo.is_trained(name):
            _log.info("training %s", name)
            train(TrainConfig(arch=arch, dataset=dataset, recipe=recipe), data_dir=data_dir, progress=progress)
        model = zoo.load(name)
        # The masking checks describe the model, not an attack: one run, with the first attack.
        per_attack = [evaluate(model, test, [a], profile.eps, norm=profile.norm, n=profile.n, store=store,
                               progress=progress, checks=CheckConfig() if i == 0 else None)
                      for i, a in enumerate(profile.attacks)]
        for cells in zip(*per_attack, strict=True):
            results += cells
            worst = combine(cells)
            store.put(worst, {"combined_from": sorted(c.key for c in cells)})
            results.append(worst)
    return results


def write_reports(store: Store, out: Path, headline_eps: float = HEADLINE_EPS) -> list[Path]:
    """The leaderboard from the store, the training curves of every trained zoo model it ranks,
    and the figures of every experiment whose artifacts the store holds."""
    from reports import galleries, leaderboard

    from reports import site

    ranked = set(leaderboard.frame(store).get("model", ()))
    cards = [zoo.load_card(name) for name in zoo.trained() if name in ranked]
    written = leaderboard.write_all(store, out, headline_eps=headline_eps, cards=cards) if ranked else []
    if ranked and not leaderboard.table(store, headline_eps).empty:
        tex = site.latex(store, headline_eps)
        leaderboard._atomic(Path(out) / "leaderboard.tex", lambda p: Path(p).write_text(tex))
        written.append(Path(out) / "leaderboard.tex")
        written += site.write_robustbench(store, Path(out) / "robustbench", headline_eps)
        # The site draws the galleries itself, into its experiments/ folder; write_all drew the plots.
        return written + site.write_site(store, out, headline_eps, plotted=True)
    return written + galleries.write_all(store, out)
