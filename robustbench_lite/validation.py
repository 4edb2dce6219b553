"""Validators of user input: each names the method (as registered) and the field, and says what
is allowed. Shared by every registered method and by the engine."""
from __future__ import annotations

import math

import torch


def check_batch(x: torch.Tensor, y: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
    """Raise on inputs that no attack or model can meaningfully process."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},), got {getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    if x.numel() == 0:
        return
    # One pass: NaN propagates into aminmax and inf lands outside any finite box, so the
    # fast path is a single reduction; the slower diagnosis only runs on the error path.
    lo, hi = (v.item() for v in torch.aminmax(x))
    if not (bounds[0] <= lo and hi <= bounds[1]):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"x contains {bad} NaN or infinite values")
        raise ValueError(f"x must lie in the input bounds {bounds}, got range [{lo:.4g}, {hi:.4g}]")


def check_steps(name: str, steps: int, restarts: int = 1) -> None:
    check_int(name, "steps", steps, 1)
    check_int(name, "restarts", restarts, 1)


def check_int(name: str, field: str, value: int, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: {field} must be an integer {allowed}, got {value!r}")


def check_choice(name: str, field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {field} must be one of {', '.join(allowed)}, got {value!r}")


def check_interval(name: str, field: str, value: float, lo: float, hi: float, interval: str = "(]") -> None:
    """Raise unless ``value`` is a real number in the interval from ``lo`` to ``hi``; ``interval``
    gives its brackets: ``"(]"`` (default), ``"()"``, ``"[)"`` or ``"[]"``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (lo < value if interval[0] == "(" else lo <= value) and (value < hi if interval[1] == ")" else value <= hi)
    if not ok:
        raise ValueError(f"{name}: {field} must be a number in {interval[0]}{lo:g}, {hi:g}{interval[1]}, got {value!r}")


def check_positive(name: str, field: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name}: {field} must be a finite number > 0, got {value!r}")
