"""One small registry class, instantiated once per kind of method.

Follows torchvision's ``register_model`` and timm's ``create_model``: methods register
themselves by name when their module is imported, and users create them by name.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import importlib.metadata
import inspect
import pkgutil
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from .params import Validated, document

@dataclass
class Entry:
    name: str
    obj: Any
    origin: str
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A name -> factory map that raises on duplicates and suggests close matches.

    Args:
        kind: what is registered ("attack", "defense", ...), used in error messages.
        modules: in-tree modules imported on first lookup, so that registration happens
            without a circular import between the core and the method packages; a method
            package is named with its modules (:func:`import_package`), so a new method is a new
            file in it and nothing else.
        entry_point_group: installed plugins register through this entry-point group.
    """

    def __init__(self, kind: str, modules: tuple[str, ...] = (), entry_point_group: str | None = None):
        self.kind = kind
        self._modules = modules
        self._group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        if not isinstance(name, str) or not name or name != name.lower() or " " in name:
            raise ValueError(f"{self.kind} name must be a non-empty lowercase string, got {name!r}")

        def deco(obj: Any) -> Any:
            origin = _origin(obj)
            if name in self._entries:
                raise ValueError(
                    f"duplicate {self.kind} name {name!r} registered by {origin}; "
                    f"it was first registered by {self._entries[name].origin}"
                )
            self._entries[name] = Entry(name, obj, origin, dict(meta))
            if isinstance(obj, type) and issubclass(obj, Validated):
                obj.registered_as = name  # the name its errors use
                document(obj)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._modules:
            import_package(mod)
        if self._group:
            for ep in importlib.metadata.entry_points(group=self._group):
                try:
                    ep.load()
                except Exception as exc:  # a broken plugin must name itself, not hide
                    raise ImportError(f"{self.kind} plugin entry point {ep.name!r} ({ep.value}) failed to import: {exc}") from exc

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            allowed = ", ".join(sorted(self._entries)) or "(none registered)"
            raise ValueError(f"unknown {self.kind} {name!r}{hint} Allowed: {allowed}")
        return self._entries[name]

    def create(self, name: str, **kw: Any) -> Any:
        return self.get(name).obj(**kw)

    def names(self, pattern: str = "*") -> list[str]:
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def name_of(self, obj: Any) -> str:
        """The registered name of a class or factory (the reverse of :meth:`get`)."""
        self._load()
        for entry in self._entries.values():
            if entry.obj is obj:
                return entry.name
        raise ValueError(f"{obj!r} is not a registered {self.kind}")

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


def _origin(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return getattr(obj, "__module__", repr(obj))


def import_package(name: str) -> list[types.ModuleType]:
    """Import a module, and when it is a package, each of its modules whose name does not start
    with ``_`` and is not ``base`` (what every method in it builds on), in name order."""
    pkg = importlib.import_module(name)
    if not hasattr(pkg, "__path__"):
        return [pkg]
    return [importlib.import_module(f"{name}.{info.name}") for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name)
            if not info.name.startswith("_") and info.name != "base"]


def exports(package: str) -> Callable[[str], Any]:
    """A package's ``__getattr__`` that finds a class or function defined in one of its method
    modules (``from robustbench_lite.attacks import PGD``), importing them on first use."""

    def __getattr__(name: str) -> Any:
        # A submodule's name falls through to the import system (``from . import _generator``
        # asks the package for the attribute before it imports the submodule).
        if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is not None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        base = [importlib.import_module(f"{package}.base")] if importlib.util.find_spec(f"{package}.base") else []
        for mod in base + import_package(package):
            obj = vars(mod).get(name)
            if obj is not None and getattr(obj, "__module__", None) == mod.__name__:
                return obj
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


MODELS = Registry("model architecture", modules=("robustbench_lite.zoo",), entry_point_group="robustbench_lite.models")
ATTACKS = Registry("attack", modules=("robustbench_lite.attacks",), entry_point_group="robustbench_lite.attacks")
DEFENSES = Registry("defense", modules=("robustbench_lite.defenses",), entry_point_group="robustbench_lite.defenses")
RECIPES = Registry("training recipe", modules=("robustbench_lite.recipes",))
GENERATIVE = Registry("generative model", modules=("robustbench_lite.generative",), entry_point_group="robustbench_lite.generative")
EXPERIMENTS = Registry("experiment", modules=("robustbench_lite.experiments",), entry_point_group="robustbench_lite.experiments")
