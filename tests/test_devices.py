"""Devices: naming and refusing them, the engine, training and experiments on each device present
(the CPU always; CUDA and MPS where they are, skipped with the reason otherwise), CPU bits that do
not change with ``device="cpu"``, and no device-less tensor construction on the hot paths."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from robustbench_lite import devices, zoo
from robustbench_lite.cell import CellConfig
from robustbench_lite.checks import CheckConfig
from robustbench_lite.cli import main
from robustbench_lite.engine import cell_configs
from robustbench_lite.store import Store

from .conftest import DEVICES, evaluate, on

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_names_what_it_accepts_and_what_it_found():
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.resolve("auto") == devices.resolve(None)
    expected = "cuda" if torch.cuda.is_available() else "mps" if "mps" in devices.available() else "cpu"
    assert devices.resolve("auto").type == expected  # CUDA, then MPS, then the CPU
    for bad in ("tpu", "cuda:x", "gpu", "", "CPU"):
        with pytest.raises(devices.DeviceError, match=r"unknown device .*allowed: auto, cpu, cuda, cuda:N, mps"):
            devices.resolve(bad)
    if not torch.cuda.is_available():
        with pytest.raises(devices.DeviceError, match=r"'cuda:1' is not available: this machine has cpu, no CUDA device"):
            devices.resolve("cuda:1")
    else:
        with pytest.raises(devices.DeviceError, match="is not available"):
            devices.resolve(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_refuses_cuda_without_cuda_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    for argv in (["eval", "--model", "smallcnn-fmnist-standard", "--attack", "fgsm", "--eps", "0.1", "--store", str(store)],
                 ["train", "--arch", "smallcnn", "--train-subset", "64", "--epochs", "1", "--out", str(tmp_path / "m")],
                 ["run", "--profile", "quick", "--out", str(tmp_path / "r"), "--store", str(store)]):
        assert main([*argv, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "rbl: error: device 'cuda' is not available: this machine has cpu, no CUDA device" in err, err
    assert not store.exists() and not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


def test_eval_device_cpu_gives_the_bits_of_the_default(trained, fmnist_test, tmp_path, capsys):
    """The acceptance check: `rbl eval ... --device cpu` against the default on this machine (the
    default is auto: on a machine with a GPU that is another device, so only the explicit CPU run
    is compared with a Python-API run, which keeps the model where it is)."""
    args = ["eval", "--model", trained.name, "--attack", "pgd:steps=5", "--attack", "square:queries=50", "--eps", "0.1",
            "--n", "64", "--no-checks"]
    stores = {}
    for label, extra in (("cpu", ["--device", "cpu"]), ("default", [])):
        stores[label] = tmp_path / f"{label}.sqlite"
        assert main([*args, *extra, "--store", str(stores[label])]) == 0
    assert "rbl: device cpu" in capsys.readouterr().err
    with Store(stores["cpu"]) as a, Store(stores["default"]) as b:
        ra, rb = a.results(), b.results()
    api = evaluate(zoo.load(trained.name), fmnist_test, ["pgd:steps=5", "square:queries=50"], 0.1, n=64)[0]
    assert len(ra) == 1 and ra[0].key == api.key and (ra[0].robust == api.robust).all()
    if devices.resolve("auto").type == "cpu":
        assert [r.key for r in ra] == [r.key for r in rb]
        assert (ra[0].robust == rb[0].robust).all() and ra[0].robust_acc == rb[0].robust_acc


def test_the_device_is_in_the_key_and_the_config(trained, fmnist_test):
    config = cell_configs(trained, fmnist_test, ["fgsm"], [0.1], n=32, device="cpu")[0]
    assert config.device == "cpu" and config.dtype == "float32"
    moved = {**config.to_dict(), "device": "cuda"}
    assert CellConfig.from_dict(moved).key != config.key


@pytest.mark.parametrize("device", DEVICES)
def test_the_engine_evaluates_a_defended_cascade_on_the_device(device, trained, fmnist_test):
    """Everything moves together: the model, the engine's data, an attack cascade (random starts
    from per-point streams, a generator-drawn attack), a random defense, a detector, the checks."""
    model, = on(torch.device(device), trained.model)
    attacks = ["pgd:steps=3", "square:queries=20"]
    kw = dict(n=48, defense=["gaussian_noise:sigma=0.05", "feature_squeeze"], eot=2, votes=3, device=device)
    r = evaluate(model, fmnist_test, attacks, [0.1], checks=CheckConfig(n=24, binarization=4), escalate=None, **kw)[0]
    assert r.robust.shape == (48,) and 0 <= r.robust_acc <= r.clean_acc and r.checks
    assert cell_configs(model, fmnist_test, attacks, [0.1], **kw)[0].device == torch.device(device).type
    assert devices.of(model).type == torch.device(device).type  # moved there, left there


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_runs_on_the_device_at_each_precision(device, precision, tmp_path):
    from robustbench_lite.train import TrainConfig, train

    if precision == "fp16" and device == "cpu" and not hasattr(torch.amp, "GradScaler"):
        pytest.skip("this torch has no CPU gradient scaler")
    cfg = TrainConfig(arch="smallcnn", recipe="fast_at", epochs=1, train_subset=256, monitor_n=32, precision=precision)
    card = train(cfg, out=tmp_path / "m", device=device)
    assert card.hyperparameters["device"] == torch.device(device).type and card.hyperparameters["precision"] == precision
    assert 0 <= card.clean_acc <= 1 and all(torch.isfinite(torch.tensor(v)) for v in card.curves[-1].values())
    loaded = zoo.load_checkpoint(str(tmp_path / "m"))
    assert devices.of(loaded.model).type == "cpu"  # saved from the CPU, loadable anywhere


def test_a_bad_precision_is_refused():
    from robustbench_lite.train import TrainConfig

    with pytest.raises(ValueError, match="unknown precision 'fp8'; allowed: fp32, bf16, fp16"):
        TrainConfig(arch="smallcnn", precision="fp8")


@pytest.mark.parametrize("device", DEVICES)
def test_generative_training_and_an_experiment_run_on_the_device(device, trained, tmp_path):
    from robustbench_lite import data
    from robustbench_lite.generative import base as generative
    from robustbench_lite.experiments.base import execute
    from robustbench_lite.registry import EXPERIMENTS

    lg = generative.train("vae", "fmnist", epochs=1, train_subset=256, test_n=64, classifier=None, out=tmp_path / "vae",
                          device=device)
    assert devices.of(lg.model).type == "cpu" and all(v == v for v in lg.card.metrics.values() if isinstance(v, float))
    model, = on(torch.device(device), trained.model)
    lm = zoo.LoadedModel(trained.name, model, trained.dataset, trained.weights_sha256, card=trained.card)
    train_split, test = data.load("fmnist", "train"), data.load("fmnist", "test")
    with Store(tmp_path / "s.sqlite") as store:
        (outcome, key), = execute(EXPERIMENTS.create("universal", n_train=64, n_test=64, passes=1, pgd_steps=2), [lm],
                                  train_split, test, device=device, store=store)
        (_, meta, tensors), = [a for a in store.artifacts("universal") if a[0] == key]
    assert 0 <= outcome.metrics["fooling_rate"] <= 1 and meta["metrics"] == json.loads(json.dumps(outcome.metrics))
    assert meta.get("device", "cpu") == torch.device(device).type
    assert torch.equal(tensors["perturbation"], outcome.tensors["perturbation"].cpu())


# --- no device-less tensor on the hot paths ---------------------------------------------------

#: torch functions that make a new tensor (or generator) on the default device unless told otherwise.
_CONSTRUCTORS = {"zeros", "ones", "full", "empty", "arange", "linspace", "logspace", "eye", "rand", "randn", "randint",
                 "randperm", "normal", "tensor", "as_tensor", "Generator"}
#: The engine's, the attacks', the defenses', training's and the generative models' code.
_HOT = ["robustbench_lite/*.py", "robustbench_lite/checks/*.py", "robustbench_lite/recipes/*.py", "robustbench_lite/zoo/*.py",
        "attacks/*.py", "defenses/*.py", "generative/*.py", "experiments/*.py"]
#: Code that runs on the CPU by design (references, reports, stores, the CLI), not on a device.
_OFF_PATH = {"reference.py", "cli.py", "store.py", "bundle.py", "fetch.py", "provenance.py", "stats.py", "fingerprint.py",
             "plugins.py", "profiles.py", "gate.py", "verify.py", "paths.py", "registry.py", "specs.py", "cell.py"}


def device_less_constructions(root: Path = ROOT) -> list[str]:
    """Every ``torch.<constructor>(...)`` call without ``device=`` in the hot-path code, unless its
    line says why it belongs on the CPU (``# cpu: <reason>``)."""
    out = []
    for pattern in _HOT:
        for path in sorted(root.glob(pattern)):
            if path.name in _OFF_PATH:
                continue
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CONSTRUCTORS
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                        and not any(k.arg == "device" for k in node.keywords) and "# cpu:" not in lines[node.lineno - 1]):
                    out.append(f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def test_no_device_less_tensor_construction_on_the_hot_paths():
    found = device_less_constructions()
    assert not found, "tensors made on the default device (pass device=, or say why with '# cpu: <reason>'):\n" + "\n".join(found)


def test_the_scan_catches_a_device_less_construction(tmp_path):
    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "bad.py").write_text(
        "import torch\n"
        "def run(x, g):\n"
        "    noise = torch.randn(x.shape, generator=g)\n"
        "    ok = torch.zeros(3, device=x.device)\n"
        "    order = torch.randperm(9)  # cpu: the data order\n"
        "    return torch.Generator().manual_seed(0)\n")
    assert device_less_constructions(tmp_path) == ["attacks/bad.py:3: noise = torch.randn(x.shape, generator=g)",
                                                   "attacks/bad.py:6: return torch.Generator().manual_seed(0)"]

