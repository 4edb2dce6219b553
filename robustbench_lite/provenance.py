"""Where a number was computed: library versions, the machine, the commit. Recorded beside results
(model cards, a cell's provenance, a report's ``manifest.json``), never part of a cell's key: the
key holds what decides the bits (``cell.CellConfig``); this says what produced them."""
from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__


def versions() -> dict[str, str]:
    """The versions of the libraries the harness is built on, for model cards and manifests."""
    import importlib.metadata as md

    out = {"robustbench_lite": __version__, "python": platform.python_version(), "torch": torch.__version__.split("+")[0]}
    for dist in ("numpy", "scipy", "timm", "torchvision", "foolbox", "pillow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The processor's model name (``lscpu``'s "Model name"), or what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """The machine a computation ran on: CPU model, cores, torch threads, the device (and its name)."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                            "platform": platform.platform(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def commit(repo: Path | None = None) -> dict[str, Any]:
    """The git commit of the checkout the package runs from, and whether its code had uncommitted
    changes (reports/, which holds generated output, does not count), or None where it is not a
    git checkout."""
    root = repo or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)reports"], capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
