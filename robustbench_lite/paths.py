"""Where the harness keeps checkpoints, artifacts, data downloads and the results store."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$RBL_CACHE_DIR``, else ``$XDG_CACHE_HOME/robustbench_lite``, else ``~/.cache/robustbench_lite``."""
    if os.environ.get("RBL_CACHE_DIR"):
        return Path(os.environ["RBL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robustbench_lite"


def default_store() -> Path:
    return Path(os.environ.get("RBL_STORE") or cache_dir() / "results.sqlite")
