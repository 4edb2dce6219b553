"""Method specs on the command line: ``name[:key=value,...]``, e.g. ``pgd:steps=20,restarts=2``
or ``fb:LinfPGD:steps=40``."""
from __future__ import annotations

import ast
import json
from typing import Any, Sequence

from .attacks.base import Attack
from .registry import ATTACKS
from .registry import DEFENSES


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``name[:key=value,...]`` into the name and keyword arguments."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty method spec {spec!r}; expected name[:key=value,...]")
    name, _, args = spec.strip().partition(":")
    if name == "fb":  # foolbox names carry their own colon: fb:LinfPGD:steps=10
        fb_name, _, args = args.partition(":")
        name = f"fb:{fb_name}"
    kw: dict[str, Any] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, val = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"bad argument {item!r} in spec {spec!r}; expected key=value")
        kw[key.strip()] = _value(val)
    return name, kw


def render(config: dict[str, Any], key: str) -> str:
    """The inverse of :func:`parse`: ``name:key=value,...`` from a method's config (the name
    under ``key``), as a user would type it. A ``*_sha256`` entry identifies a model the method
    loads in the store key but is not an argument, so it is left out; a string the parser
    would read as something else (``none``, ``True``, ``3``) is quoted."""
    def arg(v: Any) -> str:
        return json.dumps(v) if isinstance(v, str) and _value(v) != v else str(v)

    cfg = {k: v for k, v in config.items() if not k.endswith("_sha256")}
    name = cfg.pop(key)
    cfg = {_arguments(key, name).get(k, k): v for k, v in cfg.items()}
    if name == "fb":
        opts = ",".join(f"{k}={arg(v)}" for k, v in cfg.get("options", ()))
        return f"fb:{cfg['attack']}" + (f":{opts}" if opts else "")
    return name + (":" + ",".join(f"{k}={arg(v)}" for k, v in cfg.items()) if cfg else "")


def _arguments(key: str, name: str) -> dict[str, str]:
    """A method's config keys that name another constructor argument (``config_arguments``)."""

    registry = ATTACKS if key == "attack" else DEFENSES
    try:
        return dict(getattr(registry.get(name).obj, "config_arguments", {}))
    except (KeyError, ValueError):
        return {}


def from_config(registry: Any, config: dict[str, Any], key: str) -> Any:
    """A method back from its stored config (the name under ``key``, the hyperparameters beside
    it; the ``*_sha256`` entries identify what it loads and are not arguments). JSON lists come
    back as the tuples a frozen dataclass holds."""
    def tuples(v: Any) -> Any:
        return tuple(tuples(i) for i in v) if isinstance(v, list) else v

    name = config[key]
    renamed = _arguments(key, name)
    kw = {renamed.get(k, k): tuples(v) for k, v in config.items() if k != key and not k.endswith("_sha256")}
    entry = registry.get(name)
    try:
        return entry.obj(**kw)
    except TypeError as exc:
        raise ValueError(f"the stored {registry.kind} {name!r} does not take {sorted(kw)} in this version: {exc}") from exc


def create(registry: Any, spec: str) -> Any:
    """Instantiate a spec from a registry, turning bad keywords into a ValueError naming the allowed ones."""
    name, kw = parse(spec)
    if name.startswith("fb:"):
        return registry.create("fb", attack=name[3:], options=tuple(sorted(kw.items())))
    entry = registry.get(name)
    import dataclasses

    if dataclasses.is_dataclass(entry.obj):
        # A field whose default is a word takes "none" literally (pgd:target=none), not as None.
        words = {f.name for f in dataclasses.fields(entry.obj) if isinstance(f.default, str)}
        kw = {k: "none" if v is None and k in words else v for k, v in kw.items()}
    try:
        return entry.obj(**kw)
    except TypeError as exc:
        allowed = [f.name for f in dataclasses.fields(entry.obj)] if dataclasses.is_dataclass(entry.obj) else []
        raise ValueError(f"bad arguments {kw} for {registry.kind} {name!r} ({exc}); allowed: {', '.join(allowed) or 'none'}") from exc


# Named attack lists, expanded wherever attack specs are read, run as the engine's cascade: each
# attack only sees the points every earlier one failed on. ``aa_standard`` is AutoAttack's standard
# version exactly (Croce and Hein 2020, arXiv:2003.01690: APGD-CE, APGD-T with 9 targets, FAB-T with 9
# targets, Square with 5000 queries on the unrescaled schedule), for comparability with RobustBench;
# ``strong`` is our own cascade (tests/test_autoattack_reference.py, benchmarks/).
PRESETS: dict[str, tuple[str, ...]] = {
    # The cheapest cascade found no weaker than the reference AutoAttack point by point, in time a
    # fraction of it (benchmarks/test_bench_autoattack.py measures both; README, "Attacks").
    "strong": ("apgd_ce", "apgd_dlr:targets=3", "square:queries=3000"),
    "aa_standard": ("apgd_ce", "apgd_dlr:targets=9", "fab:targets=9", "square:rescale=False"),
}


def expand(attacks: Sequence[str | Attack]) -> list[str | Attack]:
    """Attack specs with every preset name replaced by its attacks, in order."""
    out: list[str | Attack] = []
    for a in attacks:
        out.extend(PRESETS[a] if isinstance(a, str) and a.strip() in PRESETS else [a])
    return out


def attack(spec: str | Attack) -> Attack:
    return spec if isinstance(spec, Attack) else create(ATTACKS, spec)
