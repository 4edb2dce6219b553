"""Issue 18's acceptance, measured: masked copies of a zoo model (the masks of tests/test_escalation.py)
and lying defenses, each attacked with PGD alone, against what ``strong`` gives the unmasked model
(or the honestly declared defense). Prints one Markdown row per case: the raw PGD number, the
escalated one, whether it is verified, the steps that ran, and the seconds.

    PYTHONPATH=. .venv/bin/python scripts/escalation_acceptance.py [--model smallcnn-fmnist-standard] [--n 200] [--eps 0.1]

No transfer surrogate is used (the in-model steps have to do it); the ladder and checks run with
their defaults; the honest noise defense's reference runs with EOT over 5 draws and a vote of 5.
"""
from __future__ import annotations

import argparse
import copy
import time

from robustbench_lite import data, zoo
from robustbench_lite.engine import evaluate
from robustbench_lite.escalation import EscalationConfig
from robustbench_lite.registry import DEFENSES
from tests.test_escalation import _LyingNoise, _LyingRounding, _Saturated, _TestTimeOptimised, _ZeroLayer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smallcnn-fmnist-standard")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--eps", type=float, default=0.1)
    args = p.parse_args()
    lm = zoo.load(args.model)
    test = data.load(lm.dataset, "test")
    DEFENSES.register("test_lying_rounding")(_LyingRounding)
    DEFENSES.register("test_lying_noise")(_LyingNoise)
    ladder = EscalationConfig(surrogates=())

    def run(model, attacks, escalate=ladder, **kw):
        start = time.perf_counter()
        r = evaluate(model, test, attacks, [args.eps], n=args.n, escalate=escalate, **kw)[0]
        return r, time.perf_counter() - start

    truth, _ = run(lm, ["strong"], checks=None)
    cases = [(name, mask(copy.deepcopy(lm.model)), {}, truth.robust_acc)
             for name, mask in (("saturated softmax", _Saturated), ("zero-backward layer", _ZeroLayer),
                                ("optimisation in forward", _TestTimeOptimised))]
    for name, liar, honest, kw in (("defense declaring rounding differentiable", _LyingRounding(), "bit_depth:bits=3", {}),
                                   ("defense declaring noise deterministic", _LyingNoise(), "gaussian_noise:sigma=0.12",
                                    {"eot": 5, "votes": 5})):
        ref, _ = run(lm, ["strong"], checks=None, defense=[honest], **kw)
        cases.append((name, lm, {"defense": [liar]}, ref.robust_acc))
    print(f"{args.model}, n={args.n}, L-inf eps={args.eps}; strong on the unmasked model: {100 * truth.robust_acc:.1f}%\n")
    print("| model | strong, unmasked % | PGD alone % | escalated % | verified | steps that broke points | seconds |")
    print("|---|---:|---:|---:|---|---|---:|")
    for name, model, kw, target in cases:
        raw, _ = run(model, ["pgd"], escalate=None, **kw)
        r, seconds = run(model, ["pgd"], **kw)
        steps = ", ".join(s["step"] for s in r.escalation if not s.get("skipped") and s.get("broken"))
        print(f"| {name} | {100 * target:.1f} | {100 * raw.robust_acc:.1f} | {100 * r.robust_acc:.1f} | {r.verified} | "
              f"{steps or '–'} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
