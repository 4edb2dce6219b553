"""Seconds per full Fashion-MNIST training epoch for each (arch, recipe) of the full profile,
extrapolated from one epoch on a subset, and the implied wall time at the registered epochs.

    .venv/bin/python scripts/train_cost.py [--subset 6000] [--archs smallcnn resnet10t ...]

Run it alone: timings on 2 shared cores mean nothing while another job runs.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from robustbench_lite.profiles import ARCHS
from robustbench_lite.train import TrainConfig, train

RECIPES = ("standard", "fast_at", "pgd_at", "trades")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=6000)
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, one epoch on {args.subset} images, x{60000 / args.subset:g}")
    print("| arch | recipe | s / epoch | epochs | est. total |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            for recipe in args.recipes:
                full = TrainConfig(arch=arch, recipe=recipe).resolved()
                cfg = TrainConfig(arch=arch, recipe=recipe, epochs=1, train_subset=args.subset, monitor_n=1)
                card = train(cfg, out=Path(tmp) / f"{arch}-{recipe}", resume=False)
                per_epoch = card.curves[0]["seconds"] * 60000 / args.subset  # the epoch alone, without evaluation
                print(f"| {arch} | {recipe} | {per_epoch:.0f} | {full.epochs} | {per_epoch * full.epochs / 60:.0f} min |", flush=True)


if __name__ == "__main__":
    main()
