"""pytest plugin (entry point ``pytest11``): keep a model's robustness from regressing in a
project's own test suite.

    def test_model_is_robust(robustness):
        robustness.check("ci-suite.toml")          # or a dict with the same keys

The check fails the test with the accuracy-under-attack table when a threshold or a
gradient-masking check fails, and every table checked in the session is printed in pytest's
terminal summary. Results go through the results store ($RBL_STORE or ``store=``), so an
unchanged model is not attacked twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_TABLES = pytest.StashKey[list]()


class Robustness:
    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    def check(self, suite: str | Path | dict[str, Any], *, store: str | Path | None = None,
              junit: str | Path | None = None) -> list[Any]:
        # lazy: pytest loads this plugin in every session; the store is imported only when a gate is asked for
        from . import gate
        from .paths import default_store
        from .store import Store

        s = gate.parse(suite, "suite") if isinstance(suite, dict) else gate.load(suite)
        with Store(Path(store) if store else default_store()) as st:
            rows = gate.run(s, st)
        md = gate.publish(s, rows, Path(junit) if junit else None)
        self._config.stash.setdefault(_TABLES, []).append(md)
        failed = [r for r in rows if not r.passed]
        if failed:
            pytest.fail(f"robustness below threshold in {len(failed)} of {len(rows)} rows:\n\n{md}", pytrace=False)
        return rows


@pytest.fixture
def robustness(request: pytest.FixtureRequest) -> Robustness:
    """Evaluate models under a robustbench_lite suite and fail below its thresholds."""
    return Robustness(request.config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tables = config.stash.get(_TABLES, [])
    if tables:
        terminalreporter.section("robustbench_lite: accuracy under attack")
        for md in tables:
            terminalreporter.write(md + "\n")
