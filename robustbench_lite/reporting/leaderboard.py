"""Leaderboards (Markdown, CSV, JSON) and accuracy-vs-eps curves, read from the results store alone.

Nothing here computes an accuracy: every number is a stored result row.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import atomic
from ..formatting import labels, pct
from robustbench_lite.store import Store
from robustbench_lite.zoo import ModelCard
from .curves import plot_training
from . import twins

FORMATS = ("md", "csv", "json")
WORST = "worst case"


def frame(store: Store) -> pd.DataFrame:
    """All stored cells as rows, with ``kind`` = the single attack's spec or ``worst case``.

    A model is (name, weights sha256): ``model`` is the name, with ``@`` and the first 8 hex
    digits of the weights' hash where the store holds two weight sets under that name, so two
    such models are never shown, grouped or ranked as one; ``model_name`` is the bare name.
    """
    df = store.dataframe()
    if df.empty:
        return df
    df["model_name"] = df["model"]
    shown = labels(zip(df["model"], df["weights_sha256"]))
    df["model"] = [shown[k] for k in zip(df["model"], df["weights_sha256"])]
    df["n_attacks"] = df["attacks"].str.count(r"\+") + 1
    df["kind"] = df["attacks"].where(df["n_attacks"] == 1, WORST)
    df["mode"] = df["mode"].fillna("none") if "mode" in df else "none"  # rows stored before defenses existed
    df["label"] = df["model"].where(df["defense"] == "none", df["model"] + " + " + df["defense"] + " [" + df["mode"] + "]")
    return df


IMPORTED = "imported"


def imported(store: Store, eps: float | None = None, norm: str | None = None) -> pd.DataFrame:
    """Rows of the imported RobustBench entries (``rbl leaderboard --import``) at ``eps`` and ``norm``
    (all if None), shaped like :func:`table`'s: never ranked, ``checks`` naming the source."""
    rows = []
    for _, m, _ in store.artifacts("robustbench_entry"):
        if "norm" not in m or (norm is not None and m["norm"] != norm) or (eps is not None and abs(m["eps_value"] - eps) > 1e-9):
            continue
        rows.append({"rank": None, "model": str(m["model"]), "model_name": str(m["model"]), "weights_sha256": "",
                     "arch": str(m.get("architecture") or ""), "recipe": "", "dataset": str(m["dataset"]), "defense": "none",
                     "mode": "none", "norm": m["norm"], "eps": m["eps_value"], "eps_text": str(m["eps"]), "n": None,
                     "clean_acc": m["clean"], "robust_acc": m["robust"], "robust_acc_ci_low": None,
                     "robust_acc_ci_high": None, "robust_top5": None, "worst_case_over": "AutoAttack (as RobustBench reports it)",
                     "checks": f"imported from {m['source']}: not evaluated here, not ranked", IMPORTED: m["source"]})
    return pd.DataFrame(rows)


def boards(store: Store, headline_eps: float = 0.1) -> list[tuple[str, float]]:
    """The (norm, eps) boards the store can show: ours at the headline eps (L-inf), and every
    threat and eps that imported entries name."""
    out = [("linf", headline_eps)] if not table(store, headline_eps).empty else []
    for _, r in imported(store).iterrows():
        if not any(n == r["norm"] and abs(e - r["eps"]) < 1e-9 for n, e in out):
            out.append((r["norm"], float(r["eps"])))
    return out


def table(store: Store, headline_eps: float = 0.1, norm: str = "linf", with_imported: bool = False) -> pd.DataFrame:
    """One row per model (and defense, and attack mode) at the headline eps, ranked by
    worst-case robust accuracy.

    Per row the largest evaluated subset is used; its worst case is the stored cell with the
    most attacks (ties: the lowest accuracy), so the ranking never rests on a weaker attack
    list than the one shown. A defended model has a row per attack mode (adaptive, bpda,
    oblivious); only the strongest non-oblivious one is ranked.
    """
    extra = imported(store, headline_eps, norm) if with_imported else pd.DataFrame()
    df = frame(store)
    if df.empty:
        return extra
    df = df[(df["norm"] == norm) & (df["eps"].sub(headline_eps).abs() < 1e-9)]
    if df.empty:
        return extra
    rows = []
    for (model, dataset, defense, mode), g in df.groupby(["model", "dataset", "defense", "mode"], sort=False):
        g = g[g["n"] == g["n"].max()]
        worst = g.sort_values(["n_attacks", "robust_acc"], ascending=[False, True]).iloc[0]
        row: dict[str, Any] = {"model": model, "model_name": worst["model_name"], "weights_sha256": worst["weights_sha256"],
                               "arch": worst["arch"], "recipe": worst["recipe"], "dataset": dataset,
                               "defense": defense, "mode": mode, "eps": headline_eps, "n": int(worst["n"]),
                               "clean_acc": worst["clean_acc"]}
        for _, single in g[g["n_attacks"] == 1].iterrows():
            row[single["attacks"]] = single["robust_acc"]
        row.update(robust_acc=worst["robust_acc"], robust_acc_ci_low=worst["robust_acc_ci_low"],
                   robust_acc_ci_high=worst["robust_acc_ci_high"], robust_top5=worst["robust_top5"],
                   worst_case_over=worst["attacks"], checks=_flag(g, worst),
                   caught=worst["caught"] if "caught" in worst else None,
                   detection_auc=worst["detection_auc"] if "detection_auc" in worst else None)
        rows.append(row)
    out = pd.DataFrame(rows)
    # A defense attacked several adaptive ways (full gradients, BPDA) is ranked by the strongest:
    # its lowest robust accuracy, and only if that row's checks pass: a row whose checks still fail
    # (after escalation, or with escalation switched off) is unverified, shown below the ranking
    # with its reason, never ranked; a verified row of the same defense with a higher number is not
    # ranked in its place. Oblivious rows are shown, never ranked.
    adaptive = out[out["mode"] != "oblivious"]
    strongest = adaptive.sort_values("robust_acc").groupby(["model", "dataset", "defense"], sort=False).head(1).index
    out["ranked"] = out.index.isin(strongest) & ~out["checks"].map(unverified)
    # The oblivious number beside every adaptive row of the same defense: the gap is what an
    # oblivious evaluation would have overstated.
    obl = out[out["mode"] == "oblivious"].set_index(["model", "dataset", "defense"])["robust_acc"]
    out["oblivious_acc"] = [obl.get((m, d, f)) if mode not in ("oblivious", "none") else None
                            for m, d, f, mode in zip(out["model"], out["dataset"], out["defense"], out["mode"], strict=True)]
    out = out.sort_values(["ranked", "robust_acc", "clean_acc"], ascending=False).reset_index(drop=True)
    ranks = out["ranked"].cumsum()
    out.insert(0, "rank", [int(r) if ok else None for r, ok in zip(ranks, out["ranked"], strict=True)])
    out = out.drop(columns="ranked")
    return pd.concat([out, extra], ignore_index=True) if not extra.empty else out


def _flag(g: pd.DataFrame, worst: pd.Series) -> str:
    """The gradient-masking status of one leaderboard row, from the cell it shows (its worst case):
    ``ok``; ``ok after escalation (steps)``; ``UNVERIFIED: checks`` where checks still fail after
    escalation, ``FAILED: checks (not escalated)`` where none ran; ``not run``. A worst case whose own
    checks were not run takes the failed checks of the other cells of its row, if any."""
    if "checks_run" not in g:
        return "not run"
    escalated = str(worst.get("escalation") or "")
    steps = f" ({escalated.replace('+', ', ')})" if escalated else ""
    if (worst.get("checks_run") or 0) > 0:
        failed = sorted(n for n in str(worst.get("checks_failed") or "").split(",") if n)
    else:
        checked = g[g["checks_run"].fillna(0) > 0]
        if checked.empty:
            return "not run"
        failed = sorted({name for names in checked["checks_failed"].fillna("") for name in names.split(",") if name})
    if failed:
        return ("UNVERIFIED after escalation" + steps + ": " if escalated or worst.get("escalated_from")
                else "FAILED (not escalated): ") + ", ".join(failed)
    return "ok after escalation" + steps if escalated else "ok"


def unverified(checks: str) -> bool:
    """Whether a row's status says a check still fails: shown, never ranked."""
    return checks.startswith(("FAILED", "UNVERIFIED"))


_META = {"rank", "model", "model_name", "weights_sha256", "arch", "recipe", "dataset", "defense", "mode", "eps", "n", "clean_acc", "robust_acc",
         "robust_acc_ci_low", "robust_acc_ci_high", "robust_top5", "worst_case_over", "checks", "caught",
         "detection_auc", "oblivious_acc", "norm", "eps_text", IMPORTED}


NORMS = {"linf": "L-inf", "l2": "L2"}


def markdown(store: Store, headline_eps: float = 0.1) -> str:
    """One board per (dataset, threat, eps): ours at the headline eps, and the imported entries'
    own, each beside our rows of the same board."""
    parts = []
    for norm, eps in boards(store, headline_eps):
        t = table(store, eps, norm, with_imported=True)
        for dataset in dict.fromkeys(t["dataset"]):
            parts.append(_board(t[t["dataset"] == dataset].reset_index(drop=True), norm, eps))
    if not parts:
        return "No results in the store yet. Run `rbl run` or `rbl eval` first.\n"
    return "\n".join(parts)


def _board(t: pd.DataFrame, norm: str, headline_eps: float) -> str:
    ours = t[t[IMPORTED].isna()] if IMPORTED in t else t
    eps_text = t["eps_text"].dropna().iloc[0] if "eps_text" in t and t["eps_text"].notna().any() else f"{headline_eps:g}"
    attack_cols = [c for c in t.columns if c not in _META and t[c].notna().any()]
    defended = bool((t["defense"] != "none").any())
    head = ["#", "model", "arch", "recipe"] + (["defense", "attacked"] if defended else []) + ["clean %"]
    detectors = "caught" in t and bool(t["caught"].notna().any())
    head += [f"{c} %" for c in attack_cols] + ["worst case % (95% CI)"] + (["oblivious %"] if defended else []) + ["top-5 worst %"]
    head += ["caught %", "detection AUC"] if detectors else []
    head += ["n", "masking checks"]
    lines = [
        f"# Leaderboard: {t['dataset'].iloc[0]} {NORMS[norm]} eps = {eps_text}",
        "",
        "Robust accuracy counts an example only if it is clean-correct and correct under every attack "
        "(per-example worst case). Ranked by worst-case robust accuracy. Top-5 robust accuracy is "
        "shown only where every attack ran without early stop (a point stopped at the top-1 flip "
        "keeps its label in the top 5). The masking checks column gives the gradient-masking checks "
        "(Carlini et al. 2019): where one failed, the engine escalated (attacks chosen by the failed check, "
        "run over the points still standing, then the checks again); a row whose checks still fail is "
        "UNVERIFIED and listed below the ranking without a rank, its number an upper bound only." + (
            " A defended model is listed once per attack mode: adaptive (white-box through the defense, full "
            "gradients where it is differentiable, BPDA for non-differentiable steps, EOT for random ones), bpda "
            "(the identity through every defense step) and oblivious (examples crafted on the bare model). Only the "
            "strongest non-oblivious row is ranked; the oblivious % column beside it is what an oblivious "
            "evaluation would have reported."
            if defended else "") + (
            " A detector's rejection of an adversarial input counts as robust (caught %), its rejection of "
            "a clean input as an error; adaptive rows attack classifier and detector jointly (Carlini & Wagner 2017)."
            if detectors else "") + (
            " Rows marked imported come from RobustBench's model_info files as RobustBench reports them "
            "(AutoAttack on their test set); they were not evaluated here and are shown, never ranked."
            if len(ours) < len(t) else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---:" if h not in ("model", "arch", "recipe", "defense", "attacked", "masking checks") else "---" for h in head]) + "|",
    ]
    for _, r in t.iterrows():
        rank = "–" if r["rank"] is None or (isinstance(r["rank"], float) and math.isnan(r["rank"])) else str(int(r["rank"]))
        cells = [rank, f"`{r['model']}`", r["arch"], r["recipe"]]
        cells += [r["defense"], r["mode"]] if defended else []
        cells += [pct(r["clean_acc"])]
        cells += [pct(r.get(c)) for c in attack_cols]
        cells += [f"**{pct(r['robust_acc'])}** ({pct(r['robust_acc_ci_low'])}–{pct(r['robust_acc_ci_high'])})"]
        cells += [pct(r["oblivious_acc"])] if defended else []
        cells += [pct(r["robust_top5"])]
        if detectors:
            auc = r["detection_auc"]
            cells += [pct(r["caught"]), "–" if auc is None or (isinstance(auc, float) and math.isnan(auc)) else f"{auc:.3f}"]
        cells += ["–" if r["n"] is None or (isinstance(r["n"], float) and math.isnan(r["n"])) else str(int(r["n"])), r["checks"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![accuracy vs eps](accuracy_vs_eps.png)", ""] if not ours.empty else [""]
    return "\n".join(lines)


def render(store: Store, fmt: str, headline_eps: float = 0.1) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "md":
        return markdown(store, headline_eps)
    if fmt == "csv":
        df = frame(store)
        return df.drop(columns=["n_attacks", "label", "model_name"], errors="ignore").to_csv(index=False)
    rows = [r for norm, eps in boards(store, headline_eps)
            for r in table(store, eps, norm, with_imported=True).to_dict(orient="records")]
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    return json.dumps(clean, indent=2, default=str) + "\n"


def plot(store: Store, path: Path, norm: str = "linf", only: str | None = None) -> Path:
    """Accuracy vs eps: one panel per model (``only`` one model's), one curve per attack, the
    worst case with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = frame(store)
    df = df[(df["norm"] == norm) & ((df["model"] == only) if only is not None else True)]
    models = list(dict.fromkeys(df["label"]))
    cols = max(1, math.ceil(math.sqrt(len(models))))
    rows = math.ceil(len(models) / cols) if models else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, model in zip(axes.flat, models):
        g = df[df["label"] == model]
        g = g[g["n"] == g["n"].max()]
        for kind, k in g.groupby("kind", sort=False):
            k = k.sort_values("eps").drop_duplicates("eps", keep="last")
            style = dict(color="black", linewidth=2.2, marker="s") if kind == WORST else dict(marker="o", linewidth=1.3)
            ax.plot(k["eps"], k["robust_acc"], label=kind, **style)
            if kind == WORST:
                ax.fill_between(k["eps"], k["robust_acc_ci_low"], k["robust_acc_ci_high"], color="black", alpha=0.12)
        ax.set_title(f"{model} (n={int(g['n'].max())})", fontsize=9)
        ticks = sorted(g["eps"].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 accuracy")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    if models:
        axes.flat[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("Accuracy under attack vs eps (worst case shaded with its 95% Wilson interval)", fontsize=10)
    fig.tight_layout()
    atomic.write(path, lambda p: fig.savefig(p, dpi=110))
    plt.close(fig)
    return path


def write_all(store: Store, out: Path, headline_eps: float = 0.1, cards: Sequence[ModelCard] = ()) -> list[Path]:
    """Write leaderboard.md, leaderboard.csv, leaderboard.json and accuracy_vs_eps.png into ``out``,
    twins.md when denoising models and their plain twins are in the store, and
    training_curves.png when model cards with curves are given."""

    out = Path(out)
    written = []
    curves = any(c.curves for c in cards)
    for fmt, name in (("md", "leaderboard.md"), ("csv", "leaderboard.csv"), ("json", "leaderboard.json")):
        text = render(store, fmt, headline_eps)
        if fmt == "md" and curves:
            text += "\n![training curves](training_curves.png)\n"
        atomic.write_text(out / name, text)
        written.append(out / name)
    written.append(plot(store, out / "accuracy_vs_eps.png"))

    if (p := twins.write(store, out / "twins.md", headline_eps)) is not None:
        written.append(p)
    if curves:
        written.append(plot_training(cards, out / "training_curves.png"))
    return written
