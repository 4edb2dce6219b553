"""The CPU's numeric code paths: pinned where a library lets a process choose, recorded in every
cell's key where it does not.

The same float32 computation can give other low-order bits on another x86 CPU, and a result that
sits near a decision (a readout's threshold, an attack's last step) then flips. Two sources:

- **MKL** (matrix products: linear layers, ``cdist``) picks its kernels by the CPU's vendor and
  model. Its conditional numerical reproducibility mode (``MKL_CBWR``) fixes the code path:
  ``AVX2`` gives the same bits on every Intel or AMD CPU with AVX2. :func:`pin` sets it unless the user set ``MKL_CBWR``
  already. MKL reads it at the process's first matrix product, so it is set when
  ``robustbench_lite`` is imported: ``rbl`` and a script that imports ``robustbench_lite`` before
  computing with torch get it; a process that multiplied matrices before that keeps MKL's own
  choice, and its cells still record ``MKL_CBWR`` as it was asked for.
- **torch's vectorised kernels and oneDNN's convolutions** follow the CPU's vector width (AVX2 or
  AVX-512): sums are taken in another order. torch cannot change this after it has started, so
  the width it runs at (``cpu_capability``) is part of a cell's key: a cell computed at AVX-512
  is another cell than one computed at AVX2, and ``rbl verify`` names the difference.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: The MKL branch pinned for reproducible matrix products across x86 CPUs.
MKL_BRANCH = "AVX2"


def pin() -> None:
    """Ask MKL for :data:`MKL_BRANCH` unless ``MKL_CBWR`` is already set (read at MKL's first call),
    and cuBLAS for the workspace its deterministic mode needs (read when CUDA starts; see
    :mod:`robustbench_lite.devices`)."""
    os.environ.setdefault("MKL_CBWR", MKL_BRANCH)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def environment(device: "torch.device | None" = None) -> dict[str, str]:
    """The numeric code paths of this process, as they go into a cell's key (on a GPU, with the
    GPU's model and libraries: :func:`robustbench_lite.devices.environment`)."""
    # lazy: `import robustbench_lite` (and `rbl --help`) must start without torch
    import torch
    from . import devices

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"),
            **(devices.environment(device) if device is not None else {})}


__all__ = ["MKL_BRANCH", "environment", "pin"]
