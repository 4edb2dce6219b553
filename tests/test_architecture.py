"""The import contract (README, "Architecture"): imports flow one way, from the applications down
to the core, and nothing imports upwards or in a circle.

Layers, top to bottom: the applications (``cli``, ``profiles``, ``gate``, ``pytest_plugin``),
``reporting``, ``experiments``, the methods (``attacks``, ``defenses``, ``generative``), the core
(everything else, including each method package's ``base`` module, which is what its methods
build on). A module may import its own layer and the layers below it. Function-level imports
(outside ``if TYPE_CHECKING:``) are counted like any other, and each needs a ``# lazy: reason``
comment on its line or on a comment line directly above its block, or, where every function of
a module defers its imports for one reason (the CLI), one ``# lazy (every function): reason``
comment at module level: an import is deferred for start-up time, never to hide a cycle.

The checker reads source with ``ast`` and imports nothing, so it also runs on the synthetic
packages the tests below build to show that it fails.
"""
from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "robustbench_lite"
APPS = ("cli", "profiles", "gate", "pytest_plugin")
METHODS = ("attacks", "defenses", "generative")
LAYERS = ("core", "methods", "experiments", "reporting", "apps")  # bottom to top


def layer(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "core"
    head = parts[0]
    if head in APPS:
        return "apps"
    if head == "reporting":
        return "reporting"
    if head in METHODS + ("experiments",):
        if len(parts) == 1 or parts[1] == "base":  # the namespace and the protocols: core
            return "core"
        return "experiments" if head == "experiments" else "methods"
    return "core"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported project module
    line: int
    lazy: bool  # inside a function
    reason: bool  # carries a ``# lazy:`` comment


def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _has_reason(lines: list[str], lineno: int) -> bool:
    if "# lazy:" in lines[lineno - 1]:
        return True
    i = lineno - 2  # up through the block of imports and comments directly above
    while i >= 0 and lines[i].strip().startswith(("#", "from ", "import ")):
        if lines[i].strip().startswith("# lazy:"):
            return True
        i -= 1
    return False


def imports(root: Path, package: str = PACKAGE) -> list[Import]:
    known = modules(root, package)
    out: list[Import] = []
    for name, path in known.items():
        source = path.read_text()
        lines = source.splitlines()
        whole = any(line.startswith("# lazy (every function):") for line in lines)
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if _type_checking(child):
                    continue
                fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base_parts = here.split(".")[: len(here.split(".")) - child.level + 1]
                        base = ".".join(base_parts + ([child.module] if child.module else []))
                    else:
                        base = child.module or ""
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        targets.append(sub if sub in known else base)
                for t in targets:
                    while t and t not in known and "." in t:  # ``import a.b.c`` of a non-module attribute
                        t = t.rpartition(".")[0]
                    if t in known and t != name:
                        out.append(Import(name, t, child.lineno, in_function, whole or _has_reason(lines, child.lineno)))
                visit(child, fn)

        visit(ast.parse(source), False)
    return out


def layering_violations(found: list[Import]) -> list[str]:
    rank = {k: i for i, k in enumerate(LAYERS)}
    return sorted({f"{i.module}:{i.line} ({layer(i.module)}) imports {i.target} ({layer(i.target)})"
                   for i in found if rank[layer(i.target)] > rank[layer(i.module)]})


def cycles(found: list[Import]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.module, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = itertools.count()

    def connect(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def unexplained_lazy(found: list[Import]) -> list[str]:
    return sorted({f"{i.module}:{i.line} imports {i.target} inside a function without a '# lazy:' reason"
                   for i in found if i.lazy and not i.reason})


def test_the_tree_keeps_the_contract():
    found = imports(ROOT)
    assert len({i.module for i in found}) > 50  # the checker sees the whole package
    assert layering_violations(found) == []
    assert cycles(found) == []


def test_every_function_level_import_has_a_reason():
    assert unexplained_lazy(imports(ROOT)) == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [p for p in (tmp_path / PACKAGE).rglob("*") if p.is_dir()] + [tmp_path / PACKAGE]:
        (d / "__init__.py").touch()
    return tmp_path


def test_an_inverted_import_fails(tmp_path):
    root = _package(tmp_path, {
        "engine.py": "from .attacks import pgd\n",  # the core importing a method
        "attacks/base.py": "from ..threat import Threat\n",
        "attacks/pgd.py": "from .base import Attack\nfrom ..experiments import universal\n",  # a method importing an experiment
        "experiments/universal.py": "from ..attacks import pgd\n",
        "threat.py": "",
    })
    assert layering_violations(imports(root)) == [
        "robustbench_lite.attacks.pgd:2 (methods) imports robustbench_lite.experiments.universal (experiments)",
        "robustbench_lite.engine:1 (core) imports robustbench_lite.attacks.pgd (methods)",
    ]
    assert cycles(imports(root)) == [["robustbench_lite.attacks.pgd", "robustbench_lite.experiments.universal"]]


def test_a_function_level_import_needs_a_reason(tmp_path):
    root = _package(tmp_path, {
        "a.py": "def f():\n    from . import b\n",
        "b.py": "def g():\n    # lazy: matplotlib takes a second to import\n    from . import c\n    from . import a\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
        "d.py": "# lazy (every function): a command imports what it runs\ndef h():\n    from . import c\n",
    })
    found = imports(root)
    assert unexplained_lazy(found) == ["robustbench_lite.a:2 imports robustbench_lite.b inside a function without a '# lazy:' reason"]
    assert cycles(found) == [["robustbench_lite.a", "robustbench_lite.b"]]  # a lazy cycle is still a cycle
    assert not any(i.module == "robustbench_lite.c" for i in found)  # type-only imports are not edges


@pytest.mark.parametrize("module, expected", [
    ("robustbench_lite.engine", "core"), ("robustbench_lite.attacks.base", "core"), ("robustbench_lite.attacks", "core"),
    ("robustbench_lite.attacks.pgd", "methods"), ("robustbench_lite.generative.vae", "methods"),
    ("robustbench_lite.experiments.base", "core"), ("robustbench_lite.experiments.universal", "experiments"),
    ("robustbench_lite.reporting.site", "reporting"), ("robustbench_lite.cli", "apps"), ("robustbench_lite.zoo.archs", "core"),
])
def test_layers(module, expected):
    assert layer(module) == expected
