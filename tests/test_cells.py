"""A stored number is what it claims to be: the cell key holds everything that decides it, the
engine cannot be fooled by the code it runs, and any stored cell re-runs to the same bits."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_lite import cell, fingerprint, zoo
from robustbench_lite.attacks.base import Attack
from robustbench_lite.cell import CellConfig, ModelId
from robustbench_lite.checks import CheckConfig
from robustbench_lite.cli import main
from robustbench_lite.defenses.base import Defense
from robustbench_lite.errors import TamperingError
from robustbench_lite.engine import cell_configs, cell_keys, evaluate as evaluate_checked
from robustbench_lite.registry import ATTACKS, DEFENSES
from robustbench_lite.store import Store, StoreIntegrityError

from .conftest import evaluate


# --- the engine protects itself ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _GreyInPlace(Attack):
    """Writes mid-grey into the images it was handed and returns them: distance 0 from the
    edited tensor, far outside the budget from the real images."""

    batch_invariant = True

    def run(self, model, x, y, threat, generator):
        x.fill_(0.5)
        return x


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Relabel(Attack):
    """Leaves the images alone and shifts the labels it was handed."""

    batch_invariant = True

    def run(self, model, x, y, threat, generator):
        y.add_(1).remainder_(10)
        return x.clone()


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ZeroTheHead(Attack):
    """Weakens the model it attacks: the judge would see a broken classifier."""

    def run(self, model, x, y, threat, generator):
        with torch.no_grad():
            [m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight.zero_()
        return x.clone()


@dataclasses.dataclass(frozen=True, kw_only=True)
class _GreyDefense(Defense):
    """Greys its input in place (and returns it): the engine's reference images with it."""

    batch_invariant = True

    def transform(self, x, generator):
        with torch.no_grad():
            x.mul_(0).add_(0.5)
        return x


@pytest.fixture
def cheaters():
    ATTACKS.register("test_grey_in_place")(_GreyInPlace)
    ATTACKS.register("test_relabel")(_Relabel)
    ATTACKS.register("test_zero_head")(_ZeroTheHead)
    DEFENSES.register("test_grey_defense")(_GreyDefense)
    yield
    for name in ("test_grey_in_place", "test_relabel", "test_zero_head"):
        ATTACKS.unregister(name)
    DEFENSES.unregister("test_grey_defense")


def test_an_attack_that_edits_its_input_in_place_is_refused(cheaters, trained, fmnist_test):
    with pytest.raises(TamperingError, match="attack test_grey_in_place modified the images it was handed in place"):
        evaluate(trained, fmnist_test, ["test_grey_in_place"], [0.1], n=50)


def test_an_attack_that_changes_the_labels_is_refused(cheaters, trained, fmnist_test):
    with pytest.raises(TamperingError, match="attack test_relabel modified the labels it was handed"):
        evaluate(trained, fmnist_test, ["test_relabel"], [0.1], n=50)


def test_an_attack_that_edits_the_model_is_refused_and_the_model_is_untouched(cheaters, trained, fmnist_test):
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    with pytest.raises(TamperingError, match="changed during attack test_zero_head"):
        evaluate(trained, fmnist_test, ["test_zero_head"], [0.1], n=50)
    # The attack ran on the engine's private copy: the caller's model is as it was.
    assert all(torch.equal(v, before[k]) for k, v in trained.model.state_dict().items())


def test_a_defense_that_edits_its_input_in_place_is_refused(cheaters, trained, fmnist_test):
    with pytest.raises(TamperingError, match="defense test_grey_defense modified its input in place"):
        evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=50, defense=["test_grey_defense"])


def test_the_cli_names_the_cheater_and_exits_2(cheaters, trained, tmp_path, capsys):
    code = main(["eval", "--model", trained.name, "--attack", "test_grey_in_place", "--eps", "0.1", "--n", "20",
                 "--no-checks", "--store", str(tmp_path / "s.sqlite")])
    assert code == 2 and "modified the images it was handed in place" in capsys.readouterr().err
    with Store(tmp_path / "s.sqlite") as s:
        assert len(s) == 0  # nothing half-written


# --- the key holds everything that decides the bits ----------------------------------------


def _leaves(d, path=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(d, list) and d:
        for i, v in enumerate(d):
            yield from _leaves(v, path + (i,))
    else:
        yield path, d


def _other(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "x"
    if v is None:
        return 1
    return [*v, 1] if isinstance(v, list) else {"x": 1}


def test_key_changes_with_every_config_field(trained, fmnist_test):
    config = cell_configs(trained, fmnist_test, ["pgd:steps=5"], [0.05], n=50, defense=["jpeg"], mode="bpda")[0]
    d = config.to_dict()
    d["calibration"] = {"split": "train", "n": 10, "sha256": "ab"}  # a detector's, so that its fields count too
    base = CellConfig.from_dict(d)
    paths = list(_leaves(base.to_dict()))
    names = {p[0] for p, _ in paths}
    assert names == {f.name for f in dataclasses.fields(CellConfig)}  # every field, nested ones leaf by leaf
    keys = {base.key}
    for path, value in paths:
        changed = base.to_dict()
        target = changed
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = _other(value)
        if path == ("schema",):
            keys.add(cell.digest(changed))  # another schema is another key (and is refused by from_dict)
            continue
        keys.add(CellConfig.from_dict(changed).key)
    assert len(keys) == len(paths) + 1


def test_the_cpus_numeric_code_paths_are_pinned_and_in_the_key(trained, fmnist_test, monkeypatch):
    # MKL's branch is pinned on import unless the user chose one; either way the cell records it,
    # and the vector width torch runs at, so a cell computed on another code path is another cell.
    code = "import os, robustbench_lite; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    pinned = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "AVX2"
    chosen = subprocess.run([sys.executable, "-c", code], env=env | {"MKL_CBWR": "COMPATIBLE"}, capture_output=True,
                            text=True, check=True)
    assert chosen.stdout.strip() == "COMPATIBLE"
    config = cell_configs(trained, fmnist_test, ["fgsm"], [0.1], n=20)[0]
    assert config.versions["mkl_cbwr"] == os.environ["MKL_CBWR"]
    assert config.versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE" if config.versions["mkl_cbwr"] != "COMPATIBLE" else "AVX2")
    other = cell_configs(trained, fmnist_test, ["fgsm"], [0.1], n=20)[0]
    assert other.key != config.key and other.random_key == config.random_key  # another cell, the same draws


def test_the_same_weights_under_two_architectures_are_two_cells(trained, fmnist_test, tmp_path, capsys):
    # One state dict, two forward passes: the zoo's small CNN and a plugin architecture with the
    # same layers and another activation.
    weights = tmp_path / "w.pt"
    torch.save(trained.model.state_dict(), weights)
    plugin = tmp_path / "tanh_cnn.py"
    plugin.write_text(textwrap.dedent('''
        from torch import nn
        from robustbench_lite.registry import MODELS

        @MODELS.register("test_tanh_cnn")
        def tanh_cnn(info, **_):
            side = ((info.img_size + 2 - 4) // 2 + 1 + 2 - 4) // 2 + 1
            return nn.Sequential(nn.Conv2d(info.in_chans, 16, 4, 2, 1), nn.Tanh(), nn.Conv2d(16, 32, 4, 2, 1), nn.Tanh(),
                                 nn.Flatten(), nn.Linear(32 * side * side, 100), nn.Tanh(), nn.Linear(100, info.num_classes))
    '''))
    store = tmp_path / "s.sqlite"
    common = ["eval", "--checkpoint", str(weights), "--dataset", "fmnist", "--attack", "fgsm", "--eps", "0.05", "--n", "200",
              "--no-checks", "--json", "--store", str(store), "--plugin", str(plugin)]
    assert main(common + ["--arch", "smallcnn"]) == 0
    relu = json.loads(capsys.readouterr().out)
    assert main(common + ["--arch", "test_tanh_cnn"]) == 0
    tanh = json.loads(capsys.readouterr().out)
    with Store(store) as s:
        assert len(s) == 2
        archs = {s.config(k)["model"]["arch"] for k in s.keys()}
    assert archs == {"smallcnn", "test_tanh_cnn"}
    assert (relu["clean_acc"], relu["robust_acc"]) != (tanh["clean_acc"], tanh["robust_acc"])


class _Tempered(nn.Module):
    """A classifier whose logits are divided by a plain (non-tensor) attribute."""

    def __init__(self, net: nn.Module, temperature: float):
        super().__init__()
        self.net = net
        self.temperature = temperature

    def forward(self, x):
        return self.net(x) / self.temperature


def test_what_the_weights_do_not_show_is_in_the_model_identity(trained, fmnist_test):
    def arch(model):
        return cell_configs(model, fmnist_test, ["fgsm"], [0.1], n=20)[0].model.arch_sha256

    net = copy.deepcopy(trained.model)
    base = arch(_Tempered(net, 1.0))
    assert arch(_Tempered(net, 1.0)) == base  # the fingerprint is a function of the model, not of the object
    assert arch(_Tempered(net, 100.0)) != base  # an attribute
    patched = _Tempered(net, 1.0)
    patched.forward = lambda x: patched.net(x) * 0  # noqa: E731 - a monkeypatched forward
    assert arch(patched) != base
    hooked = _Tempered(net, 1.0)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert arch(hooked) != base


def test_a_batch_coupled_model_is_keyed_by_the_batch_size(trained, fmnist_test):
    class BatchNormed(nn.Module):  # normalises the logits over the batch: a point's output depends on its batch-mates
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            z = self.net(x)
            return (z - z.mean(0)) / (z.std(0) + 1e-3) if len(z) > 1 else z

    plain = cell_configs(trained, fmnist_test, ["pgd:steps=5"], [0.1], n=50, batch_size=100)[0]
    assert plain.batch_size is None
    coupled = [cell_configs(BatchNormed(trained.model), fmnist_test, ["pgd:steps=5"], [0.1], n=50, batch_size=b)[0] for b in (100, 500)]
    assert [c.batch_size for c in coupled] == [100, 500] and coupled[0].key != coupled[1].key


def test_batch_size_threads_and_cell_order_change_no_bit(trained, fmnist_test):
    # Every in-tree attack here draws from per-point streams: chunking cannot change a draw.
    attacks = ["pgd:steps=10,restarts=2", "square:queries=200", "apgd_dlr:targets=2,steps=10", "pgd:target=random,steps=5"]
    threads = torch.get_num_threads()
    runs = {}
    try:
        for batch, nthreads, eps in ((500, 2, [0.05, 0.1]), (100, 2, [0.1, 0.05]), (500, 1, [0.05, 0.1]), (33, 1, [0.1, 0.05])):
            torch.set_num_threads(nthreads)
            rows = evaluate(trained, fmnist_test, attacks, eps, n=100, batch_size=batch)
            runs[(batch, nthreads)] = {r.eps: r for r in rows}
    finally:
        torch.set_num_threads(threads)
    base = runs[(500, 2)]
    for got in runs.values():
        for e in (0.05, 0.1):
            assert got[e].key == base[e].key
            assert np.array_equal(got[e].robust, base[e].robust)
    assert 0.0 < base[0.1].robust_acc < base[0.05].robust_acc  # the attacks did work at both eps


def test_an_attack_that_is_not_batch_invariant_is_keyed_by_the_batch_size(trained, fmnist_test):
    # Foolbox draws one random start for the whole batch, and L-BFGS-B optimises the batch jointly.
    for spec in ("fb:LinfPGD:steps=5", "lbfgs:search_steps=1,max_iter=5"):
        keys = [cell_keys(trained, fmnist_test, [spec], [0.1], n=50, batch_size=b)[0] for b in (100, 500)]
        assert keys[0] != keys[1], spec
    assert len({cell_keys(trained, fmnist_test, ["pgd"], [0.1], n=50, batch_size=b)[0] for b in (100, 500)}) == 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LyingNoise(Attack):
    """Declares batch_invariant but draws from torch's global generator, one draw per batch."""

    batch_invariant = True

    def run(self, model, x, y, threat, generator):
        return threat.project(x + threat.eps * (torch.rand(x.shape) - 0.5).sign(), x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _HonestNoise(Attack):
    """Declares batch_invariant and draws each point's noise from its own stream."""

    batch_invariant = True

    def run(self, model, x, y, threat, generator):
        return threat.project(x + threat.eps * (2 * generator.random(x.shape[1:]) - 1), x)


def test_a_plugins_batch_invariance_is_tested_before_it_is_believed(trained, fmnist_test):
    ATTACKS.register("test_lying_noise")(_LyingNoise)
    ATTACKS.register("test_honest_noise")(_HonestNoise)
    try:
        _keys_of_lying_and_honest(trained, fmnist_test)
    finally:
        ATTACKS.unregister("test_lying_noise")
        ATTACKS.unregister("test_honest_noise")


def _keys_of_lying_and_honest(trained, fmnist_test):
    lying = cell_configs(trained, fmnist_test, [_LyingNoise()], [0.1], n=50, batch_size=100)[0]
    honest = cell_configs(trained, fmnist_test, [_HonestNoise()], [0.1], n=50, batch_size=100)[0]
    assert lying.batch_size == 100 and honest.batch_size is None


def test_a_user_package_named_like_an_old_method_folder_is_not_believed(trained, fmnist_test, monkeypatch):
    # Only robustbench_lite's own methods are believed: a user's package called ``attacks`` (the
    # name the method folder had before the one-namespace move) is tested like any plugin.
    monkeypatch.setattr(_LyingNoise, "__module__", "attacks.lying_noise")
    ATTACKS.register("test_lying_noise")(_LyingNoise)
    try:
        assert cell_configs(trained, fmnist_test, [_LyingNoise()], [0.1], n=50, batch_size=100)[0].batch_size == 100
    finally:
        ATTACKS.unregister("test_lying_noise")


def test_a_random_defense_is_keyed_by_the_batch_size(trained, fmnist_test):
    configs = [cell_configs(trained, fmnist_test, ["pgd"], [0.1], n=50, batch_size=b, defense=["gaussian_noise"])[0]
               for b in (100, 500)]
    assert [c.batch_size for c in configs] == [100, 500]
    assert cell_configs(trained, fmnist_test, ["pgd"], [0.1], n=50, batch_size=7, defense=["jpeg"])[0].batch_size is None


def test_a_cells_draws_are_seeded_without_any_code_fingerprint(trained, fmnist_test):
    # A purifier's own model (arch_sha256), a transfer attack's surrogate (surrogate_arch_sha256):
    # every fingerprint of code, at any method, leaves the draws alone; weights and settings do not.
    d = cell_configs(trained, fmnist_test, ["fgsm"], [0.1], n=20)[0].to_dict()
    d["attacks"][0] |= {"surrogate_arch_sha256": "a" * 64, "surrogate_sha256": "b" * 64}
    d["defenses"] = [{"defense": "magnet_reformer", "model": "dae", "weights_sha256": "c" * 64,
                      "arch_sha256": "d" * 64, "code_sha256": "e" * 64}]
    base = CellConfig.from_dict(d)
    for path in (("attacks", 0, "surrogate_arch_sha256"), ("attacks", 0, "code_sha256"), ("defenses", 0, "arch_sha256"),
                 ("defenses", 0, "code_sha256"), ("model", "arch_sha256"), ("engine_sha256",)):
        changed = json.loads(json.dumps(d))
        *up, last = path
        target = changed
        for k in up:
            target = target[k]
        target[last] = "f" * 64
        other = CellConfig.from_dict(changed)
        assert other.key != base.key and other.random_key == base.random_key, path
    for path in (("attacks", 0, "surrogate_sha256"), ("defenses", 0, "weights_sha256"), ("defenses", 0, "model")):
        changed = json.loads(json.dumps(d))
        changed[path[0]][path[1]][path[2]] = "f" * 64
        assert CellConfig.from_dict(changed).random_key != base.random_key, path


def test_a_detector_refit_under_edited_code_draws_the_same_numbers(trained, fmnist_test, monkeypatch):
    # rbl verify re-runs a stored cell under today's code. A detector behind a random defense is
    # fitted through that defense's noise; the fit is redone for the new code (its cache is keyed
    # by it) but with the same draws, so an edit that changes no arithmetic changes no threshold.
    from robustbench_lite.defenses.base import chain
    from robustbench_lite.engine import deploy

    *pre, detector = chain(["gaussian_noise", "feature_squeeze:calibration=300"])
    calib = fmnist_test.last(300)
    before = deploy.fitted_detector(detector, trained, tuple(pre), calib, 0)
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: real(p) + (b"\n# an edit\n" if p.suffix == ".py" else b""))
    fingerprint.clear()
    try:
        cached = len(deploy._FITTED)
        after = deploy.fitted_detector(detector, trained, tuple(pre), calib, 0)
        assert len(deploy._FITTED) == cached + 1  # fitted again under the new code, not served from the cache
        assert after.threshold == before.threshold and after.scale == before.scale
        other_seed = deploy.fitted_detector(detector, trained, tuple(pre), calib, 1)
        assert other_seed.threshold != before.threshold  # the draws do move the threshold
    finally:
        monkeypatch.undo()
        fingerprint.clear()


# --- a code change invalidates exactly what it touches -----------------------------------


def test_a_changed_method_source_reruns_only_its_cells(trained, fmnist_test, tmp_path, monkeypatch):
    pgd_file = Path(sys.modules[ATTACKS.get("pgd").obj.__module__].__file__)
    with Store(tmp_path / "s.sqlite") as store:
        before = {a: evaluate(trained, fmnist_test, [a], [0.1], n=50, store=store)[0] for a in ("pgd:steps=5", "fgsm")}
        assert len(store) == 2
        real = Path.read_bytes

        def edited(path: Path) -> bytes:  # attacks/pgd.py as it would read after an edit
            return real(path) + (b"\n# an edit\n" if path == pgd_file else b"")

        monkeypatch.setattr(Path, "read_bytes", edited)
        fingerprint.clear()
        try:
            after = {a: evaluate(trained, fmnist_test, [a], [0.1], n=50, store=store)[0] for a in ("pgd:steps=5", "fgsm")}
            assert after["fgsm"].key == before["fgsm"].key  # served from the store, not re-run
            assert after["pgd:steps=5"].key != before["pgd:steps=5"].key  # re-run under its new code
            assert len(store) == 3
            # An edit to a module every attack runs (the shared gradient loop) re-runs them all.
            shared = Path(sys.modules["robustbench_lite.attacks.base"].__file__)
            monkeypatch.setattr(Path, "read_bytes", lambda p: real(p) + (b"\n# an edit\n" if p == shared else b""))
            fingerprint.clear()
            assert cell_keys(trained, fmnist_test, ["fgsm"], [0.1], n=50)[0] != before["fgsm"].key
            # The modules that only compute keys and provenance re-run nothing.
            inert = Path(sys.modules["robustbench_lite.provenance"].__file__)
            monkeypatch.setattr(Path, "read_bytes", lambda p: real(p) + (b"\n# an edit\n" if p == inert else b""))
            fingerprint.clear()
            assert cell_keys(trained, fmnist_test, ["fgsm"], [0.1], n=50)[0] == before["fgsm"].key
        finally:
            monkeypatch.undo()
            fingerprint.clear()


PLUGIN = '''
import dataclasses
from robustbench_lite.attacks.base import Attack
from robustbench_lite.registry import ATTACKS

@ATTACKS.register("test_shift")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Shift(Attack):
    batch_invariant = True

    def run(self, model, x, y, threat, generator):
        return threat.project(x + {step} * threat.eps, x)
'''


def test_a_plugin_whose_code_changes_under_the_same_name_is_rerun(trained, tmp_path):
    plugin, store = tmp_path / "shift.py", tmp_path / "s.sqlite"

    def rbl() -> dict:
        cmd = [sys.executable, "-m", "robustbench_lite.cli", "eval", "--model", trained.name, "--attack", "test_shift",
               "--eps", "0.1", "--n", "200", "--no-checks", "--json", "--store", str(store), "--plugin", str(plugin)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        return json.loads(done.stdout)

    plugin.write_text(PLUGIN.format(step=1))
    first = rbl()
    again = rbl()  # the same file: served from the store
    assert again["seconds"] == first["seconds"]
    plugin.write_text(PLUGIN.format(step=-1))  # another algorithm under the same registered name
    changed = rbl()
    assert changed["seconds"] != first["seconds"] and changed["robust_acc"] != first["robust_acc"]
    with Store(store) as s:
        assert len(s) == 2


# --- verdicts are keyed by their own settings ------------------------------------------------


def test_check_settings_change_the_verdicts_key_not_the_cells(trained, fmnist_test, tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        # Not escalated: whether a check on 20 points fails depends on the fixture's weights, and an
        # escalated row is another cell; what is tested here is the keys of cells and verdicts.
        a = evaluate_checked(trained, fmnist_test, ["pgd:steps=5"], [0.05, 0.1], n=60, store=store,
                             checks=CheckConfig(n=20, steps=5), escalate=None)
        b = evaluate_checked(trained, fmnist_test, ["pgd:steps=5"], [0.05, 0.1], n=60, store=store,
                             checks=CheckConfig(n=40, steps=5), escalate=None)
        assert [r.key for r in a] == [r.key for r in b] and len(store) == 2  # the cells are shared
        sets = store.checks_of(a[0].key)
        assert len(sets) == 2 and sets[0][0] != sets[1][0]
        assert [s[1]["settings"]["n"] for s in sets] == [20, 40]
        c = evaluate_checked(trained, fmnist_test, ["pgd:steps=5"], [0.05, 0.1], n=60, store=store,
                             checks=CheckConfig(n=40, steps=5), escalate=None)
        assert c[0].checks == b[0].checks and len(store.checks_of(a[0].key)) == 2  # served, not re-run


# --- the store checks itself -----------------------------------------------------------------


def _tamper(path: Path, sql: str, *args) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, args)
    db.close()


def test_a_row_that_is_not_what_its_key_says_is_refused(trained, fmnist_test, tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        r = evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=50, store=store)[0]
        with pytest.raises(StoreIntegrityError, match="refusing to store"):
            store.put(dataclasses.replace(r, key="0" * 64), store.config(r.key))
    config = json.loads(sqlite3.connect(path).execute("SELECT config FROM results").fetchone()[0])
    _tamper(path, "UPDATE results SET config = ? WHERE key = ?", cell.canonical(config | {"eps": 0.2}), r.key)
    with Store(path) as store, pytest.raises(StoreIntegrityError, match="has a config that hashes to"):
        store.get(r.key)
    _tamper(path, "UPDATE results SET config = ? WHERE key = ?", cell.canonical(config), r.key)
    row = json.loads(sqlite3.connect(path).execute("SELECT row FROM results").fetchone()[0])
    _tamper(path, "UPDATE results SET row = ? WHERE key = ?", json.dumps(row | {"robust_acc": 0.99}), r.key)
    with Store(path) as store, pytest.raises(StoreIntegrityError, match="robust bits"):
        store.results()


# --- rbl verify --------------------------------------------------------------------------


def test_verify_reproduces_a_profile_run_and_catches_a_tampered_row(trained, tmp_path, capsys):
    from robustbench_lite import profiles

    prof = profiles.Profile("tiny", models=(trained.name,), attacks=("fgsm", "pgd:steps=5"), eps=(0.0, 0.1), n=100)
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        profiles.run(prof, store)
        assert len(store) == 6  # 2 attacks and their worst case, at 2 eps
    assert main(["verify", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    # The 6 cells and the one set of masking-check verdicts of the model's first attack.
    assert "7 of 7 rows identical" in out and "worst case" in out and "| checks |" in out
    assert main(["verify", "--store", str(path), "--sample", "2", "--seed", "3"]) == 0
    assert "2 of 2 rows identical" in capsys.readouterr().out
    # Turn a failed or passed check into its opposite: the re-run says so.
    key, verdicts = sqlite3.connect(path).execute("SELECT key, verdicts FROM checks").fetchone()
    edited = json.loads(verdicts)
    flip = next(v for v in edited if v["passed"] is not None)
    flip["passed"] = not flip["passed"]
    _tamper(path, "UPDATE checks SET verdicts = ? WHERE key = ?", json.dumps(edited), key)
    assert main(["verify", "--store", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{flip['name']}: " in out and "6 of 7 rows identical" in out
    _tamper(path, "UPDATE checks SET verdicts = ? WHERE key = ?", verdicts, key)
    # Flip one robust bit of one cell: verify re-runs it and names the difference.
    key, bits, n = sqlite3.connect(path).execute(
        "SELECT key, robust, json_extract(row, '$.n') FROM results WHERE json_extract(config, '$.eps') = 0.1 "
        "AND json_extract(config, '$.kind') IS NULL LIMIT 1").fetchone()
    flipped = np.unpackbits(np.frombuffer(bits, np.uint8))
    flipped[n + 3] ^= 1  # a top-5 bit: the row's accuracies still match its robust bits
    _tamper(path, "UPDATE results SET robust = ? WHERE key = ?", np.packbits(flipped).tobytes(), key)
    assert main(["verify", "--store", str(path)]) == 1
    out = capsys.readouterr().out
    # The edited cell, and the worst case that no longer recombines from it.
    assert out.count("MISMATCH") == 2 and "top-5 bits differ at 1 of 100 points" in out and "5 of 7 rows identical" in out
    assert f"`{key[:12]}` | cell" in out


def test_verify_says_what_is_missing(trained, fmnist_test, tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        evaluate(_Tempered(trained.model, 2.0), fmnist_test, ["fgsm"], [0.1], n=20, store=store)
    assert main(["verify", "--store", str(path)]) == 1
    assert "unavailable" in capsys.readouterr().out
    assert main(["verify", "--store", str(tmp_path / "nothing.sqlite")]) == 2


# --- model identity in reports, old stores, manifests ----------------------------------------


def test_reports_read_cards_from_the_store_and_show_two_weight_sets_apart(trained, fmnist_test, tmp_path):
    from robustbench_lite import profiles
    from robustbench_lite.train import TrainConfig, train

    path = tmp_path / "s.sqlite"
    other = tmp_path / "other"
    card = train(TrainConfig(arch="smallcnn", epochs=1, train_subset=1000, seed=11), out=other)
    retrained = dataclasses.replace(zoo.load_checkpoint(other), name=trained.name)  # the same name, other weights
    with Store(path) as store:
        for lm in (trained, retrained):
            evaluate(lm, fmnist_test, ["fgsm"], [0.1], n=50, store=store)
        assert {m["weights_sha256"] for m in store.models()} == {trained.weights_sha256, card.weights_sha256}
        written = profiles.write_reports(store, tmp_path / "rep")
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert f"{trained.name}@{trained.weights_sha256[:8]}" in md and f"{trained.name}@{card.weights_sha256[:8]}" in md
    pages = sorted(p.name for p in (tmp_path / "rep" / "models").glob("*.html"))
    assert len(pages) == 2
    page = (tmp_path / "rep" / "models" / f"{trained.name}_{card.weights_sha256[:8]}.html").read_text()
    assert card.weights_sha256 in page and trained.weights_sha256 not in page  # each page its own card
    manifest = json.loads((tmp_path / "rep" / "manifest.json").read_text())
    assert {c["weights_sha256"] for c in manifest["cells"]} == {trained.weights_sha256, card.weights_sha256}
    assert manifest["machine"]["cpu"] and "torch" in manifest["versions"] and "commit" in manifest
    assert tmp_path / "rep" / "manifest.json" in written


def test_an_old_store_is_kept_but_never_served(trained, fmnist_test, tmp_path, capsys):
    path = tmp_path / "old.sqlite"
    fresh = evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=50)[0]
    old_config = {"model": trained.name, "weights_sha256": trained.weights_sha256, "dataset": "fmnist", "defense": [],
                  "attacks": [{"attack": "fgsm"}], "norm": "linf", "n": 50, "data_sha256": fresh.data_sha256, "seed": 0,
                  "versions": {"robustbench_lite": "0.1.0"}, "eps": 0.1}
    text = json.dumps(old_config, sort_keys=True)
    key = cell.digest(text)
    db = sqlite3.connect(path)  # the first release's table, as an old store has it
    db.execute("CREATE TABLE results (key TEXT PRIMARY KEY, created TEXT NOT NULL DEFAULT (datetime('now')), "
               "config TEXT NOT NULL, row TEXT NOT NULL, robust BLOB NOT NULL)")
    record = {k: v for k, v in dataclasses.replace(fresh, key=key).to_record().items() if k != "combined_from"}
    db.execute("INSERT INTO results (key, config, row, robust) VALUES (?, ?, ?, ?)",
               (key, text, json.dumps(record), np.packbits(np.concatenate([fresh.robust, fresh.robust_top5_mask])).tobytes()))
    db.commit()
    db.close()
    with Store(path) as store:
        assert len(store) == 0 and store.results() == [] and store.get(key) is None
        assert [k for k, _, _ in store.legacy()] == [key]
        again = evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=50, store=store)[0]
        assert again.key != key and len(store) == 1 and len(store.legacy()) == 1
    assert main(["verify", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "legacy cell" in out and "2 of 2 rows identical" in out


def test_cell_config_round_trips_and_refuses_what_it_does_not_know(trained, fmnist_test):
    config = cell_configs(trained, fmnist_test, ["pgd"], [math.inf], n=10, norm="l2")[0]
    assert CellConfig.from_dict(config.to_dict()) == config and config.to_dict()["eps"] == "inf"
    with pytest.raises(ValueError, match="schema"):
        CellConfig.from_dict(config.to_dict() | {"schema": 1})
    with pytest.raises(ValueError, match="unknown"):
        CellConfig.from_dict(config.to_dict() | {"surprise": 1})
    with pytest.raises(ValueError, match="NaN"):
        cell.canonical({"eps": float("nan")})
    assert isinstance(config.model, ModelId) and config.model.short == f"{trained.name}@{trained.weights_sha256[:8]}"
