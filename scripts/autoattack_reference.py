"""Each aa_standard member against the authors' AutoAttack code on the same points: the numbers
behind tests/test_autoattack_reference.py, printed (ours, reference, gap) for a zoo model.

    .venv/bin/python scripts/autoattack_reference.py [--model smallcnn-fmnist-standard] [--n 500] [--eps 0.03]
"""
from __future__ import annotations

import argparse

from robustbench_lite import data, zoo
from robustbench_lite.engine import evaluate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smallcnn-fmnist-standard")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, default=0.03)
    args = p.parse_args()
    from robustbench_lite.reference import cases, robust_under

    lm = zoo.load(args.model)
    test = data.load(lm.dataset, "test")
    sub = test.first(args.n)
    x, y = sub.floats(), sub.labels.clone()
    model = lm.model.eval()
    print(f"| member | spec | ours % | reference % | gap (points) |\n|---|---|---:|---:|---:|")
    for member, (spec, build) in cases(args.eps).items():
        ours = evaluate(lm, test, [spec], [args.eps], n=args.n, checks=None)[0].robust_acc
        ref = float(robust_under(build(model), model, x, y, args.eps).float().mean())
        print(f"| {member} | `{spec}` | {100 * ours:.1f} | {100 * ref:.1f} | {100 * (ours - ref):+.1f} |")


if __name__ == "__main__":
    main()
