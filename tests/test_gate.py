"""The CI gate (rbl check SUITE.toml), its Markdown/JUnit output, and the pytest plugin."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from robustbench_lite import gate
from robustbench_lite.checks import Verdict
from robustbench_lite.cli import main
from robustbench_lite.store import Store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _suite(tmp_path: Path, model_extra: str = 'min_clean = 0.5\nmin_robust = 0.0', suite_extra: str = "") -> Path:
    p = tmp_path / "suite.toml"
    p.write_text(f"""
[suite]
name = "t"
n = 100
eps = [0.1]
attacks = ["fgsm"]
checks = false
{suite_extra}

[[model]]
source = "smallcnn-fmnist-standard"
{model_extra}
""")
    return p


def test_the_example_suite_passes_and_writes_markdown_and_junit(trained, tmp_path, capsys, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = tmp_path / "junit.xml"
    store = tmp_path / "s.sqlite"
    assert main(["check", str(EXAMPLES / "ci-suite.toml"), "--junit", str(junit), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### ✅ Accuracy under attack: fmnist small CNN")
    assert out.count("| pass |") == 4 and "jpeg:quality=75 [adaptive]" in out
    assert summary.read_text() == out + "\n"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("4", "0")
    # An unchanged model is not attacked again: the store already holds every cell.
    with Store(store) as s:
        cells = len(s)
    assert main(["check", str(EXAMPLES / "ci-suite.toml"), "--store", str(store)]) == 0
    with Store(store) as s:
        assert len(s) == cells


def test_a_model_below_threshold_fails_with_exit_1(trained, tmp_path, capsys):
    p = _suite(tmp_path, 'min_clean = 0.99\nmin_robust = { "0.1" = 0.9 }\ntolerance = 0.01')
    junit = tmp_path / "j.xml"
    assert main(["check", str(p), "--junit", str(junit), "--store", str(tmp_path / "s.sqlite")]) == 1
    captured = capsys.readouterr()
    assert "### ❌" in captured.out and "FAIL: clean 0." in captured.out and "< 0.99 - 0.01" in captured.out
    assert "robust 0." in captured.out and "< 0.9 - 0.01" in captured.out
    assert "1 of 1 rows below threshold" in captured.err
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case.find("failure") is not None and "clean" in case.find("failure").get("message")


def test_tolerance_lets_a_small_shortfall_pass(trained, tmp_path):
    rows = gate.run(gate.load(_suite(tmp_path, "min_clean = 0.5")), None)
    clean = rows[0].clean
    strict = gate.run(gate.load(_suite(tmp_path, f"min_clean = {clean + 0.01:.4f}")), None)
    loose = gate.run(gate.load(_suite(tmp_path, f"min_clean = {clean + 0.01:.4f}\ntolerance = 0.02")), None)
    assert not strict[0].passed and loose[0].passed


def test_a_failed_masking_check_fails_the_gate(trained, tmp_path, monkeypatch):
    real = gate.evaluate

    def flagged(*args, **kw):
        import dataclasses

        bad = Verdict("gradients", False, 0.9, 0.1, "90% zero gradients")
        return [dataclasses.replace(r, checks=(bad,)) for r in real(*args, **kw)]

    monkeypatch.setattr(gate, "evaluate", flagged)
    rows = gate.run(gate.load(_suite(tmp_path)), None)
    assert not rows[0].passed and rows[0].problems == ("unverified: gradient-masking check still fails: gradients",)
    assert "UNVERIFIED: gradients" in gate.markdown(gate.load(_suite(tmp_path)), rows)


@pytest.mark.parametrize("text,match", [
    ("[suite]\neps = [0.1]\nattacks = ['fgsm']\n", "needs at least one \\[\\[model\\]\\] table"),
    ("[suite]\nattacks = ['fgsm']\n[[model]]\nsource = 'x'\n", "\\[suite\\] needs 'eps'"),
    ("[suite]\neps = [-0.1]\nattacks = ['fgsm']\n[[model]]\nsource = 'x'\n", "eps must be a number in"),
    ("[suite]\neps = [0.1]\nattacks = ['pgdd']\n[[model]]\nsource = 'x'\n", "unknown attack 'pgdd'"),
    ("[suite]\neps = [0.1]\nattacks = ['fgsm']\nepsilon = 1\n[[model]]\nsource = 'x'\n", "unknown key 'epsilon' in \\[suite\\]"),
    ("[suite]\neps = [0.1]\nattacks = ['fgsm']\n[[model]]\nsource = 'x'\nmin_robust = { '0.2' = 0.5 }\n",
     "min_robust names eps 0.2, which is not in \\[suite\\] eps"),
    ("[suite]\neps = [0.1]\nattacks = ['fgsm']\n[[model]]\nsource = 'x'\nmin_clean = 1.5\n", "min_clean must be a number in"),
    ("[suite]\neps = [0.1]\nattacks = ['fgsm']\n[[model]]\nsource = 'x'\nmode = 'naive'\n", "mode must be one of"),
    ("[suite\n", "not valid TOML"),
])
def test_bad_suites_exit_2_naming_the_key(tmp_path, capsys, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err
    import re

    assert re.search(match, err), err


PLUGIN_TEST = '''
def test_gate(robustness):
    robustness.check({{"suite": {{"name": "plugin", "n": 60, "eps": [0.1], "attacks": ["fgsm"], "checks": False}},
                      "model": [{{"source": "smallcnn-fmnist-standard", "min_clean": {min_clean}}}]}})
'''


@pytest.mark.parametrize("min_clean,outcome", [(0.3, "passed"), (0.99, "failed")])
def test_pytest_plugin_gates_a_user_project(trained, pytester, min_clean, outcome):
    pytester.makepyfile(PLUGIN_TEST.format(min_clean=min_clean))
    result = pytester.runpytest_subprocess()  # the pytest11 entry point loads the plugin, as after a pip install
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*robustbench_lite: accuracy under attack*", "*| `smallcnn-fmnist-standard` | none | 0.1 |*"])
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*robustness below threshold in 1 of 1 rows*"])
