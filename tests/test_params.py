"""Hyperparameters are declared once (robustbench_lite.params): the field carries its default,
bounds and doc; validation, the ``Args:`` docs and ``rbl list --json`` all come from it."""
from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from robustbench_lite import params
from robustbench_lite.attacks.base import Attack
from robustbench_lite.cli import main
from robustbench_lite.registry import ATTACKS, DEFENSES, EXPERIMENTS, RECIPES
from robustbench_lite.threat import Threat

ROOT = Path(__file__).resolve().parents[1] / "robustbench_lite"
METHOD_PACKAGES = ("attacks", "defenses", "experiments", "recipes")
REGISTRIES = {"attacks": ATTACKS, "defenses": DEFENSES, "experiments": EXPERIMENTS, "recipes": RECIPES}


def registered() -> list[tuple[str, str, type]]:
    return [(kind, name, reg.get(name).obj) for kind, reg in REGISTRIES.items() for name in reg.names()
            if isinstance(reg.get(name).obj, type)]


@pytest.mark.parametrize("kind,name,cls", registered(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_of_a_registered_method_is_declared_once(kind, name, cls):
    assert issubclass(cls, params.Validated), f"{kind} {name} does not build on params.Validated"
    assert cls.registered_as == name
    undeclared = [f.name for f in dataclasses.fields(cls) if f.init and "rbl_param" not in f.metadata]
    assert not undeclared, f"{kind} {name}: fields without a params declaration: {undeclared}"
    declared = params.params(cls)
    doc = cls.__doc__ or ""
    if declared:
        assert doc.count("Args:") == 1, f"{kind} {name}: its Args: section is written by hand as well as generated"
        for f, p in declared:
            assert f"{f.name}: {p.doc}" in doc and p.doc.strip(), f"{kind} {name}.{f.name} has no doc in Args:"


def _literal_named_checks(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("check_")
                and node.func.id != "check_batch" and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            out.append(f"{path.parent.name}/{path.name}:{node.lineno} {node.func.id}({node.args[0].value!r}, ...)")
    return out


def test_no_method_repeats_its_registered_name_in_a_check():
    found = [hit for pkg in METHOD_PACKAGES for path in sorted((ROOT / pkg).glob("*.py"))
             for hit in _literal_named_checks(path)]
    assert not found, "validate fields with robustbench_lite.params instead:\n" + "\n".join(found)


def test_the_literal_check_scan_sees_one(tmp_path):
    bad = tmp_path / "attacks" / "probe.py"
    bad.parent.mkdir()
    bad.write_text('def f(x, method):\n    check_int("pgd", "steps", x, 1)\n    check_int(method, "steps", x, 1)\n')
    assert _literal_named_checks(bad) == ["attacks/probe.py:2 check_int('pgd', ...)"]


@dataclass(frozen=True, kw_only=True)
class _Probe(Attack):
    """A probe attack (not registered).

    Returns:
        x.
    """

    steps: int = params.integer(3, "iterations", lo=1, hi=9)
    size: float | None = params.positive(None, "a step")
    mode: str = params.choice("a", "a mode", ("a", "b"))
    early: bool = params.flag(True, "stop early")
    share: float = params.real(0.5, "a share", lo=0, hi=1, interval="[)")
    tag: tuple[int, ...] = params.value((), "free form", factory=tuple)

    def validate(self, method: str) -> None:
        if self.mode == "b" and self.size is None:
            raise ValueError(f"{method}: mode 'b' needs a size")

    def run(self, model, x, y, threat, generator):
        raise AssertionError("eps 0 never reaches run")


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), r"_probe: steps must be an integer in \[1, 9\], got 0"),
    (dict(steps=2.0), r"_probe: steps must be an integer in \[1, 9\], got 2.0"),
    (dict(size=-1.0), r"_probe: size must be a finite number > 0, got -1.0"),
    (dict(mode="c"), r"_probe: mode must be one of a, b, got 'c'"),
    (dict(early="yes"), r"_probe: early must be true or false, got 'yes'"),
    (dict(share=1.0), r"_probe: share must be a number in \[0, 1\), got 1.0"),
    (dict(mode="b"), r"_probe: mode 'b' needs a size"),
])
def test_declared_bounds_are_enforced_with_the_method_and_field_named(kw, match):
    with pytest.raises(ValueError, match=match):
        _Probe(**kw)
    ok = _Probe(mode="b", size=0.1)
    assert ok.tag == () and ok.share == 0.5


def test_a_registered_method_is_named_as_registered():
    with pytest.raises(ValueError, match=r"^pgd: steps must be an integer >= 1, got 0$"):
        ATTACKS.create("pgd", steps=0)


def test_docs_and_list_json_come_from_the_declaration(capsys):
    doc = _Probe.__doc__
    params.document(_Probe)
    assert _Probe.__doc__.index("Args:") < _Probe.__doc__.index("Returns:")
    assert "steps: iterations (integer in [1, 9], default 3)." in _Probe.__doc__
    _Probe.__doc__ = doc
    assert main(["list", "attacks", "--json"]) == 0
    pgd = next(item for item in json.loads(capsys.readouterr().out) if item["name"] == "pgd")
    fields = {f.name: f.default for f in dataclasses.fields(ATTACKS.get("pgd").obj)}
    assert {h["name"]: h["default"] for h in pgd["hyperparameters"]} == fields
    steps = next(h for h in pgd["hyperparameters"] if h["name"] == "steps")
    assert steps == {"name": "steps", "kind": "int", "default": 50, "allowed": "integer >= 1",
                     "doc": "iterations per restart"}


def test_eps_zero_returns_the_input_before_any_attack_runs():
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    out = _Probe()(torch.nn.Flatten(), x, y, Threat("linf", 0.0))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
