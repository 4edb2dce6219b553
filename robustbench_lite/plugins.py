"""One-file plugins: a Python file that registers a defense, an attack or a model architecture
with the registries' decorators, loaded with ``rbl ... --plugin FILE``. An installed package
registers through the entry-point groups ``robustbench_lite.defenses``,
``robustbench_lite.attacks``, ``robustbench_lite.models`` (and ``.experiments``,
``.generative``) instead.

Every failure names the file and the problem: a file that is missing or fails to import, a
name that is already registered, a file that registers nothing, or an object that does not
follow its registry's protocol (a defense that is not a Defense, Detector or Composite
subclass, an attack that is not an Attack, ...).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any

from .registry import ATTACKS, DEFENSES, EXPERIMENTS, GENERATIVE, MODELS, Registry


class PluginError(ValueError):
    """A plugin file that cannot be used, with the file and the problem in the message."""


def _registries() -> list[Registry]:
    return [ATTACKS, DEFENSES, MODELS, EXPERIMENTS, GENERATIVE]


def _protocol(registry: Registry, obj: Any) -> str | None:
    """Why ``obj`` cannot live in ``registry``, or None when it can."""
    # lazy: loaded by the CLI at start-up; the method bases import torch
    from .attacks.base import Attack
    from .defenses.base import Composite, Defense
    from .defenses.base import Detector
    from .experiments.base import Experiment
    from .generative import GenerativeModel

    bases: dict[str, tuple[type, ...]] = {"attack": (Attack,), "defense": (Defense, Detector, Composite),
                                          "experiment": (Experiment,), "generative model": (GenerativeModel,)}
    if registry.kind in bases:
        want = bases[registry.kind]
        if not (inspect.isclass(obj) and issubclass(obj, want)):
            return f"is not a subclass of {' or '.join(b.__name__ for b in want)}"
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(obj.__abstractmethods__))
            return f"does not implement {missing}"
        if registry.kind != "generative model" and not dataclasses.is_dataclass(obj):
            return "is not a dataclass: hyperparameters must be frozen dataclass fields (see examples/my_defense.py)"
        return None
    return None if callable(obj) else "is not callable (an architecture is a function (info, pretrained=None) -> nn.Module)"


_LOADED: dict[str, list[str]] = {}


def load(path: str | Path) -> list[str]:
    """Import a plugin file once and return what it registered, as ``kind:name`` strings."""
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"plugin {path}: no such file")
    if path.suffix != ".py":
        raise PluginError(f"plugin {path}: expected a Python file (.py), got {path.suffix or 'no suffix'!r}")
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    for reg in _registries():
        reg._load()  # in-tree names first, so a clash is reported against them
    before = {reg.kind: set(reg.names()) for reg in _registries()}
    module_name = "rbl_plugin_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        _forget(before)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise PluginError(f"plugin {path} failed to import: {type(exc).__name__}: {exc} "
                          f"(line {where.lineno} of {Path(where.filename).name})") from exc
    added = []
    for reg in _registries():
        for name in sorted(set(reg.names()) - before[reg.kind]):
            problem = _protocol(reg, reg.get(name).obj)
            if problem is not None:
                _forget(before)
                raise PluginError(f"plugin {path}: {reg.kind} {name!r} {problem}")
            added.append(f"{reg.kind}:{name}")
    if not added:
        raise PluginError(f"plugin {path} registers nothing: decorate a class with @DEFENSES.register(\"name\"), "
                          "@ATTACKS.register(\"name\") or @MODELS.register(\"name\") (see examples/my_defense.py)")
    _LOADED[key] = added
    return added


def _forget(before: dict[str, set[str]]) -> None:
    """Undo a failed plugin's registrations, so a fixed file can be loaded again."""
    for reg in _registries():
        for name in set(reg.names()) - before[reg.kind]:
            reg.unregister(name)


def load_all(paths: list[str] | tuple[str, ...] | None) -> list[str]:
    return [item for p in (paths or ()) for item in load(p)]
