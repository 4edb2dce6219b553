"""Throughput of our FGSM and PGD-10 against a plain torch loop, foolbox and torchattacks,
and the peak memory of our PGD-10 against the plain loop.

Every implementation attacks the same standard-trained small CNN on the same 256
Fashion-MNIST test images under L-inf eps = 0.1. The conftest turns the times into
ratios against the plain loop of the same group. Each benchmark checks what it returned
(inside the budget, and actually adversarial), so a broken attack cannot look fast.

Memory: peak RSS cannot answer the question honestly. ``ru_maxrss`` is a high-water mark
for the whole process (training the fixture model already set it), glibc reuses freed
pages so an attack's working set hides inside memory the process already holds, and
tracemalloc does not see torch's allocations at all. What we measure instead is exact and
deterministic: every allocation and free through PyTorch's CPU allocator during one
attack call, replayed in order from the profiler (``profile_memory=True``); the peak of the
running sum is the most memory the attack held above what was live when it started.
"""
from __future__ import annotations

import time
from typing import Callable

import foolbox as fb
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torch.profiler import ProfilerActivity, profile

from robustbench_lite.attacks import FGSM, PGD
from robustbench_lite.threat import Threat

# The conftest's summary divides by the implementation of this name (same string there).
BASELINE = "plain"
STEPS = 10
# Enough rounds that a median survives a few seconds of another process taking a core.
PGD_ROUNDS = 20
FGSM_ROUNDS = 80
MEMORY_ROUNDS = 3


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
              steps: int, generator: torch.Generator) -> torch.Tensor:
    """The minimal honest PGD: uniform start, signed CE gradient step, clamp to ball and box."""
    x_adv = (x + (2 * torch.rand(x.shape, generator=generator) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


def plain_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """The minimal honest FGSM: one step of eps along the sign of the CE gradient."""
    x_adv = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_adv)
    return (x + eps * grad.sign()).clamp(0, 1)


def _pgd_runner(impl: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                threat: Threat) -> Callable[[], torch.Tensor]:
    eps = threat.eps
    alpha = 2.5 * eps / STEPS  # Madry's rule, and our PGD's default for these steps
    if impl == BASELINE:
        return lambda: plain_pgd(model, x, y, eps=eps, alpha=alpha, steps=STEPS,
                                 generator=torch.Generator().manual_seed(0))
    if impl in ("ours", "ours_early_stop"):
        attack = PGD(steps=STEPS, early_stop=impl == "ours_early_stop")
        return lambda: attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    if impl == "torchattacks":
        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        return lambda: ta(x, y)
    if impl == "foolbox":
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        fa = fb.attacks.LinfPGD(steps=STEPS, abs_stepsize=alpha, random_start=True)
        return lambda: fa(fmodel, x, y, epsilons=eps)[1]
    raise ValueError(impl)


def _fgsm_runner(impl: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 threat: Threat) -> Callable[[], torch.Tensor]:
    eps = threat.eps
    if impl == BASELINE:
        return lambda: plain_fgsm(model, x, y, eps=eps)
    if impl == "ours":
        attack = FGSM()
        return lambda: attack(model, x, y, threat)
    if impl == "torchattacks":
        ta = torchattacks.FGSM(model, eps=eps)
        return lambda: ta(x, y)
    if impl == "foolbox":
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        fa = fb.attacks.LinfFastGradientAttack(random_start=False)
        return lambda: fa(fmodel, x, y, epsilons=eps)[1]
    raise ValueError(impl)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _check_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                       threat: Threat, clean_acc: float) -> float:
    """Check x_adv is a valid, effective attack on x and return the accuracy under it."""
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype, (x_adv.shape, x_adv.dtype)
    assert torch.isfinite(x_adv).all()
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    dist = (x_adv - x).abs().amax().item()
    assert dist <= threat.eps + 1e-6, f"left the eps-ball: {dist:.6f} > {threat.eps}"
    acc = _accuracy(model, x_adv, y)
    # Returning x (or noise) stays inside the budget; only an attack that works passes this.
    assert acc < 0.5 * clean_acc, f"attack too weak: accuracy {acc:.3f} vs clean {clean_acc:.3f}"
    return acc


def _paired(benchmark, impl: str, run: Callable[[], torch.Tensor], baseline: Callable[[], torch.Tensor],
            *, rounds: int, warmup_rounds: int) -> torch.Tensor:
    """Time ``run``, and run the baseline once per round next to it, untimed by pytest-benchmark.

    Another process may take a core for seconds at a time, which moves a whole test's
    times by several x. Pairing each round with a baseline run makes the ratio compare
    calls made under the same load. The baseline goes before even rounds and after odd
    ones, because whichever call comes second in a pair tends to run faster. For the
    baseline itself the pairs are a noise check.
    """
    baseline_s: list[float] = []
    round_no = 0

    def time_baseline() -> None:
        start = time.perf_counter()
        baseline()
        baseline_s.append(time.perf_counter() - start)

    def setup() -> None:
        if round_no % 2 == 0:
            time_baseline()

    def teardown() -> None:
        nonlocal round_no
        if round_no % 2 == 1:
            time_baseline()
        round_no += 1

    benchmark.extra_info["impl"] = impl
    x_adv = benchmark.pedantic(run, setup=setup, teardown=teardown, rounds=rounds,
                               warmup_rounds=warmup_rounds, iterations=1)
    # One baseline time per round, warm-up rounds included; keep those of the timed rounds.
    benchmark.extra_info["baseline_s"] = baseline_s[warmup_rounds:warmup_rounds + rounds]
    return x_adv


PGD_IMPLS = (BASELINE, "ours", "torchattacks", "foolbox", "ours_early_stop")
FGSM_IMPLS = (BASELINE, "ours", "torchattacks", "foolbox")


@pytest.mark.benchmark(group="pgd10")
@pytest.mark.parametrize("impl", PGD_IMPLS)
def test_pgd10(benchmark, impl, model, batch, threat, clean_accuracy):
    x, y = batch
    baseline = _pgd_runner(BASELINE, model, x, y, threat)
    x_adv = _paired(benchmark, impl, _pgd_runner(impl, model, x, y, threat), baseline,
                    rounds=PGD_ROUNDS, warmup_rounds=1)
    acc = _check_adversarial(model, x, y, x_adv, threat, clean_accuracy)
    benchmark.extra_info["adv_accuracy"] = acc
    reference = baseline()
    if impl == "ours":
        # Same seed, same start, same steps: otherwise the ratio would compare different work.
        assert torch.equal(x_adv, reference), "our PGD no longer matches the plain loop step for step"
    # The others start elsewhere in the ball, so they only land near the plain loop; early
    # stopping keeps the first adversarial point, so it can only do better.
    ref_acc = _accuracy(model, reference, y)
    assert acc <= ref_acc + 0.05, (impl, acc, ref_acc)
    if impl != "ours_early_stop":
        assert acc >= ref_acc - 0.05, (impl, acc, ref_acc)


@pytest.mark.benchmark(group="fgsm")
@pytest.mark.parametrize("impl", FGSM_IMPLS)
def test_fgsm(benchmark, impl, model, batch, threat, clean_accuracy):
    x, y = batch
    baseline = _fgsm_runner(BASELINE, model, x, y, threat)
    x_adv = _paired(benchmark, impl, _fgsm_runner(impl, model, x, y, threat), baseline,
                    rounds=FGSM_ROUNDS, warmup_rounds=2)
    acc = _check_adversarial(model, x, y, x_adv, threat, clean_accuracy)
    benchmark.extra_info["adv_accuracy"] = acc
    # FGSM is deterministic: every implementation must flip the same points.
    reference = baseline()
    assert torch.allclose(x_adv, reference, atol=1e-6), (x_adv - reference).abs().max().item()


def peak_allocated_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Peak bytes held in PyTorch's CPU allocator during ``fn()``, above the level at its start."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The aggregated FunctionEvents fold allocations into ops and lose the order of frees;
    # the raw kineto records keep every allocation and free with its size and timestamp.
    kineto = getattr(prof.profiler, "kineto_results", None)
    if kineto is None:
        pytest.skip("this torch's profiler exposes no kineto memory records")
    records = sorted((e.start_ns(), e.nbytes()) for e in kineto.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.benchmark(group="pgd10-mem")
@pytest.mark.parametrize("impl", (BASELINE, "ours", "ours_early_stop"))
def test_pgd10_memory(benchmark, impl, model, memory_batch, threat):
    x, y = memory_batch
    run = _pgd_runner(impl, model, x, y, threat)
    peak = peak_allocated_bytes(run)
    # Any PGD holds at least its x_adv and one step's activations; a peak below the input's
    # size means the profiler recorded nothing, not that the attack is free.
    assert peak > x.numel() * x.element_size(), f"implausible peak of {peak} bytes"
    x_adv = _paired(benchmark, impl, run, _pgd_runner(BASELINE, model, x, y, threat),
                    rounds=MEMORY_ROUNDS, warmup_rounds=0)
    benchmark.extra_info["peak_alloc_mib"] = peak / 2**20
    _check_adversarial(model, x, y, x_adv, threat, _accuracy(model, x, y))
