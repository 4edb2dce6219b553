"""Shared fixtures for the speed benchmarks, and the summary that turns times into ratios.

The machine has two cores that other processes may share, so absolute times mean little.
What the benchmarks deliver is each implementation's throughput relative to a plain torch
loop: ``ratio = baseline median time / implementation median time`` (> 1 is faster).
Each timed round is paired with a baseline run right before or after it (alternating;
untimed, in pytest-benchmark's ``setup``/``teardown``), so both medians come from the
same stretch of machine load; the plain loop paired with itself shows the noise floor. The ratios are printed after pytest-benchmark's table and written to
``.benchmarks/ratios.json`` (gitignored). Nothing here asserts on time.

Run with:
    .venv/bin/python -m pytest -q benchmarks --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=min,median,max,rounds
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

# Before any robustbench_lite import: a benchmark must never reach the network.
os.environ["RBL_NO_DOWNLOAD"] = "1"

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite import data, zoo
from robustbench_lite.threat import Threat

EPS = 0.1
BATCH = 256
MEMORY_BATCH = 1000
BASELINE = "plain"

# (group, implementation, compared with, minimum throughput ratio). Reported as met or
# missed, never asserted: time on a shared machine is evidence, not a pass/fail check.
TARGETS = (
    ("pgd10", "ours", "plain", 0.95),
    ("pgd10", "ours", "torchattacks", 1.0),
    ("fgsm", "ours", "plain", 0.95),
    ("fgsm", "ours", "torchattacks", 1.0),
)


@pytest.fixture(scope="session")
def threat() -> Threat:
    return Threat("linf", EPS)


@pytest.fixture(scope="session")
def model() -> nn.Module:
    """A standard (not adversarially) trained small CNN: 2 epochs of Adam on 10k images.

    A trained model matters: an untrained one is fooled at the first step, which would
    make early stopping look free and hide the cost of the full loop.
    """
    train = data.load("fmnist", "train").first(10_000)
    images, labels = train.floats(), train.labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = zoo.build("smallcnn", data.DATASETS["fmnist"])
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        net.train()
        for _ in range(2):
            order = torch.randperm(len(labels))
            for i in range(0, len(labels), 256):
                idx = order[i:i + 256]
                loss = F.cross_entropy(net(images[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval()


def _test_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    split = data.load("fmnist", "test").first(n)
    return split.floats(), split.labels


@pytest.fixture(scope="session")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _test_batch(BATCH)


@pytest.fixture(scope="session")
def memory_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _test_batch(MEMORY_BATCH)


@pytest.fixture(scope="session")
def clean_accuracy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = batch
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    # Below this the model is not the "standard trained model" the figures claim to be.
    if acc < 0.7:
        pytest.fail(f"the benchmark model trained to only {acc:.3f} clean accuracy on the batch (expected >= 0.7)")
    return acc


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _collect(config: pytest.Config) -> dict[str, dict[str, dict[str, Any]]]:
    """Per group, per implementation: its times, its paired baseline times and extra info."""
    # pytest-benchmark keeps one Metadata per benchmark here (see its plugin.benchmark fixture).
    session = getattr(config, "_benchmarksession", None)
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for bench in getattr(session, "benchmarks", None) or []:
        if not bench or bench.has_error or not bench.extra_info.get("baseline_s"):
            continue
        info = dict(bench.extra_info)
        impl = info.pop("impl", bench.name)
        baseline_s = info.pop("baseline_s")
        times = list(bench.stats.data)
        groups.setdefault(bench.group or "", {})[impl] = {
            "median_s": bench.stats.median,
            "min_s": bench.stats.min,
            "rounds": bench.stats.rounds,
            "baseline_median_s": _median(baseline_s),
            "baseline_min_s": min(baseline_s),
            "ratio": _median(baseline_s) / bench.stats.median,
            "ratio_min": min(baseline_s) / bench.stats.min,
            "ratio_paired_median": _median([b / t for b, t in zip(baseline_s, times)]),
            **info,
        }
    return groups


def _ratios(groups: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"groups": groups, "targets": []}
    for group, impl, other, target in TARGETS:
        rows = groups.get(group, {})
        if impl not in rows or other not in rows:
            continue
        r = {k: rows[impl][k] for k in ("ratio", "ratio_min", "ratio_paired_median")}
        if other != BASELINE:
            # Both were measured against their own plain-loop pairs: dividing the two ratios
            # cancels the load each of them ran under.
            r = {k: v / rows[other][k] for k, v in r.items()}
        out["targets"].append({"group": group, "impl": impl, "vs": other, "target": target, **r,
                               "met": r["ratio"] >= target})
    pgd = groups.get("pgd10", {})
    if "ours" in pgd and "ours_early_stop" in pgd:
        out["early_stop_speedup"] = pgd["ours_early_stop"]["ratio"] / pgd["ours"]["ratio"]
        out["early_stop_speedup_paired"] = (pgd["ours_early_stop"]["ratio_paired_median"]
                                            / pgd["ours"]["ratio_paired_median"])
    mem = groups.get("pgd10-mem", {})
    if BASELINE in mem and "ours" in mem:
        out["peak_alloc_ours_vs_plain"] = mem["ours"]["peak_alloc_mib"] / mem[BASELINE]["peak_alloc_mib"]
    return out


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    groups = _collect(config)
    if not groups:
        return
    result = _ratios(groups)
    tr = terminalreporter
    tr.write_sep("-", "throughput / plain torch loop, paired by round (>1 is faster)")
    tr.write_line(f"  {'':<16} {'median':>9} {'plain':>9} {'ratio':>7} {'by min':>7} {'paired':>7}")
    for group, rows in groups.items():
        tr.write_line(f"{group}:")
        for impl, r in rows.items():
            extra = f"   peak alloc {r['peak_alloc_mib']:.1f} MiB" if "peak_alloc_mib" in r else ""
            tr.write_line(f"  {impl:<16} {r['median_s'] * 1e3:7.1f}ms {r['baseline_median_s'] * 1e3:7.1f}ms"
                          f" {r['ratio']:6.2f}x {r['ratio_min']:6.2f}x {r['ratio_paired_median']:6.2f}x{extra}")
    for t in result["targets"]:
        tr.write_line(f"target {t['group']}: {t['impl']} >= {t['target']:.2f}x {t['vs']}: {t['ratio']:.2f}x "
                      f"(by min {t['ratio_min']:.2f}x, paired {t['ratio_paired_median']:.2f}x) "
                      f"{'met' if t['met'] else 'MISSED'}")
    for group, rows in groups.items():
        if BASELINE in rows:
            tr.write_line(f"noise floor {group}: the plain loop against its own pairs lands at "
                          f"{rows[BASELINE]['ratio']:.2f}x (paired {rows[BASELINE]['ratio_paired_median']:.2f}x); "
                          "differences this size are not evidence")
    if "early_stop_speedup" in result:
        tr.write_line(f"early-stop speed-up of our PGD-10 on the standard model: {result['early_stop_speedup']:.2f}x "
                      f"(paired {result['early_stop_speedup_paired']:.2f}x)")
    if "peak_alloc_ours_vs_plain" in result:
        tr.write_line(f"peak allocator memory of PGD-10 at batch {MEMORY_BATCH}, ours / plain: "
                      f"{result['peak_alloc_ours_vs_plain']:.3f}x")
    result["meta"] = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "batch": BATCH,
        "memory_batch": MEMORY_BATCH,
        "eps": EPS,
    }
    path = Path(config.rootpath) / ".benchmarks" / "ratios.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    tr.write_line(f"ratios written to {path}")
