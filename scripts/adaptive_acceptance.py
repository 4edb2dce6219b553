"""The adaptive-evaluation acceptance figures (README, "Defenses and adaptive evaluation").

    python scripts/adaptive_acceptance.py pre      # each preprocessing defense, oblivious vs adaptive
    python scripts/adaptive_acceptance.py det      # detectors: classifier-only vs joint attack
    python scripts/adaptive_acceptance.py strong   # PGD-50 vs the strong preset on smallcnn-fmnist-pgd_at
    python scripts/adaptive_acceptance.py purify   # magnet, vae_purify: oblivious vs adaptive vs bpda
    python scripts/adaptive_acceptance.py dgan     # defense_gan (reduced L and R, see the README)
    python scripts/adaptive_acceptance.py dganprobe  # why defense_gan holds: reconstruction, on-range examples, smoothness
    python scripts/adaptive_acceptance.py gen      # advgan, gap vs PGD on standard and pgd_at; the latent experiment

The purify, dgan and gen parts also need the generative models (rbl train-generative --model
dae / vae / gan) and write their cells into $RBL_STORE, from which
`rbl leaderboard --out reports/purifiers-eps0.1` publishes them.

Needs the trained zoo models smallcnn-fmnist-{standard,pgd_at} (rbl train, or rbl run --profile full).
Rows go to stdout and to accept-<part>.jsonl in the current folder.
"""
import json
import os
import sys
import time

from robustbench_lite import data, zoo
from robustbench_lite.engine import evaluate as _evaluate
from robustbench_lite.paths import default_store
from robustbench_lite.store import Store
from robustbench_lite.checks import CheckConfig

test = data.load("fmnist", "test"); train = data.load("fmnist", "train")
part = sys.argv[1]
out = open(f"accept-{part}.jsonl", "a")

store = Store(default_store()) if part in ("purify", "dgan", "gen") else None


def evaluate(*args, **kw):
    return _evaluate(*args, store=store, **kw)


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
elif part == "purify":
    lm = zoo.load("smallcnn-fmnist-standard")
    n = int(os.environ.get("N", 500))
    atk = ["pgd:steps=50,early_stop=False"]
    t = time.time(); log("undefended", evaluate(lm, test, atk, [0.1], n=n, checks=None)[0], t)
    for d in ["magnet", "vae_purify"]:
        for mode in ["oblivious", "adaptive", "bpda"]:
            t = time.time()
            log(f"purify-{d}", evaluate(lm, test, atk, [0.1], n=n, defense=[d], mode=mode, calibration=train,
                                       checks=CheckConfig(n=100, steps=10, queries=300))[0], t)
elif part == "dgan":
    lm = zoo.load("smallcnn-fmnist-standard")
    n = int(os.environ.get("N", 100))
    spec = os.environ.get("DGAN", "defense_gan:steps=50,restarts=4")
    eot, votes = int(os.environ.get("EOT", 4)), int(os.environ.get("VOTES", 3))
    for mode in os.environ.get("MODES", "oblivious,adaptive").split(","):
        t = time.time()
        log("dgan", evaluate(lm, test, [os.environ.get("ATTACK", "pgd:steps=20")], [0.1], n=n, defense=[spec], mode=mode,
                             eot=eot, votes=votes, checks=None)[0], t)
elif part == "dganprobe":
    # Measurements behind the README's explanation of the Defense-GAN numbers.
    import torch
    from robustbench_lite.attacks.latent import latent_search
    from robustbench_lite.generative import base as generative
    from robustbench_lite.inference import eval_mode
    from robustbench_lite.defenses.base import chain

    torch.manual_seed(0)
    lm = zoo.load("smallcnn-fmnist-standard")
    n = int(os.environ.get("N", 100))
    (dg,) = chain([os.environ.get("DGAN", "defense_gan:steps=50,restarts=4")])
    net = generative.cached(dg.model).model
    x, y = test.first(n).floats(), test.labels[:n]
    t = time.time()
    z0 = generative.invert(net, x, steps=dg.steps, restarts=dg.restarts, lr=dg.lr, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rec = net.decode(z0)
        acc_x, acc_rec = [float((lm.model(v).argmax(1) == y).float().mean()) for v in (x, rec)]
    err = (rec - x).flatten(1)
    # Athalye's existence argument: misread images on the generator's range near z*(x).
    ok = lm.model(rec).argmax(1) == y
    with eval_mode(lm.model):
        adv, dist, fooled = latent_search(lm.model, net, x[ok], y[ok], steps=100, lr=0.05, radius=3.0, threat=None, z0=z0[ok])
    move = (adv - rec[ok]).flatten(1)[fooled]
    # Smoothness: the projection's finite difference against its linearisation (through_range).
    v = torch.randn_like(x[:16]) ; g = lambda: torch.Generator().manual_seed(1)
    fd = (dg.transform(x[:16] + 0.01 * v, g()) - dg.transform(x[:16] - 0.01 * v, g())) / 0.02
    _, lin = torch.autograd.functional.jvp(lambda inp: dg.bpda(inp, g()), (x[:16],), (v,))
    cos = torch.nn.functional.cosine_similarity(fd.flatten(1), lin.flatten(1))
    row = dict(tag="dganprobe", defense=dg.spec(), n=n, acc_x=acc_x, acc_reconstruction=acc_rec,
               recon_linf_median=float(err.abs().amax(1).median()), recon_rmse_median=float(err.pow(2).mean(1).sqrt().median()),
               on_range_attacked=int(ok.sum()), on_range_fooled=float(fooled.float().mean()),
               on_range_latent_median=float(dist[fooled].median()), on_range_linf_median=float(move.abs().amax(1).median()),
               on_range_l2_median=float(move.norm(dim=1).median()), fd_vs_linear_cos_median=float(cos.median()),
               seconds=round(time.time() - t, 1))
    print(json.dumps(row), flush=True); out.write(json.dumps(row) + "\n"); out.flush()
elif part == "gen":
    n = int(os.environ.get("N", 1000))
    for name in ["smallcnn-fmnist-standard", "smallcnn-fmnist-pgd_at"]:
        lm = zoo.load(name)
        for atk in (["pgd:steps=50"], ["advgan"], ["gap"], ["gap:mode=image"], ["latent"]):
            t = time.time(); log("gen", evaluate(lm, test, atk, [0.1], n=n, checks=None)[0], t)
