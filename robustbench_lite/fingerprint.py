"""Fingerprints of code and of models: what a cell's key holds so that a change to either re-runs it.

**Code.** The fingerprint of a class or function is that of the Python module defining it: the
sha256 of the module's source and, followed through every ``import`` statement in it (at any
depth, function-level imports too), of each module it imports whose source is ours to hash (this
project's packages, a plugin file, a user's own script). A module of another installed
distribution is not hashed but named with its version (``torch 2.x``); the standard library is
covered by the Python version. So:

- a method's fingerprint changes when its own file changes, or a project module it imports does
  (``attacks/pgd.py`` imports ``robustbench_lite.attacks.base``, whose ``gradient_steps`` PGD runs);
- it does not change when another method's file changes: a package's ``__init__`` is only
  followed when a module imports the package itself, not one of its submodules;
- imports made by name at run time (``importlib.import_module("x")``) are not seen.

Presentation libraries that never touch a number (:data:`QUIET`) are left out of the versions.

**Models.** An architecture fingerprint hashes what decides the forward pass apart from the
weights: the module tree (``repr``, with every module's hyperparameters), the state dict's names,
shapes and dtypes, each module class's code (by source, or its library's version), every
non-tensor attribute of every module (a temperature, a flag, a monkeypatched ``forward``) and
every hook, and the code of the function that built it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Libraries imported by the engine or a method that cannot change a number: progress bars,
#: templates, plots, the weights file format (the weights are hashed themselves). Their versions
#: stay out of a cell's key.
QUIET = frozenset({"tqdm", "jinja2", "matplotlib", "safetensors"})
#: This project's modules that compute keys and provenance, or fetch bytes that are then checked
#: against a sha256, never a number: they are not followed, so that rewording a docstring in them
#: does not re-run every stored cell. A change to what a key holds changes the keys by itself.
INERT = frozenset({"robustbench_lite.cell", "robustbench_lite.fetch", "robustbench_lite.fingerprint",
                   "robustbench_lite.provenance"})
_OWN = "robustbench_lite"


@dataclass(frozen=True)
class Code:
    """The fingerprint of a piece of code: ``sha256`` over the sources it runs, and the versions of
    the libraries it calls into."""

    sha256: str
    libraries: tuple[tuple[str, str], ...]


def sha256_text(text: str | bytes) -> str:
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, tuple[str, ...]]:
    return {k: tuple(dict.fromkeys(v)) for k, v in importlib.metadata.packages_distributions().items()}


@functools.lru_cache(maxsize=None)
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=None)
def _site_dirs() -> tuple[str, ...]:
    import site
    import sysconfig

    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(site.getsitepackages())
    return tuple(str(Path(d).resolve()) for d in dirs)


def _library(module: str) -> str | None:
    """The distribution a module belongs to, unless it is ours (hashed by source) or none (a user's
    script, a plugin file, a local package that shadows an installed name: hashed by source too)."""
    dists = _distributions().get(module.split(".")[0])
    if not dists or _OWN in dists:
        return None
    mod = sys.modules.get(module.split(".")[0])
    path = getattr(mod, "__file__", None)
    if path and not str(Path(path).resolve()).startswith(_site_dirs()):
        return None
    return dists[0]


def _stdlib(module: str) -> bool:
    top = module.split(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__future__"


def _source_file(module: str) -> Path | None:
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None) if mod is not None else None
    if path is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        path = spec.origin if spec is not None and spec.has_location else None
    return Path(path) if path and str(path).endswith(".py") else None


def _imports(module: str, path: Path, source: bytes) -> list[str]:
    """The modules a module's import statements name, resolved to absolute names."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            except (ImportError, ValueError):
                continue
            if not base:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # ``from pkg import sub`` names a submodule when one exists, else an attribute of pkg.
                out.append(sub if alias.name != "*" and (sub in sys.modules or _exists(sub)) else base)
    return list(dict.fromkeys(out))


def _exists(module: str) -> bool:
    if _stdlib(module) or _library(module):
        return False
    return _source_file(module) is not None


@functools.lru_cache(maxsize=None)
def module_code(module: str) -> Code:
    """The fingerprint of a module and of everything it imports (see the module docstring)."""
    sources: dict[str, str] = {}
    libraries: dict[str, str] = {}
    todo = [module]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if _stdlib(name) or (name in INERT and name != module):
            continue
        dist = _library(name)
        if dist is not None:
            if dist not in QUIET:
                libraries[dist] = _version(dist)
            continue
        path = _source_file(name)
        if path is None:
            mod = sys.modules.get(name)
            if mod is not None and name != "__main__":
                sources[name] = sha256_text(repr(sorted(vars(mod))))
            continue
        source = path.read_bytes()
        # By content: the same file under another module name (a plugin's generated name) is the same code.
        sources[name] = sha256_text(source)
        todo += _imports(name, path, source)
    return Code(sha256_text("\n".join(sorted(sources.values()))), tuple(sorted(libraries.items())))


def _code_object(code: types.CodeType) -> str:
    parts = [code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for const in code.co_consts:
        parts.append(_code_object(const) if isinstance(const, types.CodeType) else repr(const))
    return sha256_text("|".join(parts))


def _callable_sha(fn: Any) -> str:
    """A function's code, for functions that have no module file to hash (lambdas in a script)."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return sha256_text(_strip(repr(fn)))
    return _code_object(code)


def code_of(obj: Any) -> Code:
    """The fingerprint of a class or function: its module's (:func:`module_code`), or, for code
    without a source file (``python -c``, an interactive session), the bytecode of its methods."""
    module = getattr(obj, "__module__", None) or ""
    if module and module != "__main__" and (_library(module) or _stdlib(module)):
        dist = _library(module)
        return Code(sha256_text(f"{dist or 'python'}:{getattr(obj, '__qualname__', obj)}"),
                    ((dist, _version(dist)),) if dist and dist not in QUIET else ())
    if module and module != "__main__" and _source_file(module) is not None:
        return module_code(module)
    members = vars(obj).items() if inspect.isclass(obj) else [("", obj)]
    digest = sha256_text("|".join(f"{k}:{_callable_sha(v)}" for k, v in sorted(members, key=lambda kv: kv[0])
                                  if callable(v) or isinstance(v, (staticmethod, classmethod, property))))
    return Code(digest, ())


def clear() -> None:
    """Forget cached fingerprints (after a source file changed within this process)."""
    module_code.cache_clear()
    _distributions.cache_clear()
    _version.cache_clear()
    _site_dirs.cache_clear()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")


def _strip(text: str) -> str:
    return _ADDRESS.sub("", text)


@functools.lru_cache(maxsize=1)
def _torch_internals() -> frozenset[str]:
    return frozenset(vars(nn.Module()))


def _value(v: Any, depth: int = 0) -> Any:
    """A JSON-ready description of an attribute's value that changes when the value does."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        return {"tensor": str(t.dtype), "shape": list(t.shape), "sha256": sha256_text(t.numpy().tobytes())
                if t.dtype != torch.bfloat16 else sha256_text(t.float().numpy().tobytes())}
    if depth > 4:
        return _strip(repr(v))[:200]
    if isinstance(v, (list, tuple, set, frozenset)):
        items = [_value(i, depth + 1) for i in v]
        return sorted(items, key=json.dumps) if isinstance(v, (set, frozenset)) else items
    if isinstance(v, dict):
        return {str(k): _value(i, depth + 1) for k, i in v.items()}
    if isinstance(v, nn.Module):
        return {"module": type(v).__qualname__}
    if callable(v) and (inspect.isfunction(v) or inspect.ismethod(v) or inspect.isbuiltin(v)):
        return {"code": _callable_sha(v)}
    if hasattr(v, "__dict__") and not inspect.isclass(v):
        return {"object": type(v).__qualname__, "state": _value(vars(v), depth + 1)}
    return _strip(repr(v))


def model_fingerprint(model: nn.Module, builder: Any = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The architecture fingerprint of ``model`` (see the module docstring) and the libraries its
    code calls into; ``builder`` is the registered function that built it, when there is one."""
    internals = _torch_internals()
    classes: dict[str, str] = {}
    libraries: dict[str, str] = {}
    attrs = []
    for name, m in model.named_modules():
        cls = type(m)
        qual = f"{cls.__module__}.{cls.__qualname__}"
        if qual not in classes:
            for klass in cls.__mro__:
                if klass in (nn.Module, object):
                    break
                code = code_of(klass)
                classes[f"{klass.__module__}.{klass.__qualname__}"] = code.sha256
                libraries.update(code.libraries)
        own = {k: _value(v) for k, v in sorted(vars(m).items()) if k not in internals}
        hooks = {k: [_callable_sha(h) for h in v.values()] for k, v in sorted(vars(m).items())
                 if k in internals and "hook" in k and isinstance(v, dict) and v}
        if own or hooks:
            attrs.append({"module": name, "attributes": own, "hooks": hooks})
    state = [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]
    built = code_of(builder) if builder is not None else None
    if built is not None:
        libraries.update(built.libraries)
    payload = {"structure": _strip(repr(model)), "state": state, "classes": classes, "attributes": attrs,
               "builder": built.sha256 if built else None}
    return sha256_text(json.dumps(payload, sort_keys=True, default=str)), tuple(sorted(libraries.items()))
