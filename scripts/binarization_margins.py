"""The binarization check's margins, measured: on every trained zoo model, the share of test points
on which an attack list misses the adversarial example the binarized head guarantees, honest and
with the masks of tests/test_escalation.py (a saturated softmax, a zero-backward layer, a test-time
optimisation, a saturated softmax with no wrapped classifier). The check's threshold
(``checks.suite.binarization``) must sit clear of both columns. Prints one Markdown row per case.

    PYTHONPATH=. .venv/bin/python scripts/binarization_margins.py [--n 100] [--eps 0.1] [--points 20] [--models GLOB ...]
"""
from __future__ import annotations

import argparse
import copy
import fnmatch

from robustbench_lite import data, zoo
from robustbench_lite.checks import CheckConfig
from robustbench_lite.engine import evaluate
from tests.test_escalation import _Saturated, _SaturatedInline, _TestTimeOptimised, _ZeroLayer

ATTACK_LISTS = (("pgd:steps=10",), ("fgsm", "bim", "pgd", "illc"), ("strong",))
MASKS = (("saturated softmax", _Saturated), ("zero-backward layer", _ZeroLayer),
         ("test-time optimisation", _TestTimeOptimised), ("inline saturated softmax", _SaturatedInline))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--models", nargs="*", default=["*"], help="zoo names (globs) among the trained ones")
    args = p.parse_args()
    test = data.load("fmnist", "test")
    cfg = CheckConfig(n=50, steps=10, queries=300, binarization=args.points)
    print("| model | mask | attacks | valid tests | missed | verdict |\n|---|---|---|---|---|---|")
    for name in [m for m in zoo.trained() if any(fnmatch.fnmatchcase(m, g) for g in args.models)]:
        lm = zoo.load(name)
        cases = [("none", lm, ATTACK_LISTS)]
        if name.startswith("smallcnn"):  # the masks reach into the small CNN's layers
            cases += [(label, mask(copy.deepcopy(lm.model)), ATTACK_LISTS[:2]) for label, mask in MASKS]
        for label, model, lists in cases:
            for attacks in lists:
                r = evaluate(model, test, list(attacks), [args.eps], n=args.n, checks=cfg, escalate=None)[0]
                v = next(v for v in r.checks if v.name == "binarization")
                valid = v.explanation.split(" points")[0].removeprefix("on ") if v.passed is not None else "-"
                missed = "-" if v.value is None else f"{v.value:.2f}"
                state = {True: "passed", False: "FAILED", None: "n/a"}[v.passed]
                print(f"| {name} | {label} | {' '.join(attacks)} | {valid} | {missed} | {state} |", flush=True)


if __name__ == "__main__":
    main()
