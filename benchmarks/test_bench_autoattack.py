"""``strong`` and ``aa_standard`` against the reference AutoAttack (``pyautoattack``, standard
version), side by side in one run, on the same points and eps.

Per model: robust accuracy of each, the points broken by the reference but not by ``strong`` (the
issue's target: at most 0.2% of the points), wall time as a ratio to the reference's, and forward
and backward passes per point (counted on the model itself, every attack's queries included).
Nothing is asserted on time; the table is printed and written to ``.benchmarks/autoattack.json``.

Run with (the reference extra, models trained into the zoo cache first):
    .venv/bin/python -m pytest -q benchmarks/test_bench_autoattack.py --benchmark-only -s
Environment: RBL_AA_N (points, default 500), RBL_AA_MODELS (comma-separated zoo names, each with an
optional ``:n`` of its own, e.g. ``resnet10t-fmnist-fast_at:200``).
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_lite import data, zoo
from robustbench_lite.engine import evaluate

pyautoattack = pytest.importorskip("pyautoattack", reason="the reference extra: pip install -e '.[reference]'")

EPS = 0.1
N = int(os.environ.get("RBL_AA_N", "500"))
MODELS = os.environ.get("RBL_AA_MODELS", "smallcnn-fmnist-standard,smallcnn-fmnist-fast_at,smallcnn-fmnist-pgd_at,"
                                         "resnet10t-fmnist-fast_at:200").split(",")
RESULTS: dict[str, dict[str, dict[str, float]]] = {}


class Counted(nn.Module):
    """The model, counting the rows it runs forward and the rows whose input gradient is taken. A
    copy (the engine attacks a private copy of the model) counts into the same tally."""

    def __init__(self, model: nn.Module, tally: dict[str, int] | None = None):
        super().__init__()
        self.model = model
        self.tally = tally if tally is not None else {"forward": 0, "backward": 0}

    def __deepcopy__(self, memo: dict) -> "Counted":
        return Counted(copy.deepcopy(self.model, memo), self.tally)

    @property
    def forward_rows(self) -> int:
        return self.tally["forward"]

    @property
    def backward_rows(self) -> int:
        return self.tally["backward"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tally["forward"] += x.shape[0]
        if x.requires_grad:
            x.register_hook(self._count)
        return self.model(x)

    def _count(self, grad: torch.Tensor) -> None:
        self.tally["backward"] += grad.shape[0]


def _ours(preset: str, lm: zoo.LoadedModel, test: data.Split, n: int) -> tuple[torch.Tensor, Counted, float]:
    counted = Counted(lm.model)
    wrapped = zoo.LoadedModel(lm.name, counted, lm.dataset, lm.weights_sha256, lm.card, lm.arch, lm.source)
    start = time.perf_counter()
    r = evaluate(wrapped, test, [preset], [EPS], n=n, checks=None)[0]
    return torch.from_numpy(r.robust), counted, time.perf_counter() - start


def _reference(lm: zoo.LoadedModel, test: data.Split, n: int) -> tuple[torch.Tensor, Counted, float]:
    sub = test.first(n)
    x, y = sub.floats(), sub.labels
    counted = Counted(lm.model).eval()
    aa = pyautoattack.AutoAttack(counted, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")
    aa.verbose = False
    start = time.perf_counter()
    adv, _ = aa.run_standard_evaluation(x, y, batch_size=n)  # (x_adv, y_adv) in pyautoattack 0.2
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = (lm.model(x).argmax(1) == y) & (lm.model(adv).argmax(1) == y)
    return robust, counted, seconds


@pytest.mark.parametrize("entry", MODELS)
def test_strong_against_the_reference_autoattack(entry, benchmark):
    name, _, points = entry.partition(":")
    n = int(points) if points else N
    if not zoo.is_trained(name):
        pytest.skip(f"{name} is not trained (rbl train, or make run)")
    lm = zoo.load(name)
    test = data.load(lm.dataset, "test")
    runs: dict[str, tuple[torch.Tensor, Counted, float]] = {}
    benchmark.pedantic(lambda: runs.update(reference=_reference(lm, test, n)), rounds=1, iterations=1)
    runs["strong"] = _ours("strong", lm, test, n)
    runs["aa_standard"] = _ours("aa_standard", lm, test, n)
    ref = runs["reference"][0]
    row = {}
    for impl, (robust, counted, seconds) in runs.items():
        row[impl] = {"robust_acc": float(robust.float().mean()), "seconds": round(seconds, 1),
                     "time_ratio_to_reference": round(seconds / runs["reference"][2], 3),
                     "forward_per_point": counted.forward_rows / n, "backward_per_point": counted.backward_rows / n,
                     "broken_by_reference_only": int((robust & ~ref).sum()), "broken_only_here": int((~robust & ref).sum())}
    RESULTS[name] = {"n": n} | row
    out = Path(".benchmarks") / "autoattack.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"eps": EPS, "models": RESULTS}, indent=1) + "\n")
    print(f"\n{name} (n={n}, eps={EPS}):")
    for impl, v in row.items():
        print(f"  {impl:<12} robust {v['robust_acc']:.4f}  {v['seconds']:>7.1f}s ({v['time_ratio_to_reference']:.2f}x ref)  "
              f"fwd/pt {v['forward_per_point']:.0f}  bwd/pt {v['backward_per_point']:.0f}  "
              f"ref-only {v['broken_by_reference_only']}  only-here {v['broken_only_here']}")
