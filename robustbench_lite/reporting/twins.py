"""Architecture twins: each ``<arch>_denoise`` model (Xie et al. 2019) against its plain
``<arch>`` trained with the same recipe, on the same test points under the same attacks, with
the paired difference of their robust accuracies and its 95% interval."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustbench_lite.engine import EvalResult
from robustbench_lite.stats import paired_difference
from robustbench_lite.store import Store

from .. import atomic
from ..formatting import labels

SUFFIX = "_denoise"


def _worst_case(cells: list[EvalResult], n: int) -> np.ndarray:
    """Per point of the first n, robust under every attack cell given (the per-example worst case)."""
    return np.logical_and.reduce([c.robust[:n] for c in cells])


def twins(store: Store, eps: float = 0.1, norm: str = "linf") -> pd.DataFrame:
    """One row per (denoising model, plain twin) pair with undefended cells at ``eps``: the
    attacks both were evaluated with, the common points, both robust accuracies and
    denoise - plain with Newcombe's paired interval. Cells on different test data never pair."""
    cells = [r for r in store.results() if r.defense == "none" and r.norm == norm and abs(r.eps - eps) < 1e-9]
    shown = labels((r.model, r.weights_sha256) for r in cells)
    by_model: dict[str, list[EvalResult]] = {}
    for r in cells:
        by_model.setdefault(shown[(r.model, r.weights_sha256)], []).append(r)
    rows: list[dict[str, Any]] = []
    for model, mine in by_model.items():
        arch = mine[0].arch
        if not arch.endswith(SUFFIX):
            continue
        for twin, theirs in by_model.items():
            t = theirs[0]
            if (t.arch, t.recipe, t.dataset) != (arch.removesuffix(SUFFIX), mine[0].recipe, mine[0].dataset):
                continue
            data = {r.data_sha256 for r in mine} & {r.data_sha256 for r in theirs}
            attacks = {r.attacks for r in mine if r.data_sha256 in data} & {r.attacks for r in theirs if r.data_sha256 in data}
            if not attacks:
                continue
            a = [r for r in mine if r.attacks in attacks and r.data_sha256 in data]
            b = [r for r in theirs if r.attacks in attacks and r.data_sha256 in data]
            n = min(r.n for r in a + b)
            ra, rb = _worst_case(a, n), _worst_case(b, n)
            d, low, high = paired_difference(ra, rb)
            rows.append({"model": model, "twin": twin, "recipe": t.recipe, "dataset": t.dataset, "eps": eps, "n": n,
                         "attacks": " + ".join(sorted({s for k in attacks for s in k})),
                         "robust_acc": float(ra.mean()), "twin_robust_acc": float(rb.mean()),
                         "difference": d, "difference_ci_low": low, "difference_ci_high": high})
    return pd.DataFrame(rows)


def markdown(store: Store, eps: float = 0.1) -> str | None:
    t = twins(store, eps)
    if t.empty:
        return None
    lines = [f"# Denoising blocks against their plain twins (L-inf eps {eps:g})", "",
             "Same recipe and budget, same test points, per-example worst case over the attacks both were evaluated with. "
             "Difference: denoise - plain robust accuracy, with Newcombe's paired 95% interval "
             "(it excludes 0 only where the blocks measurably help or hurt).", "",
             "| model | plain twin | recipe | n | attacks | robust % | twin robust % | difference (points, 95% CI) |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for _, r in t.iterrows():
        lines.append(f"| {r['model']} | {r['twin']} | {r['recipe']} | {r['n']} | {r['attacks']} | {100 * r['robust_acc']:.1f} | "
                     f"{100 * r['twin_robust_acc']:.1f} | {100 * r['difference']:+.1f} ({100 * r['difference_ci_low']:+.1f} to "
                     f"{100 * r['difference_ci_high']:+.1f}) |")
    return "\n".join(lines) + "\n"


def write(store: Store, path: Path, eps: float = 0.1) -> Path | None:
    text = markdown(store, eps)
    if text is None:
        return None
    atomic.write_text(path, text)
    return path
