from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from robustbench_lite import zoo
from robustbench_lite.cli import main
from robustbench_lite.store import Store


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "results.sqlite"


def test_eval_json_prints_one_object_per_eps(trained, store_path, capsys):
    rc = main(["eval", "--model", trained.name, "--attack", "fgsm", "--attack", "pgd:steps=5",
               "--eps", "0", "0.1", "--n", "100", "--json", "--store", str(store_path)])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["eps"] for d in lines] == [0.0, 0.1]
    assert set(lines[0]) >= {"model", "defense", "attacks", "eps", "n", "clean_acc", "robust_acc", "robust_acc_ci", "seconds"}
    assert lines[0]["robust_acc"] == lines[0]["clean_acc"] and lines[1]["robust_acc"] < lines[0]["robust_acc"]
    assert lines[1]["attacks"] == ["fgsm", "pgd:steps=5"] and lines[1]["n"] == 100
    with Store(store_path) as s:
        assert len(s) == 2


def test_eval_from_a_checkpoint_path(trained, store_path, capsys):
    rc = main(["eval", "--checkpoint", str(zoo.checkpoint_dir(trained.name) / "model.safetensors"),
               "--attack", "fgsm", "--eps", "0.05", "--n", "50", "--store", str(store_path)])
    assert rc == 0 and "robust" in capsys.readouterr().out


def _rc(argv):
    """main's exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv,message", [
    (["--attack", "pgdd", "--eps", "0.1"], "unknown attack 'pgdd'; did you mean 'pgd'"),
    (["--attack", "fb:LinfPDG", "--eps", "0.1"], "unknown foolbox attack 'LinfPDG'; did you mean LinfPGD"),
    (["--attack", "pgd", "--eps", "-0.1"], "eps must be a number >= 0, got '-0.1'"),
    (["--attack", "pgd", "--eps", "nan"], "eps must be a number >= 0, got 'nan'"),
    (["--attack", "pgd", "--eps", "0.1", "--n", "0"], "expected a positive integer, got '0'"),
    (["--attack", "pgd:steps=x", "--eps", "0.1"], "pgd: steps must be an integer >= 1, got 'x'"),
    (["--attack", "pgd", "--eps", "0.1", "--defense", "jpg"], "unknown defense 'jpg'; did you mean 'jpeg'"),
    (["--attack", "pgd", "--eps", "0.1", "--defense", "jpeg:quality=101"], "jpeg: quality must be an integer in [1, 100]"),
])
def test_bad_eval_input_exits_non_zero_and_writes_nothing(trained, store_path, capsys, argv, message):
    assert _rc(["eval", "--model", trained.name, *argv, "--store", str(store_path)]) == 2
    assert message in capsys.readouterr().err
    if store_path.exists():
        with Store(store_path) as s:
            assert len(s) == 0


def test_eval_with_a_defense_prints_both_modes(trained, store_path, capsys):
    rc = main(["eval", "--model", trained.name, "--attack", "pgd:steps=5", "--eps", "0.1", "--n", "40",
               "--defense", "bit_depth:bits=2", "--json", "--store", str(store_path)])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["defense"], r["mode"]) for r in rows] == [("bit_depth:bits=2", "adaptive"), ("bit_depth:bits=2", "oblivious")]
    assert main(["leaderboard", "--store", str(store_path)]) == 0
    md = capsys.readouterr().out
    assert "| bit_depth:bits=2 | adaptive |" in md and "| – | `smallcnn-fmnist-standard` |" in md  # oblivious: unranked


def test_missing_dataset_and_corrupt_checkpoint_exit_2(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RBL_DATA_DIR", str(tmp_path / "nothing"))
    src = zoo.checkpoint_dir(trained.name)
    shutil.copytree(src, tmp_path / "ck")
    card = json.loads((tmp_path / "ck" / "card.json").read_text())
    card["dataset"] = "mnist"
    (tmp_path / "ck" / "card.json").write_text(json.dumps(card))
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--attack", "fgsm", "--eps", "0.1",
                 "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "dataset 'mnist' (test) not found" in capsys.readouterr().err
    raw = bytearray((tmp_path / "ck" / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "ck" / "model.safetensors").write_bytes(bytes(raw))
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--attack", "fgsm", "--eps", "0.1"]) == 2
    assert "is corrupt" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_untrained_model_exit_2(capsys):
    assert main(["eval", "--model", "mobilenetv3_small_050-mnist-standard", "--attack", "fgsm", "--eps", "0.1"]) == 2
    assert "rbl train --arch mobilenetv3_small_050" in capsys.readouterr().err


def test_list_and_leaderboard(trained, store_path, capsys, tmp_path):
    assert main(["list", "attacks", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert {"fgsm", "bim", "pgd", "illc", "gradient_ascent", "fb:<FoolboxAttackName>"} <= names
    assert main(["list", "models"]) == 0
    assert "trained: smallcnn-fmnist-standard" in capsys.readouterr().out
    main(["eval", "--model", trained.name, "--attack", "fgsm", "--eps", "0.1", "--n", "50", "--store", str(store_path)])
    capsys.readouterr()
    assert main(["leaderboard", "--format", "json", "--store", str(store_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == trained.name and rows[0]["n"] == 50
    assert main(["leaderboard", "--format", "xml", "--store", str(store_path)]) == 2
    assert "unknown format 'xml'; allowed: md, csv, json, latex, robustbench, html" in capsys.readouterr().err
    assert main(["leaderboard", "--out", str(tmp_path / "rep"), "--store", str(store_path)]) == 0
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.json",
                                                              "leaderboard.tex", "accuracy_vs_eps.png", "training_curves.png",
                                                              "index.html", "models", "robustbench", "manifest.json"}


def test_train_command(tmp_path, capsys):
    rc = main(["train", "--arch", "smallcnn", "--epochs", "1", "--train-subset", "500", "--out", str(tmp_path / "m")])
    assert rc == 0 and "clean accuracy" in capsys.readouterr().out
    assert (tmp_path / "m" / "card.json").is_file()
    assert main(["train", "--arch", "smallcnm"]) == 2
    assert "did you mean 'smallcnn'" in capsys.readouterr().err
    assert main(["train", "--arch", "smallcnn", "--schedule", "steps", "--out", str(tmp_path / "s")]) == 2
    assert "unknown schedule 'steps'; allowed: warmup_cosine, cyclic" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_console_script_exit_code():
    exe = shutil.which("rbl", path=os.path.dirname(sys.executable))
    assert exe, "the rbl console script is installed with the package"
    p = subprocess.run([exe, "eval", "--model", "x-fmnist-standard", "--attack", "fgsm", "--eps", "0.1"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "unknown model architecture 'x'" in p.stderr
