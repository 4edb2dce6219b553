"""Training curves (loss, clean and PGD-10 accuracy per epoch) read from the zoo's model cards."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from robustbench_lite.zoo import ModelCard
from .. import atomic


def plot_training(cards: Sequence[ModelCard], path: Path) -> Path:
    """One panel per architecture with a colour per recipe: clean test accuracy solid, PGD-10
    test accuracy dashed, and a second row with the training loss. An epoch where training
    stopped on a collapse is marked with an x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    cards = [c for c in cards if c.curves]
    archs = list(dict.fromkeys(c.arch for c in cards)) or ["(no trained models)"]
    cols = len(archs)
    fig, axes = plt.subplots(2, cols, figsize=(4.0 * cols, 6.0), squeeze=False, sharex="col")
    recipes = list(dict.fromkeys(c.recipe for c in cards))
    colour = {r: f"C{i}" for i, r in enumerate(recipes)}
    for col, arch in enumerate(archs):
        acc, loss = axes[0, col], axes[1, col]
        for card in (c for c in cards if c.arch == arch):
            epochs = [row["epoch"] for row in card.curves]
            style = dict(color=colour[card.recipe], marker=".", linewidth=1.4)
            # Cards written before the per-epoch PGD monitor only hold clean accuracy on 1k test points.
            clean = [row.get("clean_acc_test", row.get("test_acc_1k", math.nan)) for row in card.curves]
            acc.plot(epochs, clean, **style)
            acc.plot(epochs, [row.get("pgd_acc_test", math.nan) for row in card.curves], linestyle="--", **style)
            loss.plot(epochs, [row["loss"] for row in card.curves], **style)
            if card.notes:
                acc.plot(epochs[-1:], [card.curves[-1].get("pgd_acc_test", math.nan)], "x", color="red", markersize=10)
        eps = {c.hyperparameters.get("recipe", {}).get("eps", 0.1) for c in cards if c.arch == arch}
        acc.set_title(f"{arch} (PGD at eps {', '.join(f'{e:g}' for e in sorted(eps))})", fontsize=9)
        acc.set_ylim(-0.02, 1.02)
        loss.set_xlabel("epoch")
        for ax in (acc, loss):
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy (500 test points)")
    axes[1, 0].set_ylabel("training loss")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour[r], marker=".", label=r) for r in recipes]
    handles += [Line2D([], [], color="grey", label="clean"), Line2D([], [], color="grey", linestyle="--", label="PGD-10")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Training curves: clean (solid) and PGD-10 (dashed) accuracy per epoch", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    atomic.write(path, lambda p: fig.savefig(p, dpi=110))
    plt.close(fig)
    return path
