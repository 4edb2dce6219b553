"""AdvGAN's attack time against PGD's on 1000 test points (README, "Generative models"):

    python scripts/generator_speed.py [MODEL]

The generator must already be trained and stored (any `rbl eval --attack advgan` on MODEL does
that); each attack is timed three times, interleaved, and the minimum is reported as a ratio
to AdvGAN's, since absolute times depend on what else shares the cores.
"""
import sys
import time

import torch

from robustbench_lite import data, specs, zoo
from robustbench_lite.threat import Threat

model = zoo.load(sys.argv[1] if len(sys.argv) > 1 else "smallcnn-fmnist-standard").model
test = data.load("fmnist", "test").first(1000)
x, y = test.floats(), test.labels
threat = Threat("linf", 0.1)
attacks = {k: specs.attack(k) for k in ["advgan", "pgd:steps=50,early_stop=False", "pgd:steps=50", "fgsm"]}
attacks["advgan"](model, x, y, threat)  # loads (or trains, the first time) the stored generator
times: dict[str, list[float]] = {k: [] for k in attacks}
for _ in range(3):
    for k, a in attacks.items():
        t = time.perf_counter()
        a(model, x, y, threat, generator=torch.Generator().manual_seed(0))
        times[k].append(time.perf_counter() - t)
base = min(times["advgan"])
for k, v in times.items():
    print(f"{k:35s} min {min(v):.3f}s  {min(v) / base:.1f}x advgan")
