"""The one evaluation engine behind the CLI, the API, the reports and the benchmarks.

It enforces the threat model (checks each attack's output against the budget, raises on
a violation, projects), judges every example with its own forward pass, and counts an
example as robust only if it is clean-correct and correct under *every* attack in the
list (the per-example worst case, as AutoAttack does).

One module per job, in the order an evaluation meets them:

- :mod:`.plan`: what will be computed, checked and keyed before any attack runs (one :class:`Plan`);
- :mod:`.deploy`: the model with its defenses as attacked and judged (:class:`~.deploy.Setup`);
- :mod:`.guard`: the engine's self-protection (budget, tampering, the attack runner);
- :mod:`.loop`: :func:`evaluate`;
- :mod:`.checking`: the gradient-masking checks as the engine runs them, and :func:`recheck`;
- :mod:`.ladder`: escalation, :func:`escalate`;
- :mod:`.results`: :class:`EvalResult`, its serialisation, :func:`combine`.

A cell's key holds the fingerprint of this whole package (:func:`engine_code`).
"""
from __future__ import annotations

from ..errors import AttackBudgetError, IntegrityError, TamperingError
from .checking import recheck
from .ladder import escalate, escalation_config
from .loop import evaluate
from .plan import ADAPTIVE_MODES, MODES, cell_configs, cell_keys, engine_code, method_identity
from .results import EvalResult, combine, state_sha256

__all__ = ["ADAPTIVE_MODES", "MODES", "AttackBudgetError", "EvalResult", "IntegrityError", "TamperingError",
           "cell_configs", "cell_keys", "combine", "engine_code", "escalate", "escalation_config", "evaluate",
           "method_identity", "recheck", "state_sha256"]
