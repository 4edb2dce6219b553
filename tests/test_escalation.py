"""Escalation: a failed gradient-masking check makes the engine climb the ladder of attacks that
answer it, and a number whose checks still fail is never ranked.

The masked models are built here, each hiding the gradient of the trained fixture another way;
each is evaluated with PGD alone and must end within 5 points of what ``strong`` gives the
unmasked fixture (the masks change no decision, so the unmasked model's number is the truth the
escalation has to find). No transfer surrogate is used (``surrogates=()``): the in-model steps
have to do it.
"""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from torch import nn

from robustbench_lite import escalation, zoo
from robustbench_lite.checks import CHECKS, CheckConfig
from robustbench_lite.checks.suite import dynamic
from robustbench_lite.cli import EXIT_CHECKS, main
from robustbench_lite.defenses.base import Defense
from robustbench_lite.engine import evaluate
from robustbench_lite.escalation import LADDER, STEPS, EscalationConfig
from robustbench_lite.registry import DEFENSES
from robustbench_lite.store import Store

N, EPS = 100, 0.1
CHECKS_FAST = CheckConfig(n=50, steps=10, queries=300, binarization=10)
LADDER_FAST = EscalationConfig(steps=30, queries=1000, surrogates=(), eot=3)
# The escalated number of a masked model against strong's on the unmasked one, in accuracy.
MARGIN = 0.05


class _Saturated(nn.Module):
    """A sharp softmax on the classifier's logits: cross-entropy's gradient underflows to zero."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(100 * self.model(x), dim=1)


class _ZeroBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class _Gate(nn.Module):
    def forward(self, x):
        return _ZeroBackward.apply(x)


class _ZeroLayer(nn.Module):
    """The classifier with a layer whose backward pass is zero in the middle of its network."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        layers = list(model.net)
        self.model.net = nn.Sequential(*layers[:2], _Gate(), *layers[2:])

    def forward(self, x):
        return self.model(x)


class _TestTimeOptimised(nn.Module):
    """Lowers its own prediction entropy by a signed gradient step on the input, inside forward, and
    classifies the detached result: a test-time defense whose gradient is zero."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = x.detach()
        with torch.enable_grad():
            for _ in range(1):
                z = z.clone().requires_grad_(True)
                p = torch.softmax(self.model(z), 1)
                (g,) = torch.autograd.grad(-(p * torch.log(p + 1e-12)).sum(), z)
                z = (z - 0.01 * g.sign()).clamp(0, 1).detach()
        return self.model(z)


class _SaturatedInline(nn.Module):
    """A sharp softmax with no wrapped classifier: the layers are called one by one, so no step
    can strip the mask off, and the points it leaves standing have no gradient anywhere."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.layers = model.net
        self.register_buffer("mean", model.mean.clone())
        self.register_buffer("std", model.std.clone())

    def forward(self, x):
        h = (x - self.mean) / self.std
        for layer in self.layers:
            h = layer(h)
        return torch.softmax(100 * h, dim=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LyingRounding(Defense):
    """3-bit rounding that declares itself differentiable: autograd through it sees zero."""

    batch_invariant = True

    def transform(self, x, generator):
        return torch.round(x * 7) / 7


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LyingNoise(Defense):
    """Gaussian noise (as gaussian_noise:sigma=0.12) that declares itself deterministic."""

    def transform(self, x, generator):
        return (x + 0.12 * torch.randn_like(x)).clamp(0, 1)


@pytest.fixture(scope="module")
def lying():
    DEFENSES.register("test_lying_rounding")(_LyingRounding)
    DEFENSES.register("test_lying_noise")(_LyingNoise)
    yield
    DEFENSES.unregister("test_lying_rounding")
    DEFENSES.unregister("test_lying_noise")


def _copy(trained):
    import copy

    return copy.deepcopy(trained.model)


def _pgd(model, data, **kw):
    kw.setdefault("escalate", LADDER_FAST)
    return evaluate(model, data, ["pgd:steps=10"], [EPS], n=N, checks=CHECKS_FAST, **kw)[0]


@pytest.fixture(scope="module")
def truth(trained, fmnist_test):
    """strong on the unmasked fixture: the number a masked copy must be escalated to."""
    return evaluate(trained, fmnist_test, ["strong"], [EPS], n=N, checks=None)[0].robust_acc


@pytest.mark.parametrize("mask", [_Saturated, _ZeroLayer, _TestTimeOptimised])
def test_a_masked_model_attacked_with_pgd_alone_is_escalated_to_the_truth(mask, trained, fmnist_test, truth, tmp_path):
    masked = mask(_copy(trained))
    with Store(tmp_path / "s.sqlite") as store:
        raw = _pgd(masked, fmnist_test, escalate=None, store=store)
        assert raw.failed_checks and raw.verified is False
        assert raw.robust_acc > truth + 0.3, (raw.robust_acc, truth)  # the mask works: PGD alone is fooled
        r = _pgd(masked, fmnist_test, store=store)  # the raw cell and its verdicts are read, the ladder climbed
        assert r.escalated_from == raw.key and r.checks == raw.checks
        assert r.verified, [str(v) for v in r.failed_checks]
        assert r.robust_acc <= truth + MARGIN, (r.robust_acc, truth, r.escalation)
        ran = [s for s in r.escalation if not s.get("skipped")]
        assert ran and all(s["answers"] and s["attacks"] and s["seconds"] >= 0 for s in ran)
        assert ran[-1]["robust_acc"] == r.robust_acc
        # The ladder is stored with the cell, and the raw cell beside it.
        again = store.get(r.key)
        assert again.escalation == r.escalation and again.rechecks == r.rechecks and again.checks == r.checks
        assert bool((r.robust <= raw.robust).all())  # escalation only removes points
    if mask is _TestTimeOptimised:  # the dynamic forward pass is detected, and answered
        before, after = ({v.name: v for v in vs} for vs in (r.checks, r.rechecks))
        assert before["dynamic_forward"].passed is False and "autograd" in before["dynamic_forward"].explanation
        assert after["dynamic_forward"].passed and "answered by escalation" in after["dynamic_forward"].explanation


def test_dynamic_detection_is_per_call_with_no_counter_carried_over(trained):
    plain = _copy(trained).eval()
    x = torch.rand(4, 1, 28, 28)
    assert dynamic(plain, x) is None and dynamic(plain, x) is None  # AutoAttack's counter would flag the second
    opt = _TestTimeOptimised(_copy(trained)).eval()
    assert dynamic(opt, x) == dynamic(opt, x) and "autograd" in dynamic(opt, x)

    class GradMode(nn.Module):  # answers differently while it is being attacked
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x) * (0.0 if torch.is_grad_enabled() else 1.0)

    assert "gradients are being taken" in dynamic(GradMode(plain), x)

    class Stepping(nn.Module):  # an optimiser step inside forward, on its own parameter
        def __init__(self, m):
            super().__init__()
            self.m, self.shift = m, nn.Parameter(torch.zeros(1))

        def forward(self, x):
            opt = torch.optim.SGD([self.shift], lr=0.0)
            with torch.enable_grad():
                self.m(x + self.shift).sum().backward()
            opt.step()
            return self.m(x + self.shift.detach())

    assert "stepped an optimiser" in dynamic(Stepping(plain), x)


def test_a_defense_lying_about_differentiability_is_escalated_to_its_honest_number(lying, trained, fmnist_test):
    # Declared differentiable, but rounding: BPDA through every defense step answers it.
    liar = _pgd(trained, fmnist_test, defense=[_LyingRounding()], mode="adaptive")
    honest = evaluate(trained, fmnist_test, ["strong"], [EPS], n=N, checks=None, defense=["bit_depth:bits=3"])[0]
    assert "gradients" in {v.name for v in liar.checks if v.passed is False}
    assert liar.verified and liar.robust_acc <= honest.robust_acc + MARGIN, (liar.robust_acc, honest.robust_acc)
    assert any(s["step"] == "defense_bpda" and not s.get("skipped") for s in liar.escalation)


def test_a_defense_lying_about_randomness_is_escalated_to_its_honest_number(lying, trained, fmnist_test):
    # Declared deterministic, but random: EOT answers it.
    liar = _pgd(trained, fmnist_test, defense=[_LyingNoise()], mode="adaptive")
    honest = evaluate(trained, fmnist_test, ["strong"], [EPS], n=N, checks=None, defense=["gaussian_noise:sigma=0.12"],
                      eot=2, votes=3)[0]
    assert "stochastic_outputs" in {v.name for v in liar.checks if v.passed is False}
    assert liar.verified and liar.robust_acc <= honest.robust_acc + MARGIN, (liar.robust_acc, honest.robust_acc)
    assert any(s["step"] == "eot" and not s.get("skipped") for s in liar.escalation)


@pytest.fixture(scope="module")
def unverified(trained, fmnist_test, tmp_path_factory):
    """A store with the plain fixture (verified) and the inline-saturated one, which the ladder
    cannot answer: the points it leaves standing have no live gradient on any view."""
    path = tmp_path_factory.mktemp("unverified") / "s.sqlite"
    masked = zoo.LoadedModel("smallcnn-saturated", _SaturatedInline(_copy(trained)), "fmnist", "1" * 64)
    with Store(path) as store:
        plain = _pgd(trained, fmnist_test, store=store)
        r = _pgd(masked, fmnist_test, store=store)
    return path, plain, r, masked


def test_a_number_whose_checks_still_fail_is_unverified(unverified):
    _, plain, r, _ = unverified
    assert plain.verified and not plain.escalated_from
    assert r.escalated_from and r.verified is False and r.failed_checks
    why = " ".join(v.explanation for v in r.failed_checks)
    assert "not answered" in why or any(v.name not in escalation.PROPERTIES for v in r.failed_checks), why


def test_the_leaderboard_site_and_json_never_rank_an_unverified_row(unverified, tmp_path, capsys):
    path, _, _, _ = unverified
    from robustbench_lite.reporting import leaderboard, site

    with Store(path) as store:
        t = leaderboard.table(store, EPS)
        masked = t[t["model"] == "smallcnn-saturated"].iloc[0]
        plain = t[t["model"] == "smallcnn-fmnist-standard"].iloc[0]
        assert masked["rank"] is None or masked["rank"] != masked["rank"]  # None or NaN: no rank
        assert masked["checks"].startswith("UNVERIFIED after escalation") and plain["rank"] == 1
        # Shown below every ranked row, whatever its number.
        assert t.index[t["model"] == "smallcnn-saturated"][0] > t.index[t["model"] == "smallcnn-fmnist-standard"][0]
        site.write_site(store, tmp_path / "site", EPS)
        entries = site.write_robustbench(store, tmp_path / "rb", EPS)
    index = (tmp_path / "site" / "index.html").read_text()
    row = re.search(r'<tr class="flagged[^"]*">(?:(?!</tr>).)*smallcnn-saturated(?:(?!</tr>).)*</tr>', index, re.S)
    assert row and "UNVERIFIED" in row.group(0)
    names = [json.loads(p.read_text())["name"] for p in entries]  # RobustBench entries are ranked rows only
    assert "smallcnn-fmnist-standard" in names and "smallcnn-saturated" not in names
    assert main(["leaderboard", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "smallcnn-saturated" in ln)
    assert line.startswith("| – |") and "UNVERIFIED" in line


def test_rbl_eval_prints_the_ladder_and_strict_exits_on_an_unverified_row(unverified, monkeypatch, capsys):
    _, _, _, masked = unverified
    monkeypatch.setattr(zoo, "load", lambda name: masked)
    monkeypatch.setattr(escalation, "EscalationConfig", lambda: LADDER_FAST)
    from robustbench_lite import cli

    monkeypatch.setattr(cli, "_store", lambda path: Store(unverified[0]))
    argv = ["eval", "--model", "masked", "--attack", "pgd:steps=10", "--eps", str(EPS), "--n", str(N), "--checks-n", "50"]
    monkeypatch.setattr("robustbench_lite.checks.CheckConfig", lambda **kw: CHECKS_FAST)
    assert main(argv + ["--strict"]) == EXIT_CHECKS
    out, err = capsys.readouterr()
    assert "escalation" in out and "UNVERIFIED" in out and "robust" in out and "unverified" in err
    for step in (s for s in unverified[2].escalation if not s.get("skipped")):
        assert step["step"] in out


def test_no_escalate_keeps_the_raw_number_shown_never_ranked(trained, fmnist_test, tmp_path):
    from robustbench_lite.reporting import leaderboard

    masked = zoo.LoadedModel("smallcnn-zero", _ZeroLayer(_copy(trained)), "fmnist", "2" * 64)
    with Store(tmp_path / "s.sqlite") as store:
        r = _pgd(masked, fmnist_test, store=store, escalate=None)
        assert not r.escalated_from and r.verified is False
        row = leaderboard.table(store, EPS).iloc[0]
    assert row["checks"].startswith("FAILED (not escalated)") and (row["rank"] is None or row["rank"] != row["rank"])


def test_the_ladder_is_data_over_the_registered_checks():
    names = {c.__name__ for c in CHECKS} | {"monotone_eps"}
    assert set(LADDER) <= names and escalation.PROPERTIES <= set(LADDER)
    assert all(step in STEPS for steps in LADDER.values() for step in steps)
    assert all(s.view in escalation.VIEWS for s in STEPS.values())
    # Every check that can fail has a step that answers it.
    assert {c.__name__ for c in CHECKS} - {"monotone_in_eps", "adaptive_vs_oblivious"} <= set(LADDER) | {"monotone_in_eps"}


def test_editing_a_rung_rekeys_the_escalated_cells(trained, fmnist_test, monkeypatch):
    from robustbench_lite.engine import escalation_config

    r = _pgd(_Saturated(_copy(trained)), fmnist_test, escalate=None)
    failed = {v.name for v in r.failed_checks}
    a = escalation_config(r, failed, CHECKS_FAST, LADDER_FAST, [])
    monkeypatch.setitem(STEPS, "dlr", dataclasses.replace(STEPS["dlr"], attacks=("apgd_dlr:steps={steps}",)))
    b = escalation_config(r, failed, CHECKS_FAST, LADDER_FAST, [])
    assert a != b and a["cell"] == b["cell"] == r.key


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "escalation: steps must be an integer >= 1, got 0"),
    (dict(queries=-1), "escalation: queries must be an integer >= 1, got -1"),
    (dict(surrogates="smallcnn"), "surrogates must be a tuple"),
])
def test_bad_escalation_config(kw, match):
    with pytest.raises(ValueError, match=match):
        EscalationConfig(**kw)


def test_rbl_check_fails_a_row_that_is_unverified_after_escalation(unverified, tmp_path, monkeypatch):
    from robustbench_lite import gate

    path, _, r, masked = unverified
    monkeypatch.setattr(gate.zoo, "load_any", lambda source: masked)
    monkeypatch.setattr(gate, "EscalationConfig", lambda: LADDER_FAST)
    monkeypatch.setattr(gate, "CheckConfig", lambda n: CHECKS_FAST)
    suite = tmp_path / "suite.toml"
    suite.write_text(f"[suite]\nn = {N}\neps = [{EPS}]\nattacks = ['pgd:steps=10']\n[[model]]\nsource = 'masked'\n")
    with Store(path) as store:
        rows = gate.run(gate.load(suite), store)
    assert not rows[0].passed and rows[0].robust == r.robust_acc and rows[0].escalation
    assert all(p.startswith("unverified: gradient-masking check still fails after escalation") for p in rows[0].problems)
    assert "UNVERIFIED" in gate.markdown(gate.load(suite), rows)


def test_a_profiles_worst_case_is_escalated_and_verify_reclimbs_the_ladder(lying, trained, fmnist_test, tmp_path):
    from robustbench_lite.engine import combine, escalate
    from robustbench_lite.cell import worst_case_config
    from robustbench_lite.verify import IDENTICAL, verify

    liar = [_LyingRounding()]
    with Store(tmp_path / "s.sqlite") as store:
        # As a profile does: one cell per attack, the checks with the first, then the worst case.
        cells = [evaluate(trained, fmnist_test, [a], [EPS], n=N, store=store, defense=liar, escalate=None,
                          checks=CHECKS_FAST if i == 0 else None)[0] for i, a in enumerate(("pgd:steps=10", "fgsm"))]
        worst = combine(cells)
        store.put(worst, worst_case_config(worst.combined_from))
        worst = store.get(worst.key)
        assert worst.verified is False  # the first cell's verdicts, attached through the worst case
        r = escalate(worst, trained, fmnist_test, defense=liar, checks=CHECKS_FAST, config=LADDER_FAST, store=store)
        assert r.escalated_from == worst.key and r.verified and r.robust_acc < worst.robust_acc
        assert escalate(r, trained, fmnist_test, defense=liar, checks=CHECKS_FAST, config=LADDER_FAST) is r  # done once
        outcomes = verify(store)
    kinds = {o.kind for o in outcomes}
    assert "escalated cell" in kinds and "worst case" in kinds, kinds
    assert all(o.status == IDENTICAL for o in outcomes), [(o.kind, o.status, o.note) for o in outcomes]
