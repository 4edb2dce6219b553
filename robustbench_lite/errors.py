"""The errors the engine raises when code it runs breaks a rule it holds that code to. They live
below everything that raises them (the engine, the defense views), so none imports another."""
from __future__ import annotations


class IntegrityError(RuntimeError):
    """Code the engine ran broke a rule the engine holds it to; its result is never stored."""


class AttackBudgetError(IntegrityError):
    """An attack returned a point outside its threat model."""


class TamperingError(IntegrityError):
    """An attack, defense or detector changed what the engine measures against: the images it
    was handed, the labels, the threat, or the model's parameters and buffers."""
