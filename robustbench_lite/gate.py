"""The CI gate: a TOML suite of models, defenses, attacks and eps with minimum clean and
robust accuracies, checked by ``rbl check SUITE.toml`` or the pytest plugin.

A suite (see ``examples/ci-suite.toml``)::

    [suite]
    name = "fmnist small CNN"
    dataset = "fmnist"         # optional: taken from the first model
    n = 500                    # first n test points
    eps = [0.05, 0.1]
    norm = "linf"
    attacks = ["fgsm", "pgd:steps=20"]
    checks = true              # gradient-masking checks; a row whose checks still fail after escalation fails the gate
    escalate = true            # climb the escalation ladder when a check fails (false: the raw number, unverified)

    [[model]]
    source = "smallcnn-fmnist-standard"    # zoo name or checkpoint path
    defenses = []                          # optional, --defense specs
    mode = "adaptive"                      # optional: adaptive (default), bpda or oblivious
    min_clean = 0.85
    min_robust = { "0.1" = 0.70 }          # per eps, or one number for every eps
    tolerance = 0.01                       # allowed shortfall; clean_tolerance / robust_tolerance override it

Every evaluation goes through the results store, so an unchanged model is not attacked again.
"""
from __future__ import annotations

import math
import os
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formatting import pct
from . import data as data_mod
from . import specs, zoo
from .checks import CheckConfig
from .defenses.base import chain
from .engine import MODES, evaluate
from .escalation import EscalationConfig
from robustbench_lite import atomic


class SuiteError(ValueError):
    """A suite file that cannot be read, naming the file, the key and what is allowed."""


@dataclass(frozen=True)
class Gate:
    source: str
    defenses: tuple[str, ...] = ()
    mode: str = "adaptive"
    min_clean: float | None = None
    min_robust: dict[float, float] = field(default_factory=dict)
    clean_tolerance: float = 0.0
    robust_tolerance: float = 0.0


@dataclass(frozen=True)
class Suite:
    name: str
    n: int
    eps: tuple[float, ...]
    attacks: tuple[str, ...]
    gates: tuple[Gate, ...]
    norm: str = "linf"
    dataset: str | None = None
    seed: int = 0
    checks: bool = True
    checks_n: int = 100
    escalate: bool = True
    path: str = ""


@dataclass(frozen=True)
class Row:
    model: str
    defense: str
    mode: str
    eps: float
    clean: float
    robust: float
    ci: tuple[float, float]
    min_clean: float | None
    min_robust: float | None
    failed_checks: tuple[str, ...]
    seconds: float
    problems: tuple[str, ...]
    escalation: tuple[str, ...] = ()  # the ladder's steps that ran, where a check failed

    @property
    def passed(self) -> bool:
        return not self.problems


def _number(where: str, value: Any, lo: float = 0.0, hi: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise SuiteError(f"{where} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def load(path: str | Path) -> Suite:
    """Read and validate a suite; every problem names the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SuiteError(f"suite {path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite {path}: not valid TOML: {exc}") from exc
    return parse(raw, str(path))


def parse(raw: dict[str, Any], where: str = "suite") -> Suite:
    known_top, known_suite = {"suite", "model"}, {"name", "dataset", "n", "eps", "norm", "attacks", "seed", "checks", "checks_n", "escalate"}
    known_model = {"source", "defenses", "mode", "min_clean", "min_robust", "tolerance", "clean_tolerance", "robust_tolerance"}

    def unknown(keys: Any, known: set[str], at: str) -> None:
        extra = sorted(set(keys) - known)
        if extra:
            raise SuiteError(f"{where}: unknown key {extra[0]!r} in {at}; allowed: {', '.join(sorted(known))}")

    unknown(raw, known_top, "the top level")
    s = raw.get("suite")
    if not isinstance(s, dict):
        raise SuiteError(f"{where}: needs a [suite] table")
    unknown(s, known_suite, "[suite]")
    for key in ("eps", "attacks"):
        if key not in s:
            raise SuiteError(f"{where}: [suite] needs {key!r}")
    eps = s["eps"] if isinstance(s["eps"], list) else [s["eps"]]
    eps_t = tuple(_number(f"{where}: [suite] eps", e, 0.0, math.inf) for e in eps)
    if not eps_t:
        raise SuiteError(f"{where}: [suite] eps must hold at least one value")
    attacks = s["attacks"] if isinstance(s["attacks"], list) else [s["attacks"]]
    if not attacks or not all(isinstance(a, str) for a in attacks):
        raise SuiteError(f"{where}: [suite] attacks must be a list of attack specs, got {s['attacks']!r}")
    for a in specs.expand(attacks):
        try:
            specs.attack(a)
        except ValueError as exc:
            raise SuiteError(f"{where}: [suite] attacks: {exc}") from exc
    n = s.get("n", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise SuiteError(f"{where}: [suite] n must be a positive integer, got {n!r}")
    norm = s.get("norm", "linf")
    if norm not in ("linf", "l2"):
        raise SuiteError(f"{where}: [suite] norm must be linf or l2, got {norm!r}")
    models = raw.get("model")
    if not isinstance(models, list) or not models:
        raise SuiteError(f"{where}: needs at least one [[model]] table")
    gates = []
    for i, m in enumerate(models, 1):
        at = f"[[model]] #{i}"
        if not isinstance(m, dict) or not isinstance(m.get("source"), str):
            raise SuiteError(f"{where}: {at} needs source = \"<zoo name or checkpoint path>\"")
        unknown(m, known_model, at)
        mode = m.get("mode", "adaptive")
        if mode not in MODES:
            raise SuiteError(f"{where}: {at} mode must be one of {', '.join(MODES)}, got {mode!r}")
        defenses = tuple(m.get("defenses", ()))
        try:
            chain(defenses)
        except ValueError as exc:
            raise SuiteError(f"{where}: {at} defenses: {exc}") from exc
        tol = _number(f"{where}: {at} tolerance", m.get("tolerance", 0.0))
        mr = m.get("min_robust", {})
        if isinstance(mr, dict):
            try:
                min_robust = {float(k): _number(f"{where}: {at} min_robust[{k}]", v) for k, v in mr.items()}
            except ValueError as exc:
                raise SuiteError(str(exc) if isinstance(exc, SuiteError) else f"{where}: {at} min_robust keys must be eps values, "
                                 f"got {list(mr)}") from exc
            missing = [e for e in min_robust if not any(abs(e - x) < 1e-12 for x in eps_t)]
            if missing:
                raise SuiteError(f"{where}: {at} min_robust names eps {missing[0]}, which is not in [suite] eps {list(eps_t)}")
        else:
            value = _number(f"{where}: {at} min_robust", mr)
            min_robust = {e: value for e in eps_t}
        gates.append(Gate(source=m["source"], defenses=defenses, mode=mode,
                          min_clean=None if m.get("min_clean") is None else _number(f"{where}: {at} min_clean", m["min_clean"]),
                          min_robust=min_robust,
                          clean_tolerance=_number(f"{where}: {at} clean_tolerance", m.get("clean_tolerance", tol)),
                          robust_tolerance=_number(f"{where}: {at} robust_tolerance", m.get("robust_tolerance", tol))))
    return Suite(name=str(s.get("name", Path(where).stem)), n=n, eps=eps_t, attacks=tuple(attacks), gates=tuple(gates),
                 norm=norm, dataset=s.get("dataset"), seed=int(s.get("seed", 0)), checks=bool(s.get("checks", True)),
                 checks_n=int(s.get("checks_n", 100)), escalate=bool(s.get("escalate", True)), path=where)


def run(suite: Suite, store: Any | None = None, data_dir: str | None = None, progress: bool = False,
        device: str | None = None) -> list[Row]:
    """Evaluate every gate at every eps (on ``device``, None the CPU) and judge it against its thresholds."""
    rows: list[Row] = []
    for g in suite.gates:
        lm = zoo.load_any(g.source)
        dataset = suite.dataset or lm.dataset
        test = data_mod.load(dataset, "test", data_dir=data_dir)
        results = evaluate(lm, test, list(suite.attacks), list(suite.eps), norm=suite.norm, n=suite.n, seed=suite.seed,
                           store=store, defense=list(g.defenses), mode=g.mode, progress=progress,
                           checks=CheckConfig(n=min(suite.checks_n, suite.n)) if suite.checks else None,
                           escalate=EscalationConfig() if suite.escalate else None, device=device or "cpu")
        for r in results:
            target = next((v for e, v in g.min_robust.items() if abs(e - r.eps) < 1e-12), None)
            problems = []
            if g.min_clean is not None and r.clean_acc < g.min_clean - g.clean_tolerance - 1e-12:
                problems.append(f"clean {r.clean_acc:.3f} < {g.min_clean} - {g.clean_tolerance}")
            if target is not None and r.robust_acc < target - g.robust_tolerance - 1e-12:
                problems.append(f"robust {r.robust_acc:.3f} < {target} - {g.robust_tolerance}")
            failed = tuple(v.name for v in r.failed_checks) if g.mode != "oblivious" else ()
            problems += [f"unverified: gradient-masking check still fails{' after escalation' if r.escalated_from else ''}: "
                         f"{name}" for name in failed]
            rows.append(Row(model=lm.name, defense=r.defense, mode=r.mode, eps=r.eps, clean=r.clean_acc, robust=r.robust_acc,
                            ci=r.robust_acc_ci, min_clean=g.min_clean, min_robust=target, failed_checks=failed,
                            seconds=r.seconds, problems=tuple(problems),
                            escalation=tuple(st["step"] for st in r.escalation if not st.get("skipped"))))
    return rows


def markdown(suite: Suite, rows: list[Row]) -> str:
    ok = all(r.passed for r in rows)
    lines = [f"### {'✅' if ok else '❌'} Accuracy under attack: {suite.name}", "",
             f"{suite.norm} threat, first {suite.n} test points, attacks: {', '.join(suite.attacks)} "
             "(robust = correct under every attack, per example).", "",
             "| model | defense | eps | clean % | min clean % | robust % (95% CI) | min robust % | checks | status |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        defense = "none" if r.defense == "none" else f"{r.defense} [{r.mode}]"
        checks = "UNVERIFIED: " + ", ".join(r.failed_checks) if r.failed_checks else "ok"
        checks += f" (escalated: {', '.join(r.escalation)})" if r.escalation else ""
        lines.append(f"| `{r.model}` | {defense} | {r.eps:g} | {pct(r.clean)} | {pct(r.min_clean)} | "
                     f"{pct(r.robust)} ({pct(r.ci[0])}–{pct(r.ci[1])}) | {pct(r.min_robust)} | {checks} | "
                     f"{'pass' if r.passed else 'FAIL: ' + '; '.join(r.problems)} |")
    return "\n".join(lines) + "\n"


def junit(suite: Suite, rows: list[Row]) -> str:
    """JUnit XML: one test case per model, defense and eps."""
    failures = sum(not r.passed for r in rows)
    ts = ET.Element("testsuite", name=suite.name, tests=str(len(rows)), failures=str(failures), errors="0",
                    time=f"{sum(r.seconds for r in rows):.3f}")
    for r in rows:
        case = ET.SubElement(ts, "testcase", classname=f"robustbench_lite.{suite.name}",
                             name=f"{r.model} [{r.defense}, {r.mode}] eps={r.eps:g}", time=f"{r.seconds:.3f}")
        ET.SubElement(case, "system-out").text = (f"clean {r.clean:.4f} (min {r.min_clean}), robust {r.robust:.4f} "
                                                  f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}] (min {r.min_robust})")
        if not r.passed:
            ET.SubElement(case, "failure", message="; ".join(r.problems), type="ThresholdFailed").text = "\n".join(r.problems)
    suites = ET.Element("testsuites")
    suites.append(ts)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def publish(suite: Suite, rows: list[Row], junit_path: Path | None = None) -> str:
    """The Markdown table; appended to $GITHUB_STEP_SUMMARY when set, JUnit XML written atomically."""

    md = markdown(suite, rows)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    if junit_path is not None:
        text = junit(suite, rows)
        atomic.write_text(Path(junit_path), text)
    return md


__all__ = ["Gate", "Row", "Suite", "SuiteError", "load", "markdown", "junit", "parse", "publish", "run"]
