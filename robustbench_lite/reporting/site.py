"""The leaderboard as a self-contained static site (jinja2 templates, inline CSS and JS, local
images only), LaTeX (booktabs), and RobustBench's per-model ``model_info`` JSON, both ways.

Nothing here computes an accuracy: every number is a stored cell.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from robustbench_lite import __version__, zoo
from robustbench_lite.specs import render
from robustbench_lite.store import Store

from .leaderboard import _META, frame, plot, table, unverified
from .. import atomic
from ..formatting import pct
from . import galleries
from .curves import plot_training


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _env() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)


def command(config: dict[str, Any], source: str | None = None) -> str:
    """The ``rbl eval`` line that recomputes a stored cell: every attack with its resolved
    hyperparameters, the defenses, the mode and the EOT/vote policy, eps, n, seed and norm
    (``rbl verify`` re-runs it from the stored config itself)."""
    model = config["model"]
    where = source or model["name"]
    parts = ["rbl eval", f"--checkpoint {where} --arch {model['arch']} --dataset {config['dataset']}"
             if source and zoo.is_path(source) else f"--model {where}"]
    parts += [f"--attack '{render(a, 'attack')}'" for a in config["attacks"]]
    parts += [f"--defense '{render(d, 'defense')}'" for d in config["defenses"]]
    if config["defenses"]:
        parts.append(f"--mode {config['mode']}")
        if config["eot"] > 1:
            parts.append(f"--eot {config['eot']}")
        if config["votes"] > 1:
            parts.append(f"--votes {config['votes']}")
    if config["batch_size"] is not None:
        parts.append(f"--batch-size {config['batch_size']}")
    eps = config["eps"]
    parts += [f"--eps {eps if isinstance(eps, str) else format(eps, 'g')}", f"--n {config['n']}", f"--seed {config['seed']}",
              f"--norm {config['norm']}"]
    return " ".join(parts)


def _flagged(checks: str) -> bool:
    return unverified(checks)


def write_site(store: Store, out: Path, headline_eps: float = 0.1, plotted: bool = False) -> list[Path]:
    """index.html (ranked, sortable, flagged rows marked), models/<model>.html (card, every
    cell with its CI, flags and reproducing command, the model's curves), and the figures;
    ``plotted``: accuracy_vs_eps.png and training_curves.png are already in ``out``."""

    out = Path(out)
    t = table(store, headline_eps)
    if t.empty:
        raise ValueError(f"no results at eps {headline_eps} in the store; run `rbl run` or `rbl eval` first")
    env = _env()
    written: list[Path] = []
    images = [{"title": "Accuracy under attack vs eps", "src": "accuracy_vs_eps.png"}]
    if not plotted:
        written.append(plot(store, out / "accuracy_vs_eps.png"))
    # Cards as recorded when each model was evaluated, matched by (name, weights): never the cache's.
    by_weights = {(c.name, c.weights_sha256): c for c in store.cards()}
    cards = {m: by_weights[(n, w)] for m, n, w in zip(t["model"], t["model_name"], t["weights_sha256"], strict=True)
             if (n, w) in by_weights}
    if any(c.curves for c in cards.values()):
        if not plotted:
            written.append(plot_training(list(cards.values()), out / "training_curves.png"))
        images.append({"title": "Training curves", "src": "training_curves.png"})
    for p in galleries.write_all(store, out / "experiments"):
        written.append(p)
        if p.suffix == ".png":
            images.append({"title": p.stem.replace("_", " ").capitalize(), "src": f"experiments/{p.name}"})
    attack_columns = [c for c in t.columns if c not in _META]
    rows = []
    for _, r in t.iterrows():
        rank = None if r["rank"] is None or (isinstance(r["rank"], float) and math.isnan(r["rank"])) else int(r["rank"])
        rows.append({"rank": rank, "model": r["model"], "slug": slug(r["model"]), "arch": r["arch"], "recipe": r["recipe"],
                     "defense": r["defense"], "mode": r["mode"], "clean": pct(r["clean_acc"]),
                     "attacks": {a: pct(r.get(a)) for a in attack_columns}, "robust": pct(r["robust_acc"]),
                     "robust_sort": r["robust_acc"], "ci": f"{pct(r['robust_acc_ci_low'])}–{pct(r['robust_acc_ci_high'])}",
                     "oblivious": pct(r.get("oblivious_acc")), "n": int(r["n"]), "checks": r["checks"],
                     "flagged": _flagged(r["checks"])})
    columns = (["#", "model", "arch", "recipe", "defense", "attacked", "clean %"] + [f"{a} %" for a in attack_columns]
               + ["worst case % (95% CI)", "oblivious %", "n", "masking checks"])
    imported = [meta for _, meta, _ in store.artifacts("robustbench_entry")]
    text = env.get_template("index.html.j2").render(
        title=f"robustbench_lite leaderboard ({t['dataset'].iloc[0]}, eps {headline_eps})", dataset=t["dataset"].iloc[0],
        norm="L-inf", eps=headline_eps, columns=columns, text_columns={"model", "arch", "recipe", "defense", "attacked",
                                                                       "masking checks"},
        attack_columns=attack_columns, rows=rows, images=images, imported=imported, version=__version__)
    atomic.write_text(out / "index.html", text)
    written.append(out / "index.html")
    written += _model_pages(store, out, env, cards)
    return written


def _command_of(store: Store, config: dict[str, Any] | None, source: str | None) -> str:
    """The ``rbl eval`` command that reproduces a cell; an escalated cell is reproduced by the
    command of the cell it escalates (which escalates by default)."""
    if config and config.get("kind") == "escalated":
        raw = store.config(config["cell"])
        if raw and "attacks" in raw:
            return command(raw, source)
    return command(config, source) if config and "attacks" in config else "(combined from stored cells)"


#: The figures of reports/galleries.py, by the artifact kind they are drawn from.
GALLERIES = {"universal": ("universal_perturbations.png", "adversarial_examples.png", "transfer_matrix.png"),
             "fooling": ("fooling_images.png",), "transforms": ("destruction_rate.png",), "latent": ("latent_examples.png",),
             "feature_maps": ("feature_maps.png",)}


def _model_pages(store: Store, out: Path, env: Any, cards: dict[str, Any]) -> list[Path]:
    df = frame(store)
    written = []
    in_artifacts: dict[str, set[str]] = {}
    for kind in GALLERIES:
        for _, meta, _ in store.artifacts(kind):
            in_artifacts.setdefault(str(meta.get("model")), set()).add(kind)
    for model, g in df.groupby("model", sort=False):
        cells = []
        for _, c in g.sort_values(["defense", "mode", "eps", "n_attacks"]).iterrows():
            failed = c.get("checks_failed") or ""
            run = c.get("checks_run") or 0
            steps = str(c.get("escalation") or "").replace("+", ", ")
            checks = ((f"UNVERIFIED: {failed}" if c.get("escalated_from") else f"FAILED: {failed}") if failed
                      else ("ok" if run else "not run")) + (f" (escalated: {steps})" if steps else "")
            config = store.config(c["key"])
            source = (store.provenance(c["key"]) or {}).get("model_source")
            cells.append({"defense": c["defense"], "mode": c["mode"], "attacks": c["attacks"], "eps": f"{c['eps']:g}",
                          "n": int(c["n"]), "clean": pct(c["clean_acc"]), "robust": pct(c["robust_acc"]),
                          "ci": f"{pct(c['robust_acc_ci_low'])}–{pct(c['robust_acc_ci_high'])}",
                          "caught": pct(c.get("caught")), "checks": checks, "flagged": bool(failed),
                          "command": _command_of(store, config, source)})
        page = out / "models" / f"{slug(model)}.html"
        plot(store, out / "models" / f"{slug(model)}.png", only=model)
        card = cards.get(model)
        card_items = [] if card is None else [(k, v) for k, v in (
            ("arch", card.arch), ("dataset", card.dataset), ("recipe", card.recipe),
            ("hyperparameters", json.dumps(card.hyperparameters)), ("seed", card.seed),
            ("clean accuracy (10k test)", f"{card.clean_acc:.4f}"), ("train seconds", card.train_seconds),
            ("training data sha256", card.data_sha256), ("weights sha256", card.weights_sha256),
            ("created", card.created), ("versions", json.dumps(card.versions)), ("notes", "; ".join(card.notes) or "–"))]
        images = [{"title": "Accuracy under attack vs eps", "src": f"{slug(model)}.png"}]
        if card is not None and card.curves and (out / "training_curves.png").is_file():
            images.append({"title": "Training curves (all zoo models of the leaderboard)", "src": "../training_curves.png"})
        for kind in sorted(in_artifacts.get(model, ())):
            images += [{"title": f.removesuffix(".png").replace("_", " ").capitalize(), "src": f"../experiments/{f}"}
                       for f in GALLERIES[kind] if (out / "experiments" / f).is_file()]
        text = env.get_template("model.html.j2").render(title=f"{model}: robustbench_lite", model=model, card=card_items,
                                                        cells=cells, images=images)
        atomic.write_text(page, text)
        written += [page, out / "models" / f"{slug(model)}.png"]
    return written


# --- LaTeX ---------------------------------------------------------------------------------


def latex(store: Store, headline_eps: float = 0.1) -> str:
    """The ranked table as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    t = table(store, headline_eps)
    if t.empty:
        return "% no results in the store\n"

    def esc(s: Any) -> str:
        return re.sub(r"([&%$#_{}])", r"\\\1", str(s)).replace("~", r"\textasciitilde{}")

    attack_columns = [c for c in t.columns if c not in _META]
    head = ["\\#", "Model", "Defense", "Clean"] + [esc(a) for a in attack_columns] + ["Worst case (95\\% CI)", "Checks"]
    lines = [f"% robustbench_lite {__version__}: L-inf eps = {headline_eps}, robust accuracy in %",
             "\\begin{tabular}{l l l r " + "r " * len(attack_columns) + "r l}", "\\toprule", " & ".join(head) + " \\\\",
             "\\midrule"]
    for _, r in t.iterrows():
        rank = "--" if r["rank"] is None or (isinstance(r["rank"], float) and math.isnan(r["rank"])) else str(int(r["rank"]))
        defense = "--" if r["defense"] == "none" else esc(f"{r['defense']} [{r['mode']}]")
        cells = [rank, f"\\texttt{{{esc(r['model'])}}}", defense, pct(r["clean_acc"])]
        cells += [pct(r.get(a)).replace("–", "--") for a in attack_columns]
        cells += [f"\\textbf{{{pct(r['robust_acc'])}}} ({pct(r['robust_acc_ci_low'])}--{pct(r['robust_acc_ci_high'])})",
                  "ok" if r["checks"] == "ok" else esc(r["checks"])]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# --- RobustBench model_info ----------------------------------------------------------------

#: The keys of a RobustBench ``model_info/<dataset>/<threat>/<name>.json`` file.
ROBUSTBENCH_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                    "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "unreliable", "footnote")


def robustbench_entries(store: Store, headline_eps: float = 0.1) -> dict[str, dict[str, Any]]:
    """Per ranked row, a RobustBench ``model_info`` dict. ``autoattack_acc`` holds our
    per-example worst case over the listed attacks, which the footnote names; ``unreliable``
    is set when a gradient-masking check failed."""
    t = table(store, headline_eps)
    out = {}
    for _, r in t.iterrows():
        if r["rank"] is None or (isinstance(r["rank"], float) and math.isnan(r["rank"])):
            continue
        name = r["model"] if r["defense"] == "none" else f"{r['model']} + {r['defense']}"
        out[name] = {"link": "", "name": name, "authors": "", "additional_data": False, "number_forward_passes": 1,
                     "dataset": r["dataset"], "venue": "robustbench_lite", "architecture": r["arch"],
                     "eps": f"{headline_eps:g}", "clean_acc": f"{100 * r['clean_acc']:.2f}", "reported": "",
                     "autoattack_acc": f"{100 * r['robust_acc']:.2f}", "unreliable": _flagged(r["checks"]),
                     "footnote": f"robustbench_lite worst case over {r['worst_case_over']} on the first {int(r['n'])} "
                                 f"test points ({r['mode'] if r['defense'] != 'none' else 'no defense'})"}
    return out


#: Our norms as RobustBench names its threat-model folders (model_info/<dataset>/<threat>/<id>.json).
THREATS = {"linf": "Linf", "l2": "L2"}


def parse_eps(text: Any) -> float:
    """An eps as RobustBench writes it (``"8/255"``, ``"0.5"``) or a number."""
    from fractions import Fraction

    try:
        v = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps must be a number or a fraction like 8/255, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"eps must be >= 0, got {text!r}")
    return v


def write_robustbench(store: Store, out: Path, headline_eps: float = 0.1) -> list[Path]:
    """Our ranked rows as RobustBench ``model_info`` files, laid out as RobustBench lays them out:
    ``<out>/<dataset>/<Linf|L2>/<name>.json``, which is where the threat model is read back from."""
    written = []
    for name, info in robustbench_entries(store, headline_eps).items():
        path = Path(out) / info["dataset"] / THREATS["linf"] / f"{slug(name)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(info, indent=2) + "\n"
        atomic.write_text(path, text)
        written.append(path)
    return written


def import_robustbench(store: Store, path: Path, threat: str | None = None) -> str:
    """Store a RobustBench ``model_info`` JSON as an imported entry: shown on the board of its
    dataset, threat model and eps, marked as imported with its source, never ranked (we did not
    evaluate it). Accuracies may be strings and eps a fraction (``"8/255"``), as in RobustBench's
    files; the threat model is ``threat`` (Linf or L2), else the file's folder (RobustBench's
    layout ``model_info/<dataset>/<Linf|L2>/<id>.json``). Returns the artifact key."""
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable RobustBench model_info JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise ValueError(f"{path}: a RobustBench model_info file is one JSON object, got {type(info).__name__}")
    missing = [k for k in ("name", "dataset", "eps", "clean_acc", "autoattack_acc") if k not in info]
    if missing:
        raise ValueError(f"{path}: RobustBench model_info lacks {', '.join(missing)}; expected keys: {', '.join(ROBUSTBENCH_KEYS)}")
    acc = {}
    for k in ("clean_acc", "autoattack_acc"):
        try:
            v = float(info[k])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {k} must be a percentage, got {info[k]!r}") from None
        if not 0 <= v <= 100:
            raise ValueError(f"{path}: {k} must be a percentage in [0, 100], got {info[k]!r}")
        acc[k] = v / 100
    folder = threat or path.parent.name
    norms = {v.lower(): k for k, v in THREATS.items()}
    if folder.lower() not in norms:
        raise ValueError(f"{path}: cannot tell its threat model: {folder!r} is not one of {', '.join(THREATS.values())} "
                         f"(keep RobustBench's layout model_info/<dataset>/<threat>/<id>.json, or pass --threat)")
    norm = norms[folder.lower()]
    eps = parse_eps(info["eps"])
    source = f"RobustBench model_info/{info['dataset']}/{THREATS[norm]}/{path.name}"
    meta = {k: info.get(k, "") for k in ROBUSTBENCH_KEYS} | {
        "model": str(info["name"]), "id": path.stem, "source_file": path.name, "source": source, "norm": norm,
        "eps_value": eps, "clean": acc["clean_acc"], "robust": acc["autoattack_acc"], "original": info}
    return store.put_artifact("robustbench_entry", meta, {})


def imported_entries(store: Store) -> list[dict[str, Any]]:
    """The imported RobustBench entries, each with ``original``: the file's object as it was read."""
    return [meta for _, meta, _ in store.artifacts("robustbench_entry") if "original" in meta]


def write_imported(store: Store, out: Path) -> list[Path]:
    """The imported entries back in RobustBench's format and layout, each its original object."""
    written = []
    for e in imported_entries(store):
        path = Path(out) / str(e["original"]["dataset"]) / THREATS[e["norm"]] / f"{e['id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(e["original"], indent=2) + "\n"
        atomic.write_text(path, text)
        written.append(path)
    return written


__all__ = ["command", "import_robustbench", "imported_entries", "latex", "parse_eps", "robustbench_entries", "slug",
           "write_imported", "write_robustbench", "write_site"]
