"""The adaptive-evaluation acceptance figures (README, "Defenses and adaptive evaluation").

    python scripts/adaptive_acceptance.py pre      # each preprocessing defense, oblivious vs adaptive
    python scripts/adaptive_acceptance.py det      # detectors: classifier-only vs joint attack
    python scripts/adaptive_acceptance.py strong   # PGD-50 vs the strong preset on smallcnn-fmnist-pgd_at

Needs the trained zoo models smallcnn-fmnist-{standard,pgd_at} (rbl train, or rbl run --profile full).
Rows go to stdout and to accept-<part>.jsonl in the current folder.
"""
import json
import os
import sys
import time

from robustbench_lite import data, zoo
from robustbench_lite.engine import evaluate
from robustbench_lite.checks import CheckConfig

test = data.load("fmnist", "test"); train = data.load("fmnist", "train")
part = sys.argv[1]
out = open(f"accept-{part}.jsonl", "a")

def log(tag, r, t):
    row = dict(tag=tag, model=r.model, defense=r.defense, mode=r.mode, attacks=list(r.attacks), n=r.n, eps=r.eps,
               clean=r.clean_acc, robust=r.robust_acc, caught=r.caught, fpr=r.clean_rejected, auc=r.detection_auc,
               failed=[v.name for v in r.failed_checks], seconds=round(time.time() - t, 1))
    print(json.dumps(row), flush=True); out.write(json.dumps(row) + "\n"); out.flush()

if part == "pre":
    lm = zoo.load("smallcnn-fmnist-standard")
    n_det = int(os.environ.get("N_DET", 500)); n_rand = int(os.environ.get("N_RAND", 200))
    t = time.time(); log("undefended", evaluate(lm, test, ["pgd:steps=50"], [0.1], n=n_det, checks=None)[0], t)
    for d in ["jpeg", "bit_depth", "median", "gaussian_noise", "random_resize_pad", "tv_min"]:
        n = n_det if d in ("jpeg", "bit_depth", "median") else (100 if d == "tv_min" else n_rand)
        for mode in ["oblivious", "adaptive"]:
            t = time.time()
            r = evaluate(lm, test, ["pgd:steps=50"], [0.1], n=n, defense=[d], mode=mode,
                         checks=CheckConfig(n=50, steps=10, queries=300) if d != "tv_min" else None)[0]
            log(f"pre-{d}", r, t)
elif part == "strong":
    lm = zoo.load("smallcnn-fmnist-pgd_at")
    n = int(os.environ.get("N", 1000))
    for atk in (["pgd:steps=50"], ["strong"]):
        t = time.time(); log("strong", evaluate(lm, test, atk, [0.1], n=n, checks=CheckConfig())[0], t)
elif part == "det":
    lm = zoo.load("smallcnn-fmnist-standard")
    for d in ["feature_squeeze", "safetynet"]:
        for mode in ["oblivious", "adaptive"]:
            t = time.time()
            log("det", evaluate(lm, test, ["pgd:steps=50,early_stop=False"], [0.1], n=500, defense=[d], mode=mode,
                                calibration=train, checks=CheckConfig(n=100, steps=10, queries=300))[0], t)
