"""How numbers and model names are written in tables and reports."""
from __future__ import annotations

import math
from typing import Any, Iterable

MISSING = "–"


def pct(v: Any, missing: str = MISSING) -> str:
    """A rate in [0, 1] as a percentage with one decimal; ``missing`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    return f"{100 * v:.1f}"


def labels(models: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The name shown for each (name, weights sha256): the name, or ``name@<8 hex digits>`` where
    several weight sets share it."""
    pairs = set(models)
    count: dict[str, int] = {}
    for name, _ in pairs:
        count[name] = count.get(name, 0) + 1
    return {(n, w): n if count[n] == 1 else f"{n}@{w[:8]}" for n, w in pairs}
