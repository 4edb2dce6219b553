"""The HTML leaderboard site, LaTeX and RobustBench model_info export/import, and the browser
test: headless Chromium renders the page, sorts the table and loads every image."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from robustbench_lite.checks import CheckConfig
from robustbench_lite.cli import main
from robustbench_lite.engine import evaluate
from robustbench_lite.store import Store
from robustbench_lite.zoo import LoadedModel
from robustbench_lite.reporting import site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Rounded(torch.nn.Module):
    """An undeclared quantising layer in front of the classifier: its gradient is zero."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 7) / 7)


@pytest.fixture(scope="module")
def published(trained, fmnist_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    store = Store(out / "store.sqlite")
    cfg = CheckConfig(n=30, steps=10, queries=200)
    # The honest model's checks on all 100 points: on 30, one point is more than the 3% of the
    # more-steps check, and a flip of one point would escalate the cell (tests/test_escalation.py's business).
    evaluate(trained, fmnist_test, ["fgsm", "pgd:steps=10"], [0.05, 0.1], n=100, store=store,
             checks=dataclasses.replace(cfg, n=100))
    masked = LoadedModel("smallcnn-rounded", _Rounded(trained.model), "fmnist", "0" * 64)
    # Not escalated, so its checks still fail: shown, flagged, never ranked (tests/test_escalation.py escalates).
    evaluate(masked, fmnist_test, ["pgd:steps=10"], [0.1], n=100, store=store, checks=cfg, escalate=None)
    for mode in ("adaptive", "oblivious"):
        evaluate(trained, fmnist_test, ["pgd:steps=10"], [0.1], n=100, store=store, defense=["jpeg"], mode=mode, checks=None)
    written = site.write_site(store, out / "public")
    yield store, out / "public", written
    store.close()


def test_site_has_a_ranked_index_and_a_page_per_model(published):
    store, out, written = published
    index = (out / "index.html").read_text()
    assert index.startswith("<!doctype html>") and "http://" not in index and "https://" not in index  # self-contained
    assert {p.name for p in (out / "models").glob("*.html")} == {"smallcnn-fmnist-standard.html", "smallcnn-rounded.html"}
    # The masked model's row is flagged automatically, and has no rank.
    row = re.search(r'<tr class="flagged[^"]*">(?:(?!</tr>).)*smallcnn-rounded(?:(?!</tr>).)*</tr>', index, re.S)
    assert row and "unverified, not ranked" in row.group(0) and "gradients" in row.group(0)
    assert "unranked" in row.group(0).split(">")[0] and "<td data-sort=\"9999\">–</td>" in row.group(0)
    page = (out / "models" / "smallcnn-fmnist-standard.html").read_text()
    assert "jpeg:quality=75" in page and "rbl eval --model smallcnn-fmnist-standard" in page and "95% CI" in page
    for img in re.findall(r'<img src="([^"]+)"', index):
        assert (out / img).is_file(), img


def test_every_command_on_a_model_page_reproduces_its_number(published, capsys):
    store, out, _ = published
    page = (out / "models" / "smallcnn-fmnist-standard.html").read_text()
    import html

    commands = [html.unescape(c) for c in re.findall(r"<pre>(rbl eval [^<]+)</pre>", page)]
    assert len(commands) == 4  # fgsm+pgd at eps 0.05 and 0.1, and jpeg adaptive and oblivious at 0.1
    stored = {(r.defense, r.mode, r.eps): r.robust_acc for r in store.results() if r.model == "smallcnn-fmnist-standard"}
    for cmd in commands:
        args = shlex.split(cmd)[1:] + ["--json", "--no-store", "--no-checks"]
        assert main(args) == 0, cmd
        for line in capsys.readouterr().out.splitlines():
            r = json.loads(line)
            assert stored[(r["defense"], r["mode"], r["eps"])] == r["robust_acc"], cmd


def test_latex_and_robustbench_round_trip(published, tmp_path, capsys):
    store, _, _ = published
    tex = site.latex(store)
    assert "\\toprule" in tex and "\\bottomrule" in tex and "smallcnn-fmnist-standard" in tex and "pgd:steps=10" in tex
    assert "\\_" not in "".join(re.findall(r"\\texttt\{([^}]*)\}", tex)).replace("\\_", "")
    entries = site.write_robustbench(store, tmp_path / "rb")
    info = json.loads(entries[0].read_text())
    assert set(info) == set(site.ROBUSTBENCH_KEYS)
    assert float(info["clean_acc"]) > float(info["autoattack_acc"])
    # An unverified row is not ranked, so it is no RobustBench entry.
    assert not [p for p in entries if "rounded" in p.name] and info["unreliable"] is False
    with Store(tmp_path / "other.sqlite") as other:
        site.import_robustbench(other, entries[0])
        assert [m["name"] for _, m, _ in other.artifacts("robustbench_entry")] == [info["name"]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "dataset": "cifar10", "eps": "8/255", "clean_acc": "91.2"}))
    assert main(["leaderboard", "--import", str(bad), "--store", str(tmp_path / "o.sqlite")]) == 2
    assert "lacks autoattack_acc" in capsys.readouterr().err
    bad.write_text(json.dumps({"name": "x", "dataset": "cifar10", "eps": "8/255", "clean_acc": "191", "autoattack_acc": "50"}))
    with pytest.raises(ValueError, match=r"clean_acc must be a percentage in \[0, 100\], got '191'"):
        site.import_robustbench(store, bad)


def test_html_needs_an_output_folder(capsys):
    assert main(["leaderboard", "--format", "html"]) == 2
    assert "give it --out DIR" in capsys.readouterr().err
    assert main(["leaderboard", "--format", "pdf"]) == 2
    assert "unknown format 'pdf'" in capsys.readouterr().err


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make test` installs it with scripts/get-chromium.sh where apt works")
def test_browser_sorts_the_table_loads_the_images_and_takes_a_screenshot(published):
    _, out, _ = published
    url = (out / "index.html").as_uri()
    default = _chromium("--virtual-time-budget=3000", "--dump-dom", url).stdout
    assert re.search(r'<body data-images="(\d+)/\1">', default), "an image failed to load"
    header = re.search(r"<thead><tr>(.*?)</tr></thead>", default, re.S).group(1)
    col = [h for h in re.findall(r"<th[^>]*>(.*?)</th>", header)].index("worst case % (95% CI)")
    robust = lambda dom: [float(v) for v in re.findall(r'<td data-sort="([0-9.e-]+)"><b>', dom)]  # noqa: E731
    asc = robust(_chromium("--virtual-time-budget=3000", "--dump-dom", f"{url}#sort={col}-asc").stdout)
    desc = robust(_chromium("--virtual-time-budget=3000", "--dump-dom", f"{url}#sort={col}").stdout)
    assert len(set(asc)) >= 3, asc  # enough distinct values for the order to mean something
    assert asc == sorted(asc) and desc == sorted(asc, reverse=True)
    assert robust(default) != asc  # the page opens in rank order, not sorted by this column
    # RBL_SCREENSHOT=reports/leaderboard_screenshot.png keeps the screenshot (how the published one was made).
    shot = Path(os.environ.get("RBL_SCREENSHOT") or out / "leaderboard_screenshot.png").resolve()
    _chromium("--window-size=1500,900", f"--screenshot={shot}", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


# Two files as they are in RobustBench's model_info/cifar10/Linf/ (strings for accuracies, eps "8/255").
RB_FILES = {
    "Carmon2019Unlabeled": {"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
                            "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi",
                            "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
                            "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.5",
                            "autoattack_acc": "59.53"},
    "Standard": {"link": "https://github.com/RobustBench/robustbench/", "name": "Standardly trained model", "authors": "",
                 "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10", "venue": "N/A",
                 "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "94.78", "reported": "0.0", "autoattack_acc": "0.0"},
}


def _model_info(root: Path) -> list[Path]:
    paths = []
    for name, info in RB_FILES.items():
        p = root / "model_info" / "cifar10" / "Linf" / f"{name}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(info))
        paths.append(p)
    return paths


def test_imported_robustbench_entries_are_shown_on_their_board_never_ranked(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    args = [a for p in _model_info(tmp_path) for a in ("--import", str(p))]
    assert main(["leaderboard", "--store", str(store), *args]) == 0
    md = capsys.readouterr().out
    assert "No results" not in md and "# Leaderboard: cifar10 L-inf eps = 8/255" in md
    line = next(ln for ln in md.splitlines() if "Unlabeled Data Improves" in ln)
    assert line.startswith("| – |") and "89.7" in line and "**59.5**" in line
    assert "imported from RobustBench model_info/cifar10/Linf/Carmon2019Unlabeled.json" in line
    assert main(["leaderboard", "--store", str(store), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in rows} == {info["name"] for info in RB_FILES.values()}
    assert all(r["rank"] is None and r["imported"].startswith("RobustBench model_info/cifar10/Linf/") for r in rows)
    assert {r["eps"] for r in rows} == {8 / 255} and {r["clean_acc"] for r in rows} == {0.8969, 0.9478}
    # A file outside RobustBench's layout needs its threat model named.
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps(RB_FILES["Standard"]))
    assert main(["leaderboard", "--store", str(store), "--import", str(loose)]) == 2
    assert "cannot tell its threat model" in capsys.readouterr().err
    assert main(["leaderboard", "--store", str(store), "--import", str(loose), "--threat", "L2"]) == 0
    assert "# Leaderboard: cifar10 L2 eps = 8/255" in capsys.readouterr().out


def test_imported_rows_stand_beside_ours_on_the_same_board(published, tmp_path):
    store, _, _ = published
    from robustbench_lite.reporting import leaderboard

    info = dict(RB_FILES["Standard"], dataset="fmnist", eps="0.1", name="Someone's FMNIST model")
    p = tmp_path / "model_info" / "fmnist" / "Linf" / "Someone.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(info))
    import sqlite3

    with sqlite3.connect(tmp_path / "mine.sqlite") as dst:
        store._db.backup(dst)  # a copy of the open store, write-ahead log included
    with Store(tmp_path / "mine.sqlite") as mine:
        site.import_robustbench(mine, p)
        t = leaderboard.table(mine, 0.1, with_imported=True)
        md = leaderboard.markdown(mine, 0.1)
    assert "Someone's FMNIST model" in set(t["model"]) and t["rank"].notna().any()
    row = t[t["model"] == "Someone's FMNIST model"].iloc[0]
    assert row["rank"] is None and row["imported"]
    assert md.count("# Leaderboard: fmnist L-inf eps = 0.1") == 1 and "Someone's FMNIST model" in md


def test_our_robustbench_export_imports_back_losslessly(published, tmp_path):
    store, _, _ = published
    first = sorted(site.write_robustbench(store, tmp_path / "ours"))
    assert first and all(p.parent.name == "Linf" for p in first)  # RobustBench's layout: the threat is the folder
    with Store(tmp_path / "rt.sqlite") as rt:
        for p in first:
            site.import_robustbench(rt, p)
        again = sorted(site.write_imported(rt, tmp_path / "again"))
    assert [p.relative_to(tmp_path / "again") for p in again] == [p.relative_to(tmp_path / "ours") for p in first]
    for a, b in zip(first, again):
        assert json.loads(a.read_text()) == json.loads(b.read_text())
    # And RobustBench's own files survive the same trip.
    with Store(tmp_path / "rb.sqlite") as rb:
        for p in _model_info(tmp_path / "in"):
            site.import_robustbench(rb, p)
        out = site.write_imported(rb, tmp_path / "out")
    assert sorted(json.loads(p.read_text())["name"] for p in out) == sorted(i["name"] for i in RB_FILES.values())
    assert all(json.loads(p.read_text()) == RB_FILES[p.stem] for p in out)
