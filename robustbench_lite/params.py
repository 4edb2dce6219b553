"""Hyperparameters declared once.

A registered method (attack, defense, detector, recipe, experiment) is a frozen dataclass whose
fields are declared with the helpers below: each carries its default, what values it allows and a
one-line doc. From that single declaration

- :class:`Validated` (the methods' common base) checks every field in ``__post_init__``, with an
  error naming the registered method and the field (``pgd: steps must be an integer >= 1, got 0``),
  then calls the method's own :meth:`Validated.validate` for rules that tie fields together;
- :func:`document` writes the ``Args:`` section of the class docstring (the registry calls it when
  the class registers), so ``help()`` and the API docs list every field with its bounds;
- :func:`describe` gives the fields as data for ``rbl list --json``.

Example::

    @ATTACKS.register("pgd")
    @dataclass(frozen=True, kw_only=True)
    class PGD(Attack):
        steps: int = integer(50, "iterations per restart", lo=1)
        target: str = choice("none", "target class", TARGETS)
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .validation import check_choice, check_int, check_interval, check_positive

_KEY = "rbl_param"


@dataclass(frozen=True)
class Param:
    """What one field allows: ``check(method, field, value)`` raises on a value outside it, and
    ``allowed`` says in words what is inside (empty where any value is)."""

    doc: str
    allowed: str = ""
    kind: str = "any"
    check: Callable[[str, str, Any], None] | None = None


def _field(default: Any, param: Param, factory: Callable[[], Any] | None = None) -> Any:
    meta = {_KEY: param}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def integer(default: int | None, doc: str, *, lo: int, hi: int | None = None, optional: bool = False) -> Any:
    """An integer in [lo, hi] (``hi`` None: no upper bound); ``optional``: None is allowed too."""

    def check(method: str, name: str, value: Any) -> None:
        if not (optional and value is None):
            check_int(method, name, value, lo, hi)

    allowed = f"integer in [{lo}, {hi}]" if hi is not None else f"integer >= {lo}"
    return _field(default, Param(doc, allowed + (" or None" if optional else ""), "int", check))


def real(default: float | None, doc: str, *, lo: float, hi: float, interval: str = "(]",
         optional: bool = False) -> Any:
    """A finite number in the interval from ``lo`` to ``hi``, with the brackets ``interval``
    gives (see :func:`~robustbench_lite.validation.check_interval`); ``optional``: or None."""

    def check(method: str, name: str, value: Any) -> None:
        if not (optional and value is None):
            check_interval(method, name, value, lo, hi, interval)

    allowed = f"number in {interval[0]}{lo:g}, {hi:g}{interval[1]}" + (" or None" if optional else "")
    return _field(default, Param(doc, allowed, "float", check))


def positive(default: float | None, doc: str) -> Any:
    """A finite number > 0, or None (which the doc says how the method resolves)."""
    return _field(default, Param(doc, "number > 0 or None", "float",
                                 lambda method, name, value: check_positive(method, name, value)))


def choice(default: str, doc: str, options: tuple[str, ...]) -> Any:
    """One of ``options``."""
    return _field(default, Param(doc, "one of " + ", ".join(options), "str",
                                 lambda method, name, value: check_choice(method, name, value, options)))


def flag(default: bool, doc: str) -> Any:
    """True or False."""

    def check(method: str, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{method}: {name} must be true or false, got {value!r}")

    return _field(default, Param(doc, "true or false", "bool", check))


def value(default: Any, doc: str, *, factory: Callable[[], Any] | None = None,
          check: Callable[[str, str, Any], None] | None = None, allowed: str = "") -> Any:
    """Any other field (a name, a tuple, a spec); ``check`` and ``allowed`` where it has rules."""
    return _field(default, Param(doc, allowed, "any", check), factory)


def params(cls: type) -> list[tuple[dataclasses.Field, Param]]:
    """The declared hyperparameters of a method class, in field order (none for a class that is not
    a dataclass, such as a generative model, whose hyperparameters are its constructor's)."""
    if not dataclasses.is_dataclass(cls):
        return []
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def _default(f: dataclasses.Field) -> Any:
    """The field's default; :data:`REQUIRED` where it has none (``value(dataclasses.MISSING, ...)``)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return REQUIRED


class _Required:
    def __repr__(self) -> str:
        return "required"


#: The default of a field that must be given.
REQUIRED = _Required()


def describe(cls: type) -> list[dict[str, Any]]:
    """The hyperparameters as data (``rbl list --json``): name, kind, default, allowed, doc."""
    out = []
    for f, p in params(cls):
        d = _default(f)
        out.append({"name": f.name, "kind": p.kind, "allowed": p.allowed, "doc": p.doc}
                   | ({"required": True} if d is REQUIRED else {"default": list(d) if isinstance(d, tuple) else d}))
    return out


_SECTION = re.compile(r"^[ \t]*(Returns|Raises|Example|Examples|Note|Notes|References):\s*$", re.M)


def document(cls: type) -> type:
    """Write the ``Args:`` section of ``cls.__doc__`` from its declared fields, before the first of
    Returns/Raises/Example/Notes (else at the end). A docstring that already has one is left alone
    only where the class declares no fields with these helpers (the architecture test holds every
    registered method to the generated form)."""
    fields = params(cls) if dataclasses.is_dataclass(cls) else []
    doc = cls.__dict__.get("__doc__")
    if not fields or not doc:
        return cls
    lines = ["Args:"]
    for f, p in fields:
        d = _default(f)
        rule = ", ".join(x for x in (p.allowed, "required" if d is REQUIRED else f"default {d!r}") if x)
        lines.append(f"    {f.name}: {p.doc} ({rule}).")
    indent = "    "
    block = "\n".join(indent + line for line in lines) + "\n\n"
    m = _SECTION.search(doc)
    cls.__doc__ = (doc[:m.start()] + block + doc[m.start():]) if m else doc.rstrip() + "\n\n" + block.rstrip() + "\n"
    return cls


class Validated:
    """The base of every registered method dataclass: ``__post_init__`` checks each declared field
    (naming the registered method), then runs :meth:`validate`."""

    #: the name errors use when the class is not registered (a subclass in a test, say)
    registered_as: ClassVar[str] = ""

    def __post_init__(self) -> None:
        method = type(self).__dict__.get("registered_as") or type(self).__name__.lower()
        for f, p in params(type(self)):
            if p.check is not None:
                p.check(method, f.name, getattr(self, f.name))
        self.validate(method)

    def validate(self, method: str) -> None:
        """Rules that tie fields together; ``method`` is the registered name, for the message."""
