"""Zoo bundles: export, import, verification, and running a profile on a shipped zoo."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from robustbench_lite import bundle, zoo
from robustbench_lite.bundle import BundleError
from robustbench_lite.cli import main
from robustbench_lite.store import Store


@pytest.fixture
def exported(trained, generative_zoo, tmp_path):
    """A bundle of the trained fixture, the tiny DAE, and one stored artifact."""
    with Store(tmp_path / "src.sqlite") as store:
        key = store.put_artifact("universal", {"model": trained.name, "xi": 0.1}, {"v": torch.linspace(0, 1, 784).view(1, 1, 28, 28)})
        b = bundle.export([trained.name, generative_zoo["dae"]], tmp_path / "b", store=store, artifacts=["universal"])
    return b, key


def _fresh_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "elsewhere"
    monkeypatch.setenv("RBL_CACHE_DIR", str(cache))
    return cache


def test_export_then_import_on_a_fresh_cache_gives_the_same_weights_and_artifacts(exported, trained, tmp_path, monkeypatch):
    b, key = exported
    assert {(e.kind, e.name) for e in b.entries} == {("zoo", trained.name), ("generative", "dae-fmnist"), ("artifact", key)}
    _fresh_cache(tmp_path, monkeypatch)
    assert not zoo.is_trained(trained.name)
    with Store(tmp_path / "dst.sqlite") as store:
        done = bundle.import_(b.path, store=store)
        assert sorted(done["installed"]) == sorted([trained.name, "dae-fmnist", key]) and done["kept"] == []
        (k, meta, tensors), = store.artifacts("universal")
        assert k == key and meta["xi"] == 0.1 and torch.equal(tensors["v"], torch.linspace(0, 1, 784).view(1, 1, 28, 28))
        again = bundle.import_(b.path, store=store)  # identical weights already there: kept, nothing rewritten
        assert sorted(again["kept"]) == sorted([trained.name, "dae-fmnist"])
    lm = zoo.load(trained.name)
    assert lm.weights_sha256 == trained.weights_sha256
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(lm.model(x), trained.model(x))


def _every_file(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_one_flipped_byte_anywhere_is_refused_naming_the_file_and_nothing_is_imported(exported, tmp_path, monkeypatch):
    b, _ = exported
    cache = _fresh_cache(tmp_path, monkeypatch)
    files = _every_file(b.path)
    assert len(files) >= 7  # manifest, two weights, two cards, an artifact's tensors and metadata
    for f in files:
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(b.path, bad)
        target = bad / f.relative_to(b.path)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        with Store(tmp_path / "dst.sqlite") as store, pytest.raises(BundleError) as err:
            bundle.import_(bad, store=store)
        assert str(target) in str(err.value), (f.name, str(err.value))
        with Store(tmp_path / "dst.sqlite") as store:
            assert store.artifacts() == []
        assert not (cache / "zoo").exists() or not any((cache / "zoo").iterdir())


def test_missing_extra_and_escaping_files_are_refused(exported, tmp_path, monkeypatch):
    b, _ = exported
    _fresh_cache(tmp_path, monkeypatch)
    bad = tmp_path / "bad"
    shutil.copytree(b.path, bad)
    (bad / "zoo" / "smallcnn-fmnist-standard" / "extra.py").write_text("print('hi')")
    with pytest.raises(BundleError, match="files its manifest does not list: zoo/smallcnn-fmnist-standard/extra.py"):
        bundle.read(bad)
    (bad / "zoo" / "smallcnn-fmnist-standard" / "extra.py").unlink()
    (bad / "zoo" / "smallcnn-fmnist-standard" / "card.json").unlink()
    with pytest.raises(BundleError, match="incomplete: zoo/smallcnn-fmnist-standard/card.json is missing"):
        bundle.read(bad)
    with pytest.raises(BundleError, match="has no manifest.json"):
        bundle.read(tmp_path)
    with pytest.raises(BundleError, match="already exists and is not empty"):
        bundle.export(["smallcnn-fmnist-standard"], b.path)
    with pytest.raises(BundleError, match="nothing to export under 'nope-fmnist-standard'"):
        bundle.export(["nope-fmnist-standard"], tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_other_weights_under_the_same_name_are_not_overwritten_without_replace(exported, trained, tmp_path, monkeypatch):
    b, _ = exported
    _fresh_cache(tmp_path, monkeypatch)
    from robustbench_lite.data import DATASETS

    other = zoo.build("smallcnn", DATASETS["fmnist"])
    zoo.save(other, zoo.ModelCard(**{**trained.card.__dict__, "weights_sha256": ""}), zoo.checkpoint_dir(trained.name))
    mine = zoo.load(trained.name).weights_sha256
    assert mine != trained.weights_sha256
    with Store(tmp_path / "dst.sqlite") as store:
        with pytest.raises(BundleError, match="already holds zoo model 'smallcnn-fmnist-standard' with other weights.*--replace"):
            bundle.import_(b.path, store=store)
        assert store.artifacts() == [] and zoo.load(trained.name).weights_sha256 == mine
        bundle.import_(b.path, store=store, replace=True)
    assert zoo.load(trained.name).weights_sha256 == trained.weights_sha256


def test_cli_export_and_import_exit_codes(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli-bundle"
    assert main(["zoo", "export", trained.name, "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["entries"][0]["name"] == trained.name
    _fresh_cache(tmp_path, monkeypatch)
    (out / "zoo" / trained.name / "model.safetensors").write_bytes(b"\0" * 16)
    capsys.readouterr()
    assert main(["zoo", "import", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is corrupt" in err and not zoo.is_trained(trained.name)


def test_a_profile_runs_on_a_shipped_zoo_without_training_and_gets_the_same_cells(exported, trained, tmp_path, monkeypatch):
    from robustbench_lite import profiles

    b, _ = exported
    prof = profiles.Profile("tiny", models=(trained.name,), attacks=("fgsm", "bim"), eps=(0.0, 0.1), n=50, checks=False)
    with Store(tmp_path / "here.sqlite") as store:
        here = profiles.run(prof, store)
    cache = _fresh_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(profiles, "train", lambda *a, **k: pytest.fail("a run on a shipped zoo must not train"))
    with Store(tmp_path / "there.sqlite") as store:
        there = profiles.run(prof, store, zoo_dir=b.path)
    assert [(r.key, r.robust.tolist()) for r in there] == [(r.key, r.robust.tolist()) for r in here]
    assert not (cache / "zoo").exists()  # read from the bundle, not installed
    other = profiles.Profile("tiny", models=(trained.name, "smallcnn-fmnist-fast_at"), attacks=("fgsm",), eps=(0.1,), n=50)
    with Store(tmp_path / "x.sqlite") as store, pytest.raises(BundleError, match="lacks smallcnn-fmnist-fast_at of profile 'tiny'"):
        profiles.run(other, store, zoo_dir=b.path)


@pytest.mark.parametrize("folder,sample", [(".", 6), ("full-eps0.1", 3)])
def test_a_published_board_verifies_on_this_machine_from_its_shipped_zoo(folder, sample, tmp_path, monkeypatch, capsys):
    """What the README promises a newcomer: import a report's zoo, verify its store. Run here on a
    sample of its rows, on whatever machine runs the suite (CI's is not the one that published it)."""
    root = Path(__file__).resolve().parents[1] / "reports" / folder
    _fresh_cache(tmp_path, monkeypatch)
    shutil.copyfile(root / "results.sqlite", tmp_path / "published.sqlite")  # verify reads; a copy keeps the file as shipped
    assert main(["zoo", "import", str(root / "zoo")]) == 0
    assert main(["verify", "--store", str(tmp_path / "published.sqlite"), "--sample", str(sample), "--seed", "0", "--json"]) == 0
    outcomes = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(outcomes) == sample and {o["status"] for o in outcomes} == {"identical"}, outcomes


def test_the_publish_script_refuses_an_unknown_report_before_touching_anything():
    script = Path(__file__).resolve().parents[1] / "scripts" / "publish.sh"
    done = subprocess.run(["bash", str(script), "full", "leaderbord"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown report 'leaderbord': one of quick, full, generative, experiments, robust-features" in done.stderr
    assert "== full" not in done.stdout  # every name is checked before the first report is touched
