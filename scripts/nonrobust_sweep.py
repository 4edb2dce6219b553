"""D_det of ``rbl experiment nonrobust`` at several budgets and training-set sizes: the fresh
model's accuracy on the original test set (10000 points), what it predicts instead (y + 1), and
how a robust model reads the D_det images (README, "Robust architectures and non-robust features").

    python scripts/nonrobust_sweep.py linf:0.1:50:60000 l2:3.0:100:60000   # norm:eps:steps:n ...

Needs smallcnn-fmnist-standard (the source of the perturbations) and smallcnn-fmnist-pgd_at
(the robust reader) in the zoo. About 6 minutes per 60000-image setting on 2 cores.
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

from robustbench_lite.experiments.nonrobust import relabel
from robustbench_lite import data, zoo
from robustbench_lite.inference import predictions
from robustbench_lite.threat import Threat
from robustbench_lite.train import TrainConfig, train as fit

standard = zoo.load("smallcnn-fmnist-standard").model.eval()
robust = zoo.load("smallcnn-fmnist-pgd_at").model.eval()
train_split, test = data.load("fmnist", "train"), data.load("fmnist", "test")
for setting in sys.argv[1:]:
    norm, eps, steps, n = setting.split(":")
    sub = train_split.first(int(n))
    x, y = sub.floats(), sub.labels
    t = (y + 1) % 10
    start = time.time()
    det = relabel(standard, x, t, Threat(norm, float(eps)), steps=int(steps), classes=10,
                  generator=torch.Generator().manual_seed(0), dataset="fmnist", name="d_det")
    seen = predictions(robust, det.floats())
    with tempfile.TemporaryDirectory() as tmp:
        fit(TrainConfig(arch="smallcnn", dataset="fmnist", epochs=10, seed=1), out=Path(tmp), train_split=det, resume=False)
        pred = predictions(zoo.load_checkpoint(Path(tmp)).model, test.floats())
    acc = float((pred == test.labels).float().mean())
    print(f"{setting}: test accuracy {100 * acc:.1f}% (predicts y + 1: {100 * float((pred == (test.labels + 1) % 10).float().mean()):.1f}%); "
          f"standard model reads D_det as t: {100 * float((predictions(standard, det.floats()) == t).float().mean()):.1f}%; "
          f"robust model reads it as y: {100 * float((seen == y).float().mean()):.1f}%, as t: {100 * float((seen == t).float().mean()):.1f}%; "
          f"{time.time() - start:.0f} s", flush=True)
