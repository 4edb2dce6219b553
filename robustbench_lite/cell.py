"""A cell's identity: everything that decides its per-example bits, as one frozen record and its key.

The key of a stored cell is the sha256 of :class:`CellConfig`'s canonical JSON (sorted keys, no
whitespace, no NaN). The engine builds the record in one place (``engine.plan.make_plan``) and the store,
the executors, ``rbl verify`` and the reports all read it; a stored row whose config does not
hash to its key is refused (``store.StoreIntegrityError``).

What is in it, and why each field can change a result:

- ``model``: the name, the weights' sha256 and the architecture's fingerprint (module tree,
  attributes, hooks and code: :func:`fingerprint.model_fingerprint`), so the same weights under
  another architecture or another forward pass are another cell;
- the data: dataset, split, subset size and the subset's sha256;
- the threat: norm, eps and the input box;
- ``attacks`` and ``defenses``: each method's registered name, every resolved hyperparameter, the
  models it loads (by weights hash) and the fingerprint of its code;
- how a defense is attacked and judged: ``mode``, ``eot``, ``votes``, and a detector's
  calibration set;
- ``seed``; ``batch_size``, only where the result can depend on it (``None`` means the engine
  proved it cannot: see ``engine.plan.is_batch_invariant``);
- ``device`` and ``dtype``; the engine's own code fingerprint; and ``versions``, the versions of
  the libraries that the engine, the methods and the model's code call into.

The gradient-masking verdicts are keyed apart (:func:`checks_config`): they depend on the check
settings and on the cells whose accuracies they read, not the other way round. A cell escalated
because a check failed is keyed by the cell it escalates, the failed checks, the check and ladder
settings, the ladder as data and the code that climbs it (``engine.escalation_config``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import fingerprint
from . import zoo

if TYPE_CHECKING:
    from .zoo import LoadedModel

SCHEMA = 2  # 1: the keys before this module (model name and weights only, the package version)


def canonical(obj: Any) -> str:
    """The one JSON text a config hashes as: sorted keys, no whitespace, tuples as lists, a
    non-finite float as the string ``inf``/``-inf`` (never NaN)."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            raise ValueError("a cell's config cannot hold NaN")
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"a cell's config holds numbers, strings, lists and dicts only, got {type(obj).__name__}: {obj!r}")


def digest(obj: Any) -> str:
    """sha256 of :func:`canonical` (a ``str`` is taken as canonical text already)."""
    text = obj if isinstance(obj, str) else canonical(obj)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ModelId:
    """What identifies a model: (name, weights sha256) everywhere, and what its forward pass is."""

    name: str
    weights_sha256: str
    arch: str
    arch_sha256: str

    @property
    def short(self) -> str:
        """``name@abcd1234``: the name with its weights, where two weight sets share a name."""
        return f"{self.name}@{self.weights_sha256[:8]}"


def model_id(lm: "LoadedModel") -> tuple[ModelId, tuple[tuple[str, str], ...]]:
    """A loaded model's identity (name, weights, architecture fingerprint) and the libraries its code uses."""

    model = lm.model
    arch = lm.card.arch if lm.card else (lm.arch or f"{type(model).__module__}.{type(model).__qualname__}")
    arch_sha, libraries = fingerprint.model_fingerprint(model, zoo.builder(arch))
    return ModelId(lm.name, lm.weights_sha256, arch, arch_sha), libraries


@dataclass(frozen=True)
class CellConfig:
    """Every input that can change a cell's per-example bits (see the module docstring)."""

    model: ModelId
    dataset: str
    split: str
    n: int
    data_sha256: str
    norm: str
    eps: float
    bounds: tuple[float, float]
    attacks: tuple[dict[str, Any], ...]
    defenses: tuple[dict[str, Any], ...]
    mode: str  # none (no defense), adaptive, bpda or oblivious
    eot: int
    votes: int
    calibration: dict[str, Any] | None
    seed: int
    batch_size: int | None
    device: str
    dtype: str
    engine_sha256: str
    versions: dict[str, str]
    schema: int = SCHEMA

    def canonical(self) -> str:
        return canonical(self)

    @property
    def key(self) -> str:
        return digest(self.canonical())

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.canonical())

    @property
    def random_key(self) -> str:
        """What the cell's random draws are seeded from: its key without the code and library
        fingerprints, so that re-running a stored cell under changed code (``rbl verify``) draws
        the same numbers and a difference in its bits is the code's, not the seed's."""
        d = self.to_dict()
        for name in ("engine_sha256", "versions", "schema"):
            d.pop(name)
        d["model"] = without_code(d["model"])
        d["attacks"] = [without_code(m) for m in d["attacks"]]
        d["defenses"] = [without_code(m) for m in d["defenses"]]
        return digest(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellConfig":
        """The record back from its JSON; raises ``ValueError`` naming what does not fit."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"not a cell config of schema {SCHEMA}: schema {d.get('schema') if isinstance(d, dict) else d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) != names:
            raise ValueError(f"cell config fields differ: missing {sorted(names - set(d))}, unknown {sorted(set(d) - names)}")
        eps = d["eps"]
        return cls(**(d | {"model": ModelId(**d["model"]), "bounds": tuple(d["bounds"]), "attacks": tuple(d["attacks"]),
                           "defenses": tuple(d["defenses"]), "eps": math.inf if eps == "inf" else eps}))

    @property
    def defended(self) -> bool:
        return bool(self.defenses)


def is_code_fingerprint(field: str) -> bool:
    """Whether a field of a method's or model's identity fingerprints code (``code_sha256``,
    ``arch_sha256``, ``surrogate_arch_sha256``, ...) rather than naming a setting or weights."""
    return field in ("code_sha256", "arch_sha256") or field.endswith(("_code_sha256", "_arch_sha256"))


def without_code(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity without its code fingerprints: what random draws are seeded from, so that a
    re-run under changed code draws the same numbers and a difference is the code's."""
    return {k: v for k, v in identity.items() if not is_code_fingerprint(k)}


def worst_case_config(keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The config of a per-example worst case over stored cells: their keys, nothing else."""
    return {"schema": SCHEMA, "kind": "worst_case", "combined_from": sorted(keys)}


def checks_random_key(config: dict[str, Any]) -> str:
    """What a set of verdicts' random draws are seeded from: its cell's ``random_key`` (no code
    fingerprints) and the check settings, so ``rbl verify`` re-runs the checks with the same draws."""
    return digest({"cell": CellConfig.from_dict(config["cell"]).random_key, "settings": config["settings"]})


def checks_config(cell: CellConfig, check_eps: float, settings: dict[str, Any], cells: list[str],
                  checks_sha256: str, attacks: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The config of one set of gradient-masking verdicts: the model, defense and data of the
    cells (their attacks and eps left out: the checks run their own attacks at ``check_eps``), the
    check settings, the keys of the cells whose accuracies the monotonicity check reads, the
    checks' code, and the attacks the binarization test runs (their configs and code)."""
    base = cell.to_dict() | {"attacks": [], "eps": check_eps}
    return {"schema": SCHEMA, "kind": "checks", "cell": base, "settings": settings, "cells": sorted(cells),
            "checks_sha256": checks_sha256, "attacks": list(attacks)}
