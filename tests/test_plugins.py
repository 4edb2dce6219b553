"""One-file plugins (--plugin FILE), entry-point plugins, and `rbl conformance` on them."""
from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from robustbench_lite import plugins
from robustbench_lite.cli import main
from robustbench_lite.registry import DEFENSES, Registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_defense.py"

HEADER = """
from dataclasses import dataclass
import torch
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES
"""


def _write(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text(HEADER + textwrap.dedent(body))
    return p


def test_the_readme_walkthrough_runs_as_written(trained, capsys):
    assert len(EXAMPLE.read_text().splitlines()) <= 30
    assert main(["conformance", "--plugin", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "3/3 checks passed" in out and "ok   my_blur" in out
    assert main(["eval", "--plugin", str(EXAMPLE), "--model", "smallcnn-fmnist-standard", "--defense", "my_blur:sigma=1.0",
                 "--attack", "pgd:steps=10", "--eps", "0.1", "--n", "100", "--json", "--no-checks", "--no-store"]) == 0
    rows = {r["mode"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["adaptive"]["robust_acc"] < rows["oblivious"]["robust_acc"]
    assert rows["adaptive"]["defense"] == "my_blur:sigma=1.0"


def test_conformance_fails_a_defense_that_lies_about_its_randomness(trained, tmp_path, capsys):
    p = _write(tmp_path, "liar.py", """
        @DEFENSES.register("liar_noise")
        @dataclass(frozen=True, kw_only=True)
        class Liar(Defense):
            stochastic = False  # but it draws noise
            def transform(self, x, generator):
                return (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    """)
    assert main(["conformance", "--plugin", str(p)]) == 1
    out = capsys.readouterr().out
    assert "FAIL liar_noise" in out and "declares stochastic=False but its output changes with the seed" in out


@pytest.mark.parametrize("body,match", [
    ("x = (", "failed to import: SyntaxError"),
    ("raise RuntimeError('boom')", r"failed to import: RuntimeError: boom \(line \d+ of bad.py\)"),
    ("""
        @DEFENSES.register("jpeg")
        @dataclass(frozen=True, kw_only=True)
        class Again(Defense):
            def transform(self, x, generator):
                return x
     """, "duplicate defense name 'jpeg' registered by .*bad.py"),
    ("y = 1", "registers nothing"),
    ("""
        @DEFENSES.register("not_a_defense")
        class Plain:
            pass
     """, "defense 'not_a_defense' is not a subclass of Defense or Detector or Composite"),
    ("""
        @DEFENSES.register("no_transform")
        @dataclass(frozen=True, kw_only=True)
        class Half(Defense):
            pass
     """, "defense 'no_transform' does not implement transform"),
])
def test_bad_plugins_are_named_with_their_problem(tmp_path, body, match):
    p = _write(tmp_path, "bad.py", body)
    with pytest.raises(plugins.PluginError, match=f"plugin {p}.*{match}" if "duplicate" not in match else match):
        plugins.load(p)
    assert "not_a_defense" not in DEFENSES and "no_transform" not in DEFENSES  # a failed plugin leaves nothing behind


def test_bad_plugin_on_the_command_line_exits_2(tmp_path, capsys):
    assert main(["list", "defenses", "--plugin", str(tmp_path / "missing.py")]) == 2
    assert f"plugin {tmp_path / 'missing.py'}: no such file" in capsys.readouterr().err
    txt = tmp_path / "plugin.txt"
    txt.write_text("")
    assert main(["list", "defenses", "--plugin", str(txt)]) == 2
    assert "expected a Python file (.py)" in capsys.readouterr().err


def test_an_installed_package_registers_through_entry_points(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "rbl_ep_demo").mkdir(parents=True)
    (pkg / "rbl_ep_demo" / "__init__.py").write_text(HEADER + textwrap.dedent("""
        @DEFENSES.register("ep_identity_blur")
        @dataclass(frozen=True, kw_only=True)
        class EP(Defense):
            def transform(self, x, generator):
                return (x * 0.5 + 0.25).clamp(0, 1)
    """))
    info = pkg / "rbl_ep_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rbl-ep-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[robustbench_lite.defenses]\nep_identity_blur = rbl_ep_demo\n")
    monkeypatch.syspath_prepend(str(pkg))
    importlib.invalidate_caches()
    try:
        fresh = Registry("defense", entry_point_group="robustbench_lite.defenses")
        fresh.names()  # loading the group imports the package, which registers into DEFENSES
        assert "ep_identity_blur" in DEFENSES
    finally:
        DEFENSES.unregister("ep_identity_blur")
        sys.modules.pop("rbl_ep_demo", None)


def test_a_broken_entry_point_names_itself(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    info = pkg / "rbl_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rbl-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[robustbench_lite.attacks]\nbroken = rbl_no_such_module\n")
    monkeypatch.syspath_prepend(str(pkg))
    importlib.invalidate_caches()
    with pytest.raises(ImportError, match="attack plugin entry point 'broken' .*rbl_no_such_module.* failed to import"):
        Registry("attack", entry_point_group="robustbench_lite.attacks").names()
