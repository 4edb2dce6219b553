"""Generative models (ae, dae, vae, gan): training, checkpoints and cards, bad input, the
pictures the report draws, and the purification defenses built on them."""
from __future__ import annotations

import json

import pytest
import torch

from robustbench_lite.generative import base as generative
from robustbench_lite.cli import main
from robustbench_lite.defenses.base import chain
from robustbench_lite.registry import DEFENSES, GENERATIVE
from robustbench_lite.store import Store
from robustbench_lite.zoo import CheckpointError

from .conftest import evaluate

KINDS = ["ae", "dae", "vae", "gan"]


def test_registry_holds_the_issue_models():
    assert set(GENERATIVE.names()) == set(KINDS)


@pytest.fixture(scope="module")
def x(fmnist_test):
    return fmnist_test.first(64).floats()


@pytest.mark.parametrize("kind,kw", [("ae", {}), ("dae", {}), ("vae", {}), ("vae", {"likelihood": "gaussian"}),
                                     ("gan", {"width": 16}), ("gan", {"width": 16, "loss": "wgan-gp", "n_critic": 2})])
def test_trains_saves_and_reloads_bit_identical(kind, kw, tmp_path, x):
    lg = generative.train(kind, epochs=1, train_subset=600, test_n=200, classifier=None, out=tmp_path / kind, **kw)
    again = generative.load(str(tmp_path / kind))
    assert again.card == lg.card and again.card.kind == kind and again.card.weights_sha256
    assert again.card.curves and all(torch.isfinite(torch.tensor(v)) for v in again.card.curves[-1].values())
    for k, v in kw.items():
        assert again.card.hyperparameters[k] == v
    m, m2 = lg.model.eval(), again.model
    with torch.no_grad():
        if "reconstruct" in m.abilities:
            r = m.reconstruct(x)
            assert r.shape == x.shape and 0 <= r.min() and r.max() <= 1
            assert torch.equal(r, m2.reconstruct(x))
        if "sample" in m.abilities:
            s = m.sample(8, torch.Generator().manual_seed(0))
            assert s.shape == (8, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
            assert torch.equal(s, m2.sample(8, torch.Generator().manual_seed(0)))
    assert not any(p.requires_grad for p in m2.parameters())  # a loaded model is frozen


def test_training_is_reproducible_and_learns(tmp_path, x):
    a = generative.train("vae", epochs=2, train_subset=1000, test_n=300, classifier=None, out=tmp_path / "a")
    b = generative.train("vae", epochs=2, train_subset=1000, test_n=300, classifier=None, out=tmp_path / "b")
    assert a.card.weights_sha256 == b.card.weights_sha256
    untrained = generative.build("vae", "fmnist").eval()
    with torch.no_grad():
        assert a.model.elbo(x, torch.Generator().manual_seed(0)).mean() > untrained.elbo(x, torch.Generator().manual_seed(0)).mean() + 50
    # A Bernoulli ELBO is a log-probability bound: never positive.
    assert a.card.metrics["test_elbo"] < 0


def test_card_metrics_use_a_classifier(trained, tmp_path):
    lg = generative.train("dae", epochs=1, train_subset=1000, test_n=300, classifier="smallcnn-fmnist-standard",
                          out=tmp_path / "dae")
    m = lg.card.metrics
    assert m["classifier"] == "smallcnn-fmnist-standard"
    assert 0 < m["classifier_acc_on_reconstructions"] <= 1 and 0.5 < m["classifier_clean_acc"] <= 1
    g = generative.train("gan", epochs=1, train_subset=600, test_n=200, classifier="smallcnn-fmnist-standard",
                         out=tmp_path / "gan", width=16)
    assert 0.1 <= g.card.metrics["classifier_confidence_on_samples"] <= 1
    assert sum(g.card.metrics["sample_class_histogram"]) == 200


def test_wgan_critic_has_no_batch_norm():
    m = generative.build("gan", "fmnist", loss="wgan-gp")
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.D.modules())
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in generative.build("gan", "fmnist").D.modules())


@pytest.mark.parametrize("call,match", [
    (lambda: generative.build("vea", "fmnist"), "unknown generative model 'vea'; did you mean 'vae'"),
    (lambda: generative.build("vae", "svhn"), "unknown dataset 'svhn'"),
    (lambda: generative.build("vae", "fmnist", latent=0), "vae: latent must be an integer >= 1, got 0"),
    (lambda: generative.build("vae", "fmnist", likelihood="poisson"), "vae: likelihood must be one of bernoulli, gaussian"),
    (lambda: generative.build("gan", "fmnist", loss="hinge"), "gan: loss must be one of gan, wgan-gp"),
    (lambda: generative.build("vae", "fmnist", depth=3), "bad hyperparameters {'depth': 3} for generative model 'vae'"),
    (lambda: generative.build("dae", "fmnist", noise=-0.1), "noise must be a number in"),
    (lambda: generative.train("vae", epochs=0), "epochs must be an integer >= 1, got 0"),
    (lambda: generative.train("vae", lr=float("nan")), "lr must be"),
    (lambda: generative.load("vae-svhn"), "must look like <kind>-<dataset>"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_untrained_and_corrupt_checkpoints_are_refused(tmp_path):
    with pytest.raises(generative.GenerativeNotTrainedError, match="rbl train-generative --model ae --dataset mnist"):
        generative.load("ae-mnist")
    generative.train("ae", epochs=1, train_subset=300, test_n=100, classifier=None, out=tmp_path / "ae")
    weights = tmp_path / "ae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="is corrupt"):
        generative.load(str(tmp_path / "ae"))


def test_wrong_image_shape_is_named(generative_zoo):
    model = generative.load(generative_zoo["vae"]).model
    with pytest.raises(ValueError, match=r"trained on images of shape \(1, 28, 28\), got \(2, 3, 32, 32\)"):
        model.reconstruct(torch.rand(2, 3, 32, 32))


def test_pictures_become_an_artifact_and_a_figure(tmp_path, fmnist_test):
    from robustbench_lite.reporting.galleries import generative_gallery

    with Store(tmp_path / "s.sqlite") as store:
        for kind in ("vae", "gan"):
            generative.train(kind, epochs=1, train_subset=300, test_n=100, classifier=None, out=tmp_path / kind,
                             store=store, **({"width": 16} if kind == "gan" else {}))
        arts = {meta["kind"]: t for _, meta, t in store.artifacts("generative")}
        assert set(arts["vae"]) == {"originals", "reconstructions", "samples", "interpolation"}
        assert set(arts["gan"]) == {"samples", "interpolation"}
        assert arts["vae"]["interpolation"].shape == (8, 1, 28, 28)
        assert torch.equal(arts["vae"]["originals"], fmnist_test.first(8).floats())
        png = generative_gallery(store, tmp_path / "g.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_trains_lists_and_refuses(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(["train-generative", "--model", "vae:latent=4", "--epochs", "1", "--train-subset", "300",
                 "--classifier", "none", "--out", str(out), "--store", str(tmp_path / "s.sqlite")]) == 0
    assert "vae-fmnist: test_n 2000, test_elbo" in capsys.readouterr().out
    assert json.loads((out / "card.json").read_text())["hyperparameters"]["latent"] == 4
    assert main(["list", "generative"]) == 0
    assert "vae" in capsys.readouterr().out
    assert main(["train-generative", "--model", "vae:latent=0", "--out", str(tmp_path / "bad")]) == 2
    assert "vae: latent must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["train-generative", "--model", "gann"]) == 2
    assert "did you mean 'gan'" in capsys.readouterr().err


# --- purifiers -------------------------------------------------------------------------


@pytest.mark.parametrize("spec,match", [
    ("vae_purify:model=gan-fmnist", "vae_purify: model 'gan-fmnist' is a gan, which cannot reconstruct; allowed kinds: ae, dae, vae"),
    ("defense_gan:model=dae-fmnist", "defense_gan: model 'dae-fmnist' is a dae, which cannot sample"),
    ("defense_gan:steps=0", "defense_gan: steps must be an integer >= 1, got 0"),
    ("magnet:norms=l3", "magnet_detector: norms must be l1, l2 or l1\\+l2, got 'l3'"),
    ("magnet:fpr=2", r"magnet_detector: fpr must be a number in \(0, 1\), got 2"),
])
def test_bad_purifier_specs(generative_zoo, spec, match):
    with pytest.raises(ValueError, match=match):
        chain([spec])


def test_untrained_purifier_model_names_the_command():
    with pytest.raises(generative.GenerativeNotTrainedError, match="rbl train-generative --model vae --dataset mnist"):
        chain(["vae_purify:model=vae-mnist"])


def test_magnet_expands_to_reformer_then_detector(generative_zoo):
    parts = chain(["jpeg", "magnet"])
    assert [DEFENSES.name_of(type(p)) for p in parts] == ["jpeg", "magnet_reformer", "magnet_detector"]
    assert parts[2].fpr == 0.001  # the paper's rate
    # The store key follows the autoencoder's weights.
    assert parts[1].config()["weights_sha256"] == generative.load(generative_zoo["dae"]).weights_sha256


def test_purifier_modes_are_keyed_apart_and_the_strongest_is_ranked(generative_zoo, trained, fmnist_test, tmp_path):
    from robustbench_lite.reporting.leaderboard import markdown, table

    kw = dict(n=60, defense=["vae_purify"])
    with Store(tmp_path / "s.sqlite") as store:
        rows = {mode: evaluate(trained, fmnist_test, ["pgd:steps=10"], [0.1], mode=mode, store=store, **kw)[0]
                for mode in ("adaptive", "bpda", "oblivious")}
        t = table(store).set_index("mode")
        md = markdown(store)
    strongest = min(("adaptive", "bpda"), key=lambda m: rows[m].robust_acc)
    assert t.loc[strongest, "rank"] == 1
    assert t["rank"].notna().sum() == 1  # one ranked row per defense
    assert t.loc[strongest, "oblivious_acc"] == rows["oblivious"].robust_acc
    assert "oblivious %" in md
    assert len({r.key for r in rows.values()}) == 3
    assert {r.mode for r in rows.values()} == {"adaptive", "bpda", "oblivious"}
    assert rows["adaptive"].clean_acc == rows["bpda"].clean_acc == rows["oblivious"].clean_acc
    # Attacking through the purifier beats attacking the bare model and hoping it transfers.
    assert min(rows["adaptive"].robust_acc, rows["bpda"].robust_acc) < rows["oblivious"].robust_acc


def test_magnet_joint_attack_is_caught_less_than_the_oblivious_one(generative_zoo, trained, fmnist_test):
    from robustbench_lite import data

    kw = dict(n=100, defense=["magnet:calibration=1000,fpr=0.05"], calibration=data.load("fmnist", "train"))
    attack = ["pgd:steps=20,early_stop=False"]
    oblivious = evaluate(trained, fmnist_test, attack, [0.1], mode="oblivious", **kw)[0]
    joint = evaluate(trained, fmnist_test, attack, [0.1], mode="adaptive", **kw)[0]
    assert oblivious.caught is not None and joint.caught is not None
    assert joint.robust_acc <= oblivious.robust_acc, (joint.robust_acc, oblivious.robust_acc)
    assert joint.caught <= oblivious.caught


def test_defense_gan_backward_is_the_projector_onto_the_generators_tangent_space(generative_zoo, fmnist_test):
    from robustbench_lite.defenses.base import Defense
    from robustbench_lite.views import Defended

    (dgan,) = chain(["defense_gan:steps=10,restarts=2"])
    x = fmnist_test.first(4).floats().requires_grad_(True)
    out = dgan.bpda(x, torch.Generator().manual_seed(0))
    assert torch.equal(out.detach(), dgan.transform(x.detach(), torch.Generator().manual_seed(0)))

    def back(u: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(out, x, u, retain_graph=True)
        return g

    u = torch.randn_like(x)
    pu = back(u)
    # An orthogonal projector of rank <= the latent size (32): idempotent, symmetric, shrinking.
    assert torch.allclose(back(pu), pu, atol=1e-3 * pu.abs().max().item())
    assert abs(float((pu * (u - pu)).sum())) < 1e-2 * float(u.pow(2).sum())
    assert float(pu.norm()) < 0.5 * float(u.norm())
    # --mode bpda keeps the identity, the plain approximation.
    (g,) = torch.autograd.grad(Defense.bpda(dgan, x, None), x, u)
    assert torch.equal(g, u)
    surface = Defended(torch.nn.Flatten(), [dgan]).surface(1)
    (g,) = torch.autograd.grad(surface(x), x, u.flatten(1))
    assert not torch.allclose(g, u)


def test_latent_attack_on_a_gan_moves_the_reconstruction_onto_x(generative_zoo, trained, fmnist_test):
    from robustbench_lite import specs
    from robustbench_lite.threat import Threat

    x, y = fmnist_test.first(32).floats(), fmnist_test.labels[:32]
    threat = Threat("linf", 0.1)
    adv = specs.attack("latent:source=gan-fmnist,anchor=reconstruction,steps=20,invert_steps=20,invert_restarts=2")(
        trained.model, x, y, threat)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        clean, fooled = (trained.model(x).argmax(1) == y), (trained.model(adv).argmax(1) != y)
    assert (clean & fooled).sum() >= 3, (clean.sum(), (clean & fooled).sum())
