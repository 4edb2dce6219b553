"""Figures of the experiments, drawn from stored artifacts only (never recomputed):
universal perturbations, fooling images, clean + perturbation = adversarial, transfer
heatmaps, destruction rate against transformation strength, and the generative models'
reconstructions, samples and latent interpolations, the robust/non-robust feature datasets,
and feature maps around a denoising block."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_lite.data import DATASETS
from robustbench_lite.store import Store

from .. import atomic
from ..formatting import pct



def _pct(v: Any) -> str:  # the galleries write "n/a" where a rate was not measured
    return pct(v, "n/a")

def _latest(store: Store, kind: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The newest artifact of ``kind`` per model: {model: (meta, tensors)}."""
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for _, meta, tensors in store.artifacts(kind):
        out[meta["model"]] = (meta, tensors)
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _image(t: Any) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _classes(meta: dict[str, Any], n: int) -> list[str]:
    info = DATASETS.get(meta.get("dataset", ""))
    return list(info.classes) if info is not None and len(info.classes) == n else [str(i) for i in range(n)]


def _save(fig: Any, path: Path, top: float = 1.0, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout(rect=(0, 0, 1, top))
    atomic.write(path, lambda p: fig.savefig(p, dpi=110))
    _plt().close(fig)
    return path


def _image_rows(fig_rows: Any, rows: list[tuple[str, Any, Any, bool]], names: list[str], title_y: float = 1.35) -> None:
    """Fill rows of axes with images, a label over each (red when it is a new label) and the
    row's title over its first image."""
    for ax_row, (title, imgs, labels, new) in zip(fig_rows, rows):
        for c, ax in enumerate(ax_row):
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(_image(imgs[c]), cmap="gray", vmin=0, vmax=1)
                if labels is not None:
                    ax.set_title(names[int(labels[c])], fontsize=7, color="crimson" if new else "black")
        ax_row[0].text(0, title_y, title, transform=ax_row[0].transAxes, fontsize=8, fontweight="bold", va="bottom")


def universal_gallery(store: Store, path: Path) -> Path | None:
    arts = _latest(store, "universal")
    if not arts:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(arts), figsize=(2.9 * len(arts), 3.1), squeeze=False)
    for ax, (model, (meta, t)) in zip(axes[0], arts.items()):
        v = t["perturbation"]
        xi = meta["metrics"]["xi"]
        im = ax.imshow(_image(v) if v.shape[0] == 1 else _image(v).mean(2), cmap="RdBu_r", vmin=-xi, vmax=xi)
        ax.set_title(f"{model}\nfools {meta['metrics']['fooling_rate']:.0%} (PGD {meta['metrics']['pgd_fooling_rate']:.0%})",
                     fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Universal perturbations, {meta['metrics']['norm']} xi = {xi} (held-out fooling rate)", fontsize=10)
    return _save(fig, path)


def fooling_gallery(store: Store, path: Path) -> Path | None:
    arts = _latest(store, "fooling")
    if not arts:
        return None
    plt = _plt()
    n_cls = max(t["images"].shape[0] for _, t in arts.values())
    fig, axes = plt.subplots(len(arts), n_cls, figsize=(1.45 * n_cls, 1.75 * len(arts)), squeeze=False)
    for row, (model, (meta, t)) in zip(axes, arts.items()):
        names = _classes(meta, t["images"].shape[0])
        for c, ax in enumerate(row):
            ax.axis("off")
            if c < t["images"].shape[0]:
                ax.imshow(_image(t["images"][c]), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{names[c]}\np={float(t['confidence'][c]):.3f}", fontsize=7)
        row[0].text(-0.15, 0.5, f"{model}\n({meta['metrics']['method']})", transform=row[0].transAxes,
                    ha="right", va="center", fontsize=7)
    fig.suptitle("Fooling images: the label each model assigns, with its confidence", fontsize=10)
    return _save(fig, path)


def examples_figure(store: Store, path: Path, points: int = 1) -> Path | None:
    """Per model and attack: clean, perturbation (signed, with colorbar) and adversarial image,
    each with the model's top label and confidence."""
    arts = {m: a for m, a in _latest(store, "universal").items() if "example_clean" in a[1]}
    if not arts:
        return None
    plt = _plt()
    rows = [(m, attack, i) for m in arts for attack in ("universal", "pgd") for i in range(points)]
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.05 * len(rows)), squeeze=False)
    for ax_row, (model, attack, i) in zip(axes, rows):
        meta, t = arts[model]
        names = _classes(meta, 10)
        clean, adv = t["example_clean"][i], t[f"example_{attack}"][i]
        delta = adv - clean
        bound = max(float(delta.abs().max()), 1e-6)
        for ax, img, title, kw in (
            (ax_row[0], _image(clean), f"{names[int(t['example_clean_label'][i])]} "
                                       f"{float(t['example_clean_confidence'][i]):.0%}", dict(cmap="gray", vmin=0, vmax=1)),
            (ax_row[1], _image(delta) if delta.shape[0] == 1 else _image(delta).mean(2), f"+ {attack}",
             dict(cmap="RdBu_r", vmin=-bound, vmax=bound)),
            (ax_row[2], _image(adv), f"= {names[int(t[f'example_{attack}_label'][i])]} "
                                     f"{float(t[f'example_{attack}_confidence'][i]):.0%}", dict(cmap="gray", vmin=0, vmax=1)),
        ):
            im = ax.imshow(img, **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
            if ax is ax_row[1]:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax_row[0].text(-0.1, 0.5, model, transform=ax_row[0].transAxes, ha="right", va="center", fontsize=7, rotation=90)
    fig.suptitle("clean + perturbation = adversarial (top label and confidence)", fontsize=10)
    return _save(fig, path, top=0.97)


def transfer_heatmaps(store: Store, path: Path) -> Path | None:
    arts = _latest(store, "universal")
    models = list(arts)
    if len(models) < 2:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(4.2 * 2 + 1.5, 0.55 * len(models) + 2.6), squeeze=False)
    for ax, key, title in zip(axes[0], ("universal_transfer", "pgd_transfer"),
                              ("universal perturbation of A on B", "per-example PGD crafted on A, on B")):
        m = np.array([[arts[a][0]["metrics"][key].get(b, np.nan) for b in models] for a in models])
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(models)), models, fontsize=7)
        ax.set_xlabel("evaluated on B")
        ax.set_ylabel("crafted on A")
        for i in range(len(models)):
            for j in range(len(models)):
                if not math.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < 0.6 else "black")
        ax.set_title(f"Fooling rate: {title}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def destruction_plot(store: Store, path: Path) -> Path | None:
    arts = _latest(store, "transforms")
    if not arts:
        return None
    plt = _plt()
    model, (meta, _) = next(iter(arts.items()))
    strengths = meta["metrics"]["strengths"]
    fig, axes = plt.subplots(1, len(strengths), figsize=(2.6 * len(strengths), 2.9), squeeze=False, sharey=True)
    for ax, (tname, values) in zip(axes[0], strengths.items()):
        for model, (meta, _) in arts.items():
            for attack, table in meta["metrics"]["destruction_rate"].items():
                rates = [np.nan if r is None else r for r in table[tname]]
                ax.plot(range(len(values)), rates, marker="o", label=f"{attack} ({model})" if len(arts) > 1 else attack)
        ax.set_xticks(range(len(values)), [f"{v:g}" for v in values], fontsize=7)
        ax.set_xlabel(tname.replace("_", " "), fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("destruction rate")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Share of adversarial examples a transformation turns back to the right label (Kurakin 2017); "
                 "strength grows to the right", fontsize=9)
    return _save(fig, path)


def write_all(store: Store, out: Path) -> list[Path]:
    """Every figure whose artifacts are in the store."""
    out = Path(out)
    figures = ((universal_gallery, "universal_perturbations.png"), (fooling_gallery, "fooling_images.png"),
               (examples_figure, "adversarial_examples.png"), (transfer_heatmaps, "transfer_matrix.png"),
               (destruction_plot, "destruction_rate.png"), (generative_gallery, "generative_models.png"),
               (latent_gallery, "latent_examples.png"), (unrestricted_table, "unrestricted.md"),
               (nonrobust_figure, "nonrobust_examples.png"), (nonrobust_table, "nonrobust.md"),
               (feature_maps_figure, "feature_maps.png"))
    return [p for fn, name in figures if (p := fn(store, out / name)) is not None]


def generative_gallery(store: Store, path: Path) -> Path | None:
    """Per generative model: test images over their reconstructions, samples, and a latent
    interpolation, with the card's headline metric in the title."""
    arts = _latest(store, "generative")
    if not arts:
        return None
    plt = _plt()
    rows: list[tuple[str, Any]] = []
    for model, (meta, t) in arts.items():
        m = meta["metrics"]
        figures = [f"{k.removeprefix('test_')} {m[k]:.4g}" for k in ("test_elbo", "test_mse") if k in m]
        if "classifier_acc_on_reconstructions" in m:
            figures.append(f"classifier acc. on reconstructions {m['classifier_acc_on_reconstructions']:.1%} "
                           f"(clean {m['classifier_clean_acc']:.1%})")
        if "classifier_confidence_on_samples" in m:
            figures.append(f"classifier confidence on samples {m['classifier_confidence_on_samples']:.2f}")
        head = "\n".join(textwrap.wrap(f"{model}: " + ", ".join(figures), 70))
        shown = [(what, t[key]) for key, what in (("originals", "test images"), ("reconstructions", "reconstructions"),
                                                  ("samples", "samples"), ("interpolation", "latent interpolation"))
                 if key in t]
        rows += [(f"{head}\n{what}" if i == 0 else what, imgs) for i, (what, imgs) in enumerate(shown)]
    cols = min(10, max(len(v) for _, v in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.5 * len(rows)), squeeze=False,
                             gridspec_kw={"hspace": 0.9, "wspace": 0.05, "left": 0.02, "right": 0.98, "top": 0.95, "bottom": 0.01})
    for ax_row, (title, imgs) in zip(axes, rows):
        for c, ax in enumerate(ax_row):
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(_image(imgs[c]), cmap="gray", vmin=0, vmax=1)
        ax_row[0].text(0, 1.08, title, transform=ax_row[0].transAxes, fontsize=7, va="bottom", ha="left")
    return _save(fig, path, tight=False)


def latent_gallery(store: Store, path: Path) -> Path | None:
    """Unrestricted latent adversarial examples: x, its VAE reconstruction, and the misread
    decode near it, with the classifier's label under each."""
    arts = {m: a for m, a in _latest(store, "latent").items() if len(a[1]["originals"])}
    if not arts:
        return None
    plt = _plt()
    cols = max(len(t["originals"]) for _, t in arts.values())
    fig, axes = plt.subplots(3 * len(arts), cols, figsize=(1.2 * cols, 1.7 * 3 * len(arts)), squeeze=False,
                             gridspec_kw={"hspace": 0.9, "left": 0.02, "right": 0.98, "top": 0.95, "bottom": 0.01})
    for k, (model, (meta, t)) in enumerate(arts.items()):
        names = _classes(meta, 10)
        m = meta["metrics"]
        _image_rows(axes[3 * k: 3 * k + 3], [
            (f"{model}: x (true label)", t["originals"], t["labels"], False),
            ("D(E(x))", t["reconstructions"], t["labels"], False),
            (f"misread decode, latent step <= {m['radius']} (success {m['success']:.0%})", t["adversarial"],
             t["adversarial_labels"], True)], names, title_y=1.32)
    return _save(fig, path, tight=False)


def unrestricted_table(store: Store, path: Path) -> Path | None:
    """The unrestricted latent attack's own table (Markdown): it has no eps, so it is never
    ranked with the bounded attacks."""
    arts = _latest(store, "latent")
    if not arts:
        return None

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["# Unrestricted latent-space adversarial examples", "",
             "Decoded images D(E(x) + r) with ||r||_2 <= radius that the classifier misreads (no eps around x). "
             "Success is among the points read correctly both as x and as D(E(x)). From `rbl experiment latent`.", "",
             "| model | VAE | n | clean % | on D(E(x)) % | radius | success % | median latent step | median L2 to x | median L-inf to x |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, (meta, _) in arts.items():
        m = meta["metrics"]
        lines.append(f"| {model} | {m['vae']} | {m['n']} | {_pct(m['clean_acc'])} | {_pct(m['acc_on_reconstructions'])} | "
                     f"{m['radius']} | {_pct(m['success'])} | {num(m['median_latent_distance'])} | {num(m['median_l2_to_x'])} | "
                     f"{num(m['median_linf_to_x'])} |")
    text = "\n".join(lines) + "\n"
    atomic.write_text(path, text)
    return path


def nonrobust_figure(store: Store, path: Path) -> Path | None:
    """Ilyas et al. 2019's datasets, one column per class: the original image and label, its
    D_det version with the new label, and the D_R image with its start."""
    arts = _latest(store, "nonrobust")
    if not arts:
        return None
    meta, t = list(arts.values())[-1]
    names = _classes(meta, 10)
    m = meta["metrics"]
    rows = [("training image x, label y", t["originals"], t["labels"], False),
            (f"D_det: targeted PGD on {m['standard_model']}, relabeled t (in red): "
             f"test accuracy of a model trained on it {_pct(m['sets']['deterministic']['clean_acc'])}%",
             t["deterministic"], t["deterministic_labels"], True),
            (f"D_rand: the same towards a random class: test accuracy {_pct(m['sets']['random']['clean_acc'])}%",
             t["random"], t["random_labels"], True),
            ("D_R start: a random other training image", t["starts"], None, False),
            (f"D_R: matches {m['robust_model']}'s features of x, label y", t["robustified"], t["labels"], False)]
    plt = _plt()
    cols = len(t["originals"])
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.15 * cols, 1.75 * len(rows)), squeeze=False,
                             gridspec_kw={"hspace": 1.0, "left": 0.02, "right": 0.98, "top": 0.93, "bottom": 0.01})
    _image_rows(axes, rows, names)
    return _save(fig, path, tight=False)


def nonrobust_table(store: Store, path: Path) -> Path | None:
    """The page of ``rbl experiment nonrobust``: what each set is, and the fresh models'
    accuracies on the original test set, clean and under PGD, with 95% intervals."""
    arts = _latest(store, "nonrobust")
    if not arts:
        return None
    lines = ["# Robust and non-robust features (Ilyas et al. 2019)", "",
             "A fresh model is trained on each set with the standard recipe and tested on the *original* test set. "
             "From `rbl experiment nonrobust`.", "", "![examples](nonrobust_examples.png)", ""]
    described = {"original": "the same training images, true labels",  # also the row order
                 "deterministic": "targeted PGD towards t = y + 1, relabeled t (looks mislabeled)",
                 "random": "targeted PGD towards a random t, relabeled t (looks mislabeled)",
                 "robustified": "synthesized to match the robust model's features, label y"}
    for _, (meta, _) in arts.items():
        m, cfg = meta["metrics"], meta["config"]
        lines += [f"Sets built from the first {m['n']} training images; D_det and D_rand: {m['det_attack']} on `{m['standard_model']}` "
                  f"(read as t by it: {_pct(m['det_read_as_target'])}% of D_det, {_pct(m['rand_read_as_target'])}% of D_rand"
                  + (f"; `{m['robust_model']}` still reads {_pct(m['det_robust_reads_original'])}% of D_det as the original "
                     f"class y and {_pct(m['det_robust_reads_target'])}% as t; median distance {m['det_distance_median']:.3g}"
                     if "det_robust_reads_original" in m else "")
                  + f"); D_R: {cfg['synth_steps']} Adam steps of {cfg['synth_lr']}"
                  + (f" with total-variation weight {cfg['tv']:g}" if cfg.get("tv") else "")
                  + f" on `{m['robust_model']}`'s {cfg.get('layer', 'penultimate')} representation from a random {cfg['start']} (median "
                  f"relative feature distance {m['robustified_feature_distance_median']:.3f}). Fresh `{cfg['arch']}`, "
                  f"{cfg['epochs']} epochs. Scored by {m['eval']}.", "",
                  f"| training set | what it is | test accuracy % (95% CI) | PGD accuracy % at {cfg['eval_eps']:g} (95% CI) | "
                  "PGD accuracy % by eps |", "|---|---|---:|---:|---|"]
        for name, v in sorted(m["sets"].items(), key=lambda kv: list(described).index(kv[0]) if kv[0] in described else 99):
            curve = ", ".join(f"{e}: {_pct(a)}" for e, a in v.get("robust_curve", {}).items())
            lines.append(f"| {name} | {described.get(name, '')} | {_pct(v['clean_acc'])} ({_pct(v['clean_ci'][0])}–"
                         f"{_pct(v['clean_ci'][1])}) | {_pct(v['robust_acc'])} ({_pct(v['robust_ci'][0])}–{_pct(v['robust_ci'][1])}) | "
                         f"{curve} |")
        if "robustified_minus_original" in m:
            lines += ["", "PGD accuracy of the D_R model minus the original-images model, point by point (Newcombe's paired 95% "
                      "interval): " + ", ".join(f"eps {e}: {100 * d:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"
                                                for e, (d, lo, hi) in m["robustified_minus_original"].items()) + " points."]
        lines.append("")
    text = "\n".join(lines)
    atomic.write_text(path, text)
    return path


def feature_maps_figure(store: Store, path: Path) -> Path | None:
    """Per denoising model, four test points: the image, its adversarial version, and one
    channel of the feature map before and after the denoising block, clean and adversarial
    (Xie et al. 2019, Figure 1), with the median relative feature noise in the title."""
    arts = _latest(store, "feature_maps")
    if not arts:
        return None
    plt = _plt()
    keys = (("images", "clean image"), ("adversarial", "adversarial"), ("clean_before", "clean, before block"),
            ("adv_before", "adversarial, before block"), ("clean_after", "clean, after block"),
            ("adv_after", "adversarial, after block"))
    points = max(len(t["images"]) for _, t in arts.values())
    fig, axes = plt.subplots(points * len(arts), len(keys), figsize=(1.5 * len(keys), 1.6 * points * len(arts) + 0.6),
                             squeeze=False, gridspec_kw={"hspace": 0.35, "wspace": 0.1, "left": 0.06, "right": 0.98,
                                                         "top": 0.9, "bottom": 0.02})
    for k, (model, (meta, t)) in enumerate(arts.items()):
        m = meta["metrics"]
        for p in range(len(t["images"])):
            row = axes[k * points + p]
            for ax, (key, what) in zip(row, keys):
                img = t[key][p]
                if key in ("images", "adversarial"):
                    ax.imshow(_image(img), cmap="gray", vmin=0, vmax=1)
                else:  # one channel; clean and adversarial maps of a stage share a colour scale
                    stage = key.split("_")[1]
                    pair = torch.stack([t[f"clean_{stage}"][p], t[f"adv_{stage}"][p]])
                    ax.imshow(img.numpy(), cmap="viridis", vmin=float(pair.min()), vmax=float(pair.max()))
                ax.set_xticks([]); ax.set_yticks([])
                if p == 0:
                    ax.set_title(what, fontsize=7)
            row[0].set_ylabel(f"channel {int(t['channel'][p])}", fontsize=7)
        axes[k * points][0].text(0, 1.45, f"{model} ({m['op']} block {m['block']}, PGD eps {m['eps']}): feature noise "
                                 f"{m['feature_noise_before']:.2f} before, {m['feature_noise_after']:.2f} after",
                                 transform=axes[k * points][0].transAxes, fontsize=8, fontweight="bold", va="bottom")
    return _save(fig, path, tight=False)
