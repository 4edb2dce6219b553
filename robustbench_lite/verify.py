"""``rbl verify``: re-run stored cells from their stored configs and compare the per-example bits.

A stored cell holds everything that decided it (``cell.CellConfig``), so it can be recomputed
from the store alone, given the model's weights and the data: the weights are found by the
cell's model source (a zoo name or a checkpoint path), the zoo cache, or ``--models`` folders,
and are only used when their sha256 is the one the cell was computed on. A worst-case row is
recombined from the stored cells it names. A cell of the first key scheme (``store.Store.legacy``)
is re-run from what its old config holds.

Each stored set of gradient-masking verdicts is re-run from its own config too: every check's
pass or fail must be as stored (and its value, to float rounding).

Each run of an experiment (``rbl experiment``; its outputs are artifacts) is re-run from what
its artifacts record (the experiment's config, every model of the run by weights, the seed and
both splits by sha256): every metric and every tensor must be as stored, one row per artifact.

Each cell ends ``identical`` (every robust and top-5 bit, and every accuracy, as stored),
``MISMATCH`` (what differs, and how many points), or ``unavailable`` (what is missing to re-run
it: weights, data, a plugin); a row the store refuses (``StoreIntegrityError``) is a mismatch.
Where the code or the libraries changed since the cell was stored, the note says which, so an
identical result under new code and a changed one can be told apart.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .formatting import pct
from . import data as data_mod
from . import specs, zoo
from .cell import SCHEMA, CellConfig, digest
from .engine import EvalResult, cell_configs, evaluate
from .registry import ATTACKS, DEFENSES, EXPERIMENTS
from .store import Store, StoreIntegrityError, _checked, _result
from .experiments.base import execute
from .checks import Verdict
from .engine import recheck
from . import devices
from .fetch import is_remote
from .checks import CheckConfig
from .engine import escalate
from .escalation import EscalationConfig

IDENTICAL, MISMATCH, UNAVAILABLE = "identical", "MISMATCH", "unavailable"


@dataclass(frozen=True)
class Outcome:
    """One verified row."""

    key: str
    kind: str  # cell, worst case, legacy cell
    label: str
    eps: float | None
    n: int | None
    stored: float | None  # stored robust accuracy
    recomputed: float | None
    status: str
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == IDENTICAL


class _Unavailable(Exception):
    """What is missing to re-run a cell."""


def verify(store: Store, *, sample: int | None = None, seed: int = 0, data_dir: str | None = None,
           models: Sequence[str | Path] = (), on_outcome: Callable[[Outcome], Any] | None = None,
           device: str | None = None) -> list[Outcome]:
    """Re-run ``sample`` stored rows (all by default), chosen with ``seed``; see the module docstring.

    Each row is re-run on the device type it was computed on (unavailable where this machine
    lacks it), or on ``device`` when one is given: a cell from another device is then another
    cell, and the note says so."""
    rows: list[tuple[Any, ...]] = ([("cell", *r) for r in store.raw()] + [("checks", *r) for r in store.raw_checks()]
                                   + [("experiment", run) for run in _experiment_runs(store)])
    if sample is not None:
        if sample <= 0:
            raise ValueError(f"--sample must be a positive integer, got {sample}")
        rows = sorted(random.Random(seed).sample(rows, min(sample, len(rows))), key=rows.index)
    ctx = _Context(store, data_dir, [Path(m) for m in models], device)
    out = []
    for kind, *row in rows:
        outcomes = _experiment(ctx, *row) if kind == "experiment" else [
            _one(ctx, *row) if kind == "cell" else _verdicts(ctx, *row)]
        for outcome in outcomes:
            out.append(outcome)
            if on_outcome:
                on_outcome(outcome)
    return out


def _experiment_runs(store: Store) -> list[list[tuple[str, dict[str, Any], bytes]]]:
    """The stored experiment artifacts, grouped by the run that made them: (key, meta, tensors blob) each."""
    runs: dict[str, list[tuple[str, dict[str, Any], bytes]]] = {}
    for key, kind, text, blob in store.raw_artifacts():
        if kind not in EXPERIMENTS:
            continue  # a trained generator or a generative model's samples: an input, addressed by its content
        meta = json.loads(text)
        run = {k: meta.get(k) for k in ("config", "models", "seed", "dataset", "test_sha256", "train_sha256")}
        runs.setdefault(json.dumps(run, sort_keys=True) if meta.get("models") else key, []).append((key, meta, blob))
    return list(runs.values())


def is_timing(key: str) -> bool:
    """A wall-clock field (`seconds`, `train_seconds`, ...): the machine decides it, not the run's inputs."""
    return key == "seconds" or key.endswith("_seconds")


def decided(metrics: Any) -> Any:
    """An experiment's metrics without their wall-clock fields, at any depth: what a re-run must reproduce."""
    if isinstance(metrics, dict):
        return {k: decided(v) for k, v in metrics.items() if not (isinstance(k, str) and is_timing(k))}
    if isinstance(metrics, list):
        return [decided(v) for v in metrics]
    return metrics


def _experiment(ctx: "_Context", run: list[tuple[str, dict[str, Any], bytes]]) -> list[Outcome]:
    """One experiment run, re-run from its artifacts' metadata: an outcome per artifact."""
    from safetensors.torch import load


    def outcome(key: str, meta: dict[str, Any], status: str, note: str) -> Outcome:
        config = meta.get("config", {})
        return Outcome(key=key, kind="experiment", label=f"{meta.get('model')} / {config.get('experiment', '?')}",
                       eps=config.get("eps"), n=config.get("n"), stored=None, recomputed=None, status=status, note=note)

    first = run[0][1]
    try:
        if not first.get("models"):
            raise _Unavailable("stored before experiments recorded every model and the training split of their run")
        experiment = _methods([first["config"]], EXPERIMENTS, "experiment")[0]
        models = [ctx.model(m["name"], m["weights_sha256"], m.get("arch"), first["dataset"], m.get("source"))
                  for m in first["models"]]
        splits = {s: ctx.split(first["dataset"], s) for s in ("train", "test")}
        for s, split in splits.items():
            if split.sha256() != first[f"{s}_sha256"]:
                raise _Unavailable(f"the {first['dataset']}/{s} split here is not the one the experiment ran on")
        fresh = {o.model: o for o, _ in execute(experiment, models, splits["train"], splits["test"], seed=first["seed"],
                                                device=ctx.where(first.get("device", "cpu")))}
    except _Unavailable as exc:
        return [outcome(key, meta, UNAVAILABLE, str(exc)) for key, meta, _ in run]
    out = []
    for key, meta, blob in run:
        now = fresh.get(meta["model"])
        if now is None:
            out.append(outcome(key, meta, MISMATCH, f"the run now gives no outcome for {meta['model']}"))
            continue
        metrics = decided(json.loads(json.dumps(now.metrics, sort_keys=True, default=str)))
        kept = decided(meta["metrics"])
        diffs = [f"{k}: {kept.get(k)!r} stored, {metrics.get(k)!r} now"
                 for k in sorted(set(metrics) | set(kept)) if metrics.get(k) != kept.get(k)]
        stored = load(blob)
        diffs += [f"tensor {name} differs" for name in sorted(set(stored) | set(now.tensors))
                  if name not in stored or name not in now.tensors
                  or not torch.equal(stored[name], now.tensors[name].detach().cpu())]
        out.append(outcome(key, meta, MISMATCH if diffs else IDENTICAL, "; ".join(diffs)))
    return out


def _verdicts(ctx: "_Context", key: str, config_text: str, verdicts_text: str) -> Outcome:
    """A stored set of gradient-masking verdicts, re-run from its config: every check's pass/fail
    must be as stored, and its value too, to float rounding."""

    config = json.loads(config_text)
    label = f"{config['cell']['model']['name']} / masking checks"
    base = dict(key=key, kind="checks", label=label, eps=config["cell"]["eps"], n=config["settings"]["n"],
                stored=None, recomputed=None)
    if digest(config_text) != key:
        return Outcome(status=MISMATCH, note=f"its config hashes to {digest(config_text)[:16]}...: a corrupt or edited store",
                       **base)
    stored = [Verdict.from_dict(v) for v in json.loads(verdicts_text)]
    try:
        cell = CellConfig.from_dict(config["cell"])
        cells = [ctx.store.get(k) for k in config["cells"]]
        if any(c is None for c in cells):
            raise _Unavailable("a cell whose accuracy the checks read is not in the store")
        source = next((p.get("model_source") for k in config["cells"] if (p := ctx.store.provenance(k))), None)
        lm = ctx.model(cell.model.name, cell.model.weights_sha256, cell.model.arch, cell.dataset, source)
        split = ctx.split(cell.dataset, cell.split)
        calibration = ctx.split(cell.dataset, cell.calibration["split"]) if cell.calibration else None
        now = recheck(config, lm, split, {c.eps: c.robust_acc for c in cells},  # type: ignore[union-attr]
                      _methods(cell.defenses, DEFENSES, "defense"), calibration,
                      _methods(config.get("attacks", []), ATTACKS, "attack"), device=ctx.where(cell.device))
    except _Unavailable as exc:
        return Outcome(status=UNAVAILABLE, note=str(exc), **base)
    diffs = []
    for a, b in zip(stored, now, strict=False):
        if (a.name, a.passed) != (b.name, b.passed):
            diffs.append(f"{a.name}: {'passed' if a.passed else a.passed} stored, {'passed' if b.passed else b.passed} now")
        elif (a.value is None) != (b.value is None) or (a.value is not None and abs(a.value - b.value) > 1e-3 * (1 + abs(a.value))):
            diffs.append(f"{a.name}: value {a.value} stored, {b.value} now")
    if len(stored) != len(now):
        diffs.append(f"{len(stored)} verdicts stored, {len(now)} now")
    return Outcome(status=MISMATCH if diffs else IDENTICAL, note="; ".join(diffs), **base)


def _one(ctx: "_Context", key: str, schema: int, config_text: str, row_text: str, bits: bytes,
         provenance: dict[str, Any]) -> Outcome:
    config = json.loads(config_text)
    record = json.loads(row_text)
    label = f"{record.get('model')} / {'+'.join(record.get('attacks', ()))}" + (
        f" / {record['defense']} [{record.get('mode')}]" if record.get("defense", "none") != "none" else "")
    base = dict(key=key, label=label, eps=record.get("eps"), n=record.get("n"), stored=record.get("robust_acc"))
    if schema != SCHEMA:
        stored = _result(record, bits)
        try:
            fresh = _rerun_legacy(ctx, config, provenance)
        except _Unavailable as exc:
            return Outcome(kind="legacy cell", recomputed=None, status=UNAVAILABLE, note=str(exc), **base)
        return _compare(stored, fresh, "legacy cell", base, "computed under the first key scheme")
    try:
        stored = _checked(key, config_text, row_text, bits)
    except StoreIntegrityError as exc:
        return Outcome(kind="cell", recomputed=None, status=MISMATCH, note=str(exc), **base)
    if config.get("kind") == "worst_case":
        parts = [ctx.store.get(k) for k in config["combined_from"]]
        if any(p is None for p in parts):
            return Outcome(kind="worst case", recomputed=None, status=UNAVAILABLE,
                           note="a cell it combines is not in the store", **base)
        robust = np.logical_and.reduce([p.robust for p in parts])  # type: ignore[union-attr]
        top5 = np.logical_and.reduce([p.robust_top5_mask for p in parts])  # type: ignore[union-attr]
        fresh = dataclasses.replace(stored, robust=robust, robust_top5_mask=top5, robust_acc=float(robust.mean()))
        return _compare(stored, fresh, "worst case", base, "recombined from its stored cells")
    if config.get("kind") == "escalated":
        try:
            fresh = _reescalate(ctx, config, provenance)
        except _Unavailable as exc:
            return Outcome(kind="escalated cell", recomputed=None, status=UNAVAILABLE, note=str(exc), **base)
        outcome = _compare(stored, fresh, "escalated cell", base, "")
        diffs = [f"{a.name}: {a.passed} stored, {b.passed} now" for a, b in zip(stored.rechecks, fresh.rechecks, strict=False)
                 if (a.name, a.passed) != (b.name, b.passed)]
        if diffs or len(stored.rechecks) != len(fresh.rechecks):
            outcome = dataclasses.replace(outcome, status=MISMATCH, note="; ".join(
                [outcome.note] * bool(outcome.note) + diffs + [f"checks after escalation: {len(stored.rechecks)} stored, "
                                                               f"{len(fresh.rechecks)} now"] * (len(stored.rechecks) != len(fresh.rechecks))))
        return outcome
    try:
        cell = CellConfig.from_dict(config)
        fresh, now = _rerun(ctx, cell, provenance)
    except _Unavailable as exc:
        return Outcome(kind="cell", recomputed=None, status=UNAVAILABLE, note=str(exc), **base)
    return _compare(stored, fresh, "cell", base, _changes(cell, now))


def _compare(stored: EvalResult, fresh: EvalResult, kind: str, base: dict[str, Any], note: str) -> Outcome:
    diffs = []
    for name, a, b in (("robust", stored.robust, fresh.robust), ("top-5", stored.robust_top5_mask, fresh.robust_top5_mask)):
        if a.shape != b.shape:
            diffs.append(f"{name} bits for {len(a)} vs {len(b)} points")
        elif not np.array_equal(a, b):
            diffs.append(f"{name} bits differ at {int((a != b).sum())} of {len(a)} points")
    for name in ("clean_acc", "robust_acc", "clean_top5", "robust_top5", "caught", "clean_rejected", "detection_auc"):
        a, b = getattr(stored, name), getattr(fresh, name)
        if a != b and not (isinstance(a, float) and isinstance(b, float) and abs(a - b) < 1e-12):
            diffs.append(f"{name} {a} stored, {b} now")
    status = MISMATCH if diffs else IDENTICAL
    return Outcome(kind=kind, recomputed=fresh.robust_acc, status=status, note="; ".join(diffs + ([note] if note else [])),
                   **base)


def _changes(stored: CellConfig, now: CellConfig) -> str:
    """What differs between the config a cell was stored under and the one this code gives it."""
    if stored == now:
        return ""
    out = []
    for f in dataclasses.fields(CellConfig):
        a, b = getattr(stored, f.name), getattr(now, f.name)
        if a == b:
            continue
        if f.name in ("attacks", "defenses"):
            for x, y in zip(a, b, strict=False):
                if x != y:
                    what = x.get("attack", x.get("defense"))
                    fields = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
                    out.append(f"{what}: {', '.join('code' if k == 'code_sha256' else k for k in fields)} changed")
        elif f.name == "versions":
            out.append("libraries " + ", ".join(f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b))
                                                 if a.get(k) != b.get(k)))
        elif f.name == "engine_sha256":
            out.append("engine code changed")
        elif f.name == "model":
            out.append("model " + ", ".join(k for k in ("arch", "arch_sha256", "weights_sha256", "name")
                                            if getattr(a, k) != getattr(b, k)) + " changed")
        else:
            out.append(f"{f.name} {a!r} -> {b!r}")
    return "stored under other code: " + "; ".join(out)


class _Context:
    """What re-running needs, loaded once: models by weights hash, data splits."""

    def __init__(self, store: Store, data_dir: str | None, folders: list[Path], device: str | None = None):
        self.store = store
        self.data_dir = data_dir
        self.folders = folders
        self.device = device
        self._models: dict[str, zoo.LoadedModel] = {}
        self._splits: dict[tuple[str, str], data_mod.Split] = {}

    def where(self, stored: str) -> str:
        """The device a row re-runs on: the one asked for, else the type it was computed on."""

        try:
            return str(devices.resolve(self.device or stored))
        except devices.DeviceError as exc:
            raise _Unavailable(f"computed on {stored}: {exc}") from exc

    def split(self, dataset: str, split: str) -> data_mod.Split:
        if (dataset, split) not in self._splits:
            try:
                self._splits[(dataset, split)] = data_mod.load(dataset, split, data_dir=self.data_dir)
            except (data_mod.DatasetNotFoundError, ValueError) as exc:
                raise _Unavailable(f"data: {exc}") from exc
        return self._splits[(dataset, split)]

    def model(self, name: str, weights: str, arch: str | None, dataset: str, source: str | None) -> zoo.LoadedModel:
        if weights in self._models:
            return self._models[weights]

        tried = []
        for key in dict.fromkeys(k for k in (source, name) if k and not zoo.is_path(k)):
            if zoo.fetchable(key) and not zoo.is_trained(key):  # a card naming where its weights are
                try:
                    zoo.load(key)
                except (zoo.CheckpointError, ValueError, FileNotFoundError) as exc:
                    tried.append(f"{key}'s source ({exc})")
        remote = [source] if source and is_remote(source) else []
        for candidate in remote + self._candidates(name, source):
            try:
                if isinstance(candidate, str):  # a download source: fetched and checked against the cell's weights
                    lm = zoo.load_checkpoint(candidate, arch=arch, dataset=dataset, sha256=weights)
                else:
                    lm = zoo.load_checkpoint(candidate, arch=None if _has_card(candidate) else arch, dataset=dataset)
            except (zoo.CheckpointError, ValueError, FileNotFoundError) as exc:
                tried.append(f"{candidate} ({exc})")
                continue
            if lm.weights_sha256 == weights:
                self._models[weights] = lm = dataclasses.replace(lm, name=name, source=source or lm.source)
                return lm
            tried.append(f"{candidate} (weights {lm.weights_sha256[:12]}...)")
        raise _Unavailable(f"the weights {weights[:12]}... of {name} were not found"
                           + (f"; tried {'; '.join(tried)}" if tried else "") + " (give their folder with --models)")

    def _candidates(self, name: str, source: str | None) -> list[Path]:
        out: list[Path] = []

        if source and not is_remote(source):
            out.append(Path(source) if zoo.is_path(source) else zoo.checkpoint_dir(source))
        out.append(zoo.checkpoint_dir(name))
        for folder in self.folders:
            out += [folder / name, folder] + sorted(folder.glob("*/" + zoo.checkpoint.WEIGHTS)) + sorted(folder.glob("*.safetensors"))
        return [p for p in dict.fromkeys(out) if p.exists()]


def _has_card(path: Path) -> bool:
    p = path / zoo.checkpoint.WEIGHTS if path.is_dir() else path
    return p.with_suffix(".json").is_file() or (p.parent / zoo.checkpoint.CARD).is_file()


def _methods(configs: Sequence[dict[str, Any]], registry: Any, key: str) -> list[Any]:
    out = []
    for c in configs:
        if c[key] not in registry:
            raise _Unavailable(f"{registry.kind} {c[key]!r} is not registered here (load its plugin with --plugin)")
        out.append(specs.from_config(registry, c, key))
    return out


def _rerun(ctx: _Context, cell: CellConfig, provenance: dict[str, Any]) -> tuple[EvalResult, CellConfig]:
    lm = ctx.model(cell.model.name, cell.model.weights_sha256, cell.model.arch, cell.dataset, provenance.get("model_source"))
    split = ctx.split(cell.dataset, cell.split)
    if len(split) < cell.n or split.first(cell.n).sha256() != cell.data_sha256:
        raise _Unavailable(f"the first {cell.n} points of {cell.dataset}/{cell.split} here are not the ones the cell used")
    attacks = _methods(cell.attacks, ATTACKS, "attack")
    defenses = _methods(cell.defenses, DEFENSES, "defense")
    calibration = None
    if cell.calibration is not None:
        calibration = ctx.split(cell.dataset, cell.calibration["split"])
    kw = dict(norm=cell.norm, n=cell.n, seed=cell.seed, batch_size=cell.batch_size or provenance.get("batch_size") or 500,
              defense=defenses, mode=cell.mode if cell.defenses else "adaptive", eot=cell.eot, votes=cell.votes,
              calibration=calibration, device=ctx.where(cell.device))
    now = cell_configs(lm, split, attacks, [cell.eps], **kw)[0]  # type: ignore[arg-type]
    return evaluate(lm, split, attacks, [cell.eps], checks=None, **kw)[0], now  # type: ignore[arg-type]


def _reescalate(ctx: _Context, config: dict[str, Any], provenance: dict[str, Any]) -> EvalResult:
    """An escalated cell: the cell it escalated, from the store, climbed again from its config."""

    raw = ctx.store.get(config["cell"])
    if raw is None:
        raise _Unavailable("the cell it escalates is not in the store")
    # The model, data and defenses: the raw cell's own config, or that of a cell it combines.
    keys = [config["cell"], *raw.combined_from]
    cell_config = next((c for k in keys if (c := ctx.store.config(k)) and c.get("kind") not in ("worst_case", "escalated")), None)
    if cell_config is None:
        raise _Unavailable("no cell config names the model and data it escalates")
    cell = CellConfig.from_dict(cell_config)
    lm = ctx.model(cell.model.name, cell.model.weights_sha256, cell.model.arch, cell.dataset, provenance.get("model_source"))
    split = ctx.split(cell.dataset, cell.split)
    if len(split) < cell.n or split.first(cell.n).sha256() != cell.data_sha256:
        raise _Unavailable(f"the first {cell.n} points of {cell.dataset}/{cell.split} here are not the ones the cell used")
    settings = dict(config["settings"])
    used = tuple(dict.fromkeys(a["surrogate"] for st in config["steps"] if st["step"] == "transfer" for a in st["attacks"]))
    settings["surrogates"] = tuple(settings["surrogates"]) if settings.get("surrogates") is not None else used
    calibration = ctx.split(cell.dataset, cell.calibration["split"]) if cell.calibration else None
    return escalate(raw, lm, split, defense=_methods(cell.defenses, DEFENSES, "defense"),
                    mode=cell.mode if cell.defenses else "adaptive", eot=cell.eot, votes=cell.votes,
                    batch_size=cell.batch_size or provenance.get("batch_size") or 500, checks=CheckConfig(**config["checks"]),
                    config=EscalationConfig(**settings), calibration=calibration, device=ctx.where(cell.device))


def _rerun_legacy(ctx: _Context, config: dict[str, Any], provenance: dict[str, Any]) -> EvalResult:
    """A schema-1 cell: its config named the model, weights, attacks, defenses and data, but no
    architecture or code; it is re-run with this code and the bits are compared."""
    if "combined_from" in config:
        raise _Unavailable("a legacy worst case: verify the cells it combined")
    name, weights = config["model"], config["weights_sha256"]
    try:
        arch = zoo.parse_name(name)[0]
    except ValueError:
        arch = None
    lm = ctx.model(name, weights, arch, config["dataset"], provenance.get("model_source"))
    split = ctx.split(config["dataset"], "test")
    n = config["n"]
    if split.first(n).sha256() != config["data_sha256"]:
        raise _Unavailable(f"the first {n} test points here are not the ones the cell used")
    attacks = _methods(config["attacks"], ATTACKS, "attack")
    defenses = _methods(config.get("defense", []), DEFENSES, "defense")
    votes = int(str(config.get("predict", "")).split()[2]) if str(config.get("predict", "")).startswith("majority") else 1
    calibration = ctx.split(config["dataset"], "train") if "calibration_sha256" in config else None
    return evaluate(lm, split, attacks, [config["eps"]], norm=config["norm"], n=n, seed=config["seed"], defense=defenses,
                    mode=config.get("mode", "adaptive"), eot=config.get("eot", 1), votes=votes, checks=None,
                    calibration=calibration, device=ctx.where("cpu"))[0]  # the first scheme ran on the CPU only


def table(outcomes: Sequence[Outcome]) -> str:
    """The Markdown table ``rbl verify`` prints."""
    lines = ["| key | kind | cell | eps | n | stored % | now % | status | note |", "|---|---|---|---:|---:|---:|---:|---|---|"]
    for o in outcomes:
        eps = "–" if o.eps is None else f"{o.eps:g}"
        lines.append(f"| `{o.key[:12]}` | {o.kind} | {o.label} | {eps} | {o.n if o.n is not None else '–'} | {pct(o.stored)} | "
                     f"{pct(o.recomputed)} | {o.status} | {o.note.replace('|', '/')} |")
    ok = sum(o.ok for o in outcomes)
    lines.append("")
    lines.append(f"{ok} of {len(outcomes)} rows identical" + (
        f"; {sum(o.status == MISMATCH for o in outcomes)} mismatched, {sum(o.status == UNAVAILABLE for o in outcomes)} "
        "could not be re-run" if ok < len(outcomes) else ""))
    return "\n".join(lines) + "\n"


__all__ = ["IDENTICAL", "MISMATCH", "UNAVAILABLE", "Outcome", "digest", "table", "verify"]
