"""The fixture-dependent statistics behind the margins of the suite's statistical assertions,
over fixtures trained from several seeds (another CPU trains other weights from the same seed,
so other seeds stand in for other machines).

    python scripts/test_margins.py 0 1 2 3 4 5     # seeds; about a minute each on 2 cores

For each seed it trains the suite's fixtures (tests/conftest.py: the 2-epoch small CNN and the
denoising autoencoder) in a scratch cache and prints, per defense of
tests/test_defenses.py::test_adaptive_attack_breaks_what_the_oblivious_one_reports, the adaptive
and oblivious robust accuracies minus the undefended one, and per detector of
tests/test_detectors.py::test_joint_attack_is_caught_less_than_the_classifier_only_attack the
caught rates and robust accuracies of both attacks, and the fooling rates behind
tests/test_experiments.py::test_universal_perturbation_fools_held_out_points_but_less_than_pgd.
The bounds in those tests keep at least two binomial standard errors from the values printed here.
"""
import json
import os
import subprocess
import sys
import tempfile

WORKER = r'''
import json, os, sys
seed = int(sys.argv[1])
os.environ["RBL_NO_DOWNLOAD"] = "1"
from robustbench_lite import data, engine, generative, zoo
from robustbench_lite.train import TrainConfig, train

train(TrainConfig(arch="smallcnn", epochs=2, train_subset=10000, seed=seed))
generative.train("dae", "fmnist", train_subset=5000, test_n=500, classifier=None, seed=seed, epochs=3)
lm, test, calib = zoo.load("smallcnn-fmnist-standard"), data.load("fmnist", "test"), data.load("fmnist", "train")


def run(*args, **kw):
    return engine.evaluate(lm, test, *args, checks=None, **kw)[0]


out = {"seed": seed, "defenses": {}, "detectors": {}, "universal": {}}
attack = ["pgd:steps=20"]
undefended = run(attack, [0.1], n=200).robust_acc
for d in ("bit_depth", "gaussian_noise", "jpeg", "median", "random_resize_pad", "tv_min"):
    kw = dict(n=200, defense=[d], eot=8, votes=5)
    a, o = run(attack, [0.1], **kw), run(attack, [0.1], mode="oblivious", **kw)
    out["defenses"][d] = {"adaptive - undefended": a.robust_acc - undefended, "oblivious - undefended": o.robust_acc - undefended}
fast = {"feature_squeeze": ("feature_squeeze:calibration=1000", 0.1), "safetynet": ("safetynet:calibration=1000,epochs=10", 0.1),
        "magnet_detector": ("magnet_detector:calibration=1000,fpr=0.05", 0.15)}
for d, (spec, eps) in fast.items():
    kw = dict(n=200, defense=[spec], calibration=calib)
    o = run(["pgd:steps=20,early_stop=False"], [eps], mode="oblivious", **kw)
    j = run(["pgd:steps=20,early_stop=False"], [eps], mode="adaptive", **kw)
    out["detectors"][d] = {"eps": eps, "oblivious caught": o.caught, "joint caught": j.caught,
                           "oblivious robust": o.robust_acc, "joint robust": j.robust_acc}
from robustbench_lite.experiments.base import execute
from robustbench_lite.registry import EXPERIMENTS

for method in ("sgd", "deepfool"):
    exp = EXPERIMENTS.create("universal", method=method, n_train=1000, n_test=300, passes=3)
    (outcome, _), = execute(exp, [lm], data.load("fmnist", "train"), test)
    out["universal"][method] = outcome.metrics["fooling_rate"]
print(json.dumps(out))
'''


def main(seeds: list[int]) -> None:
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "RBL_CACHE_DIR": cache}
            done = subprocess.run([sys.executable, "-c", WORKER, str(seed)], env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"seed {seed} done", file=sys.stderr)
    print("| defense | adaptive - undefended, per seed | max | oblivious - undefended, per seed | min |")
    print("|---|---|---:|---|---:|")
    for d in rows[0]["defenses"]:
        a = [r["defenses"][d]["adaptive - undefended"] for r in rows]
        o = [r["defenses"][d]["oblivious - undefended"] for r in rows]
        print(f"| {d} | {' '.join(f'{v:+.3f}' for v in a)} | {max(a):+.3f} | {' '.join(f'{v:+.3f}' for v in o)} | {min(o):+.3f} |")
    print()
    print("| detector | eps | oblivious caught | joint caught | oblivious robust | joint robust |")
    print("|---|---:|---|---|---|---|")
    for d in rows[0]["detectors"]:
        cols = [" ".join(f"{r['detectors'][d][k]:.3f}" for r in rows)
                for k in ("oblivious caught", "joint caught", "oblivious robust", "joint robust")]
        print(f"| {d} | {rows[0]['detectors'][d]['eps']:g} | " + " | ".join(cols) + " |")
    print()
    print("| universal perturbation | fooling rate, per seed | min |")
    print("|---|---|---:|")
    for m in rows[0]["universal"]:
        v = [r["universal"][m] for r in rows]
        print(f"| {m} | {' '.join(f'{x:.3f}' for x in v)} | {min(v):.3f} |")


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2])
