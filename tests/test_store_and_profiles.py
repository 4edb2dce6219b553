from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from robustbench_lite import profiles
from robustbench_lite.store import Store

from .conftest import evaluate

EPS = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08]
SCRIPT = textwrap.dedent("""
    import sys
    from robustbench_lite import data, zoo
    from robustbench_lite.engine import evaluate
    from robustbench_lite.store import Store
    with Store(sys.argv[1]) as store:
        evaluate(zoo.load("smallcnn-fmnist-standard"), data.load("fmnist"), ["pgd:steps=40,restarts=2"],
                 {eps}, n=400, store=store)
""").format(eps=EPS)


def test_killed_run_resumes_with_every_cell_exactly_once(trained, fmnist_test, tmp_path):
    path = tmp_path / "s.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(path)])
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if path.exists():
                with Store(path) as s:
                    if len(s) >= 2:
                        break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    with Store(path) as s:
        done = len(s)
        assert 2 <= done < len(EPS)
        resumed = evaluate(trained, fmnist_test, ["pgd:steps=40,restarts=2"], EPS, n=400, store=s)
        assert len(s) == len(EPS) and len({r.key for r in s.results()}) == len(EPS)
    fresh = evaluate(trained, fmnist_test, ["pgd:steps=40,restarts=2"], EPS[-2:], n=400)
    for a, b in zip(resumed[-2:], fresh):
        assert a.key == b.key and np.array_equal(a.robust, b.robust)


def test_profile_run_writes_cells_worst_case_and_reports(trained, tmp_path):
    prof = profiles.Profile("tiny", models=(trained.name,), attacks=("fgsm", "pgd:steps=5"), eps=(0.0, 0.05, 0.1), n=100)
    with Store(tmp_path / "s.sqlite") as store:
        results = profiles.run(prof, store)
        assert len(results) == len(store) == 3 * 3  # two attacks and their worst case, per eps
        again = profiles.run(prof, store)
        assert [r.key for r in again] == [r.key for r in results] and len(store) == 9
        written = profiles.write_reports(store, tmp_path / "reports")
    by = {(r.attacks, r.eps): r for r in results}
    for eps in prof.eps:
        worst = by[(("fgsm", "pgd:steps=5"), eps)]
        assert worst.robust_acc <= min(by[(("fgsm",), eps)].robust_acc, by[(("pgd:steps=5",), eps)].robust_acc)
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert trained.name in md and "worst case" in md and "pgd:steps=5 %" in md
    png = (tmp_path / "reports" / "accuracy_vs_eps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    curves = (tmp_path / "reports" / "training_curves.png").read_bytes()  # from the model card, beside the weights
    assert curves[:8] == b"\x89PNG\r\n\x1a\n" and "![training curves](training_curves.png)" in md
    # md, csv, json, two plots, LaTeX, one RobustBench entry, the site's index, its model page
    # and that page's plot.
    assert {p.name for p in written} >= {"leaderboard.md", "leaderboard.tex", "index.html", f"{trained.name}.json",
                                         f"{trained.name}.html"}
    assert all(p.is_file() for p in written)


def test_profile_selection_keeps_order_and_names_bad_globs():
    full = profiles.get("full")
    sub = full.select(models=["*-ensemble_at", "resnet10t-*-standard"], eps=[0.1])
    assert sub.models == ("resnet10t-fmnist-standard", "smallcnn-fmnist-ensemble_at") and sub.eps == (0.1,)
    assert full.select().models == full.models
    with pytest.raises(ValueError, match="no model of profile 'full' matches lenet-\\*; allowed: smallcnn-fmnist-standard"):
        full.select(models=["lenet-*"])
