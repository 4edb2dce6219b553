"""The gradient-masking checks: a sound model passes them, and models that hide their gradients
(a quantization layer, saturated softmax outputs, undeclared randomness) are caught."""
from __future__ import annotations

import pytest
import torch

from robustbench_lite import zoo
from robustbench_lite.checks import CheckConfig
from robustbench_lite.cli import EXIT_CHECKS, main
from robustbench_lite.engine import evaluate
from robustbench_lite.store import Store

FAST = CheckConfig(n=100, steps=10, queries=300)


class _Quantized(torch.nn.Module):
    """A model behind 3-bit rounding that does not declare itself a defense: autograd sees zero."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 7) / 7)


class _Saturated(torch.nn.Module):
    """Outputs a sharp softmax instead of logits: the cross-entropy gradient vanishes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(100 * self.model(x), dim=1)


class _Noisy(torch.nn.Module):
    """Random in eval mode without saying so."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def _failed(result) -> set[str]:
    """The checks that failed as found (before any escalation, which tests/test_escalation.py covers)."""
    return {v.name for v in result.checks if v.passed is False}


def _run(model, data, **kw):
    return evaluate(model, data, ["pgd:steps=10"], [0.1], n=100, checks=FAST, escalate=None, **kw)[0]


def test_a_sound_model_passes_every_check(trained, fmnist_test):
    r = _run(trained, fmnist_test)
    assert len(r.checks) == 13 and _failed(r) == set(), [str(v) for v in r.failed_checks]
    ran = {v.name for v in r.checks if v.passed is not None}
    assert "adaptive_vs_oblivious" not in ran and {"finite_differences", "dynamic_forward"} <= ran  # no defense; real gradients
    for v in r.checks:
        assert v.explanation and (v.passed is None or v.threshold is not None)


def test_quantization_layer_is_flagged_and_the_adaptive_evaluation_exposes_it(trained, fmnist_test):
    masked = _run(_Quantized(trained.model), fmnist_test)
    assert {"gradients", "unbounded_eps", "noise_vs_pgd", "black_box_vs_white_box"} <= _failed(masked)
    # The same rounding declared as a defense: BPDA takes the gradient through it.
    adaptive = _run(trained, fmnist_test, defense=["bit_depth:bits=3"])
    plain = _run(trained, fmnist_test)
    assert masked.robust_acc > plain.robust_acc + 0.3, (masked.robust_acc, plain.robust_acc)
    assert adaptive.robust_acc <= plain.robust_acc + 0.05, (adaptive.robust_acc, plain.robust_acc)
    assert _failed(adaptive) == set(), [str(v) for v in adaptive.failed_checks]


def test_saturated_softmax_outputs_are_flagged(trained, fmnist_test):
    r = _run(_Saturated(trained.model), fmnist_test)
    assert {"logits_not_probabilities", "gradients"} <= _failed(r)


def test_undeclared_randomness_is_flagged_declared_randomness_is_not(trained, fmnist_test):
    assert "stochastic_outputs" in _failed(_run(_Noisy(trained.model), fmnist_test))
    declared = evaluate(trained, fmnist_test, ["pgd:steps=5"], [0.1], n=40, eot=2, votes=3,
                        defense=["gaussian_noise"], checks=CheckConfig(n=20, steps=5, queries=50, noise_draws=2))[0]
    verdict = next(v for v in declared.checks if v.name == "stochastic_outputs")
    assert verdict.passed and verdict.value > 0.5 and "as declared" in verdict.explanation


def test_monotone_check_reads_the_evaluations_own_sweep(trained, fmnist_test):
    rs = evaluate(trained, fmnist_test, ["fgsm"], [0.0, 0.05, 0.1], n=60, checks=FAST)
    verdict = next(v for v in rs[0].checks if v.name == "monotone_eps")
    assert "the evaluation's own cells" in verdict.explanation and verdict.passed
    assert all(r.checks == rs[0].checks for r in rs)  # one set of verdicts per call, on every cell


def test_no_checks_at_eps_zero_or_when_switched_off(trained, fmnist_test):
    assert evaluate(trained, fmnist_test, ["fgsm"], [0.0], n=20, checks=FAST)[0].checks == ()
    assert evaluate(trained, fmnist_test, ["fgsm"], [0.1], n=20, checks=None)[0].checks == ()


def test_verdicts_survive_the_store_and_reach_the_leaderboard(trained, fmnist_test, tmp_path, capsys):
    with Store(tmp_path / "s.sqlite") as store:
        first = evaluate(_Quantized(trained.model), fmnist_test, ["pgd:steps=10"], [0.1], n=100, checks=FAST, store=store,
                         escalate=None)[0]
        again = evaluate(_Quantized(trained.model), fmnist_test, ["pgd:steps=10"], [0.1], n=100, checks=None, store=store)[0]
        assert again.checks == first.checks and _failed(again)
        assert store.rows()[0]["checks_failed"] == ",".join(v.name for v in first.failed_checks)
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite")]) == 0
    # The binarization test catches the rounding too: PGD misses what provably exists.
    assert "FAILED (not escalated): binarization, black_box_vs_white_box" in capsys.readouterr().out


def test_strict_exits_non_zero_on_a_failed_check(trained, tmp_path, capsys, monkeypatch):
    masked = zoo.LoadedModel("masked", _Quantized(trained.model), "fmnist", "0" * 64)
    monkeypatch.setattr(zoo, "load", lambda name: masked)
    argv = ["eval", "--model", "masked", "--attack", "pgd:steps=10", "--eps", "0.1", "--n", "100", "--no-store",
            "--no-escalate"]
    assert main(argv) == 0
    assert "checks: " in capsys.readouterr().out
    assert main(argv + ["--strict"]) == EXIT_CHECKS
    assert "unverified: gradient-masking checks still fail: " in capsys.readouterr().err
    assert main(argv + ["--strict", "--no-checks"]) == 0


@pytest.mark.parametrize("kw,match", [
    (dict(n=5), "checks: n must be an integer >= 10, got 5"),
    (dict(steps=0), "checks: steps must be an integer >= 1, got 0"),
])
def test_bad_check_config(kw, match):
    with pytest.raises(ValueError, match=match):
        CheckConfig(**kw)
