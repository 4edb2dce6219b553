"""Where computations run: CUDA, MPS or the CPU, chosen once and carried by every tensor.

A device is named as ``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or
``mps``. :func:`resolve` turns a name into a ``torch.device`` and refuses one this machine does not
have, saying what it found (:class:`DeviceError`, a ``ValueError``: the CLI exits 2 on it).

The engine moves the model and its copies of the data to the device; everything else follows
the tensors it is handed. Random numbers come from generators made on the device of the tensors
they perturb (:func:`generator`), so no draw crosses devices on a hot path. A step that only
exists on the CPU (JPEG through Pillow) declares ``cpu_only`` and moves its batch there and back.

Reproducibility: on the CPU a seeded cell is bit-identical run to run. On CUDA the engine asks
torch for deterministic algorithms where it has them (:func:`deterministic`; the cuBLAS workspace
setting they need is made at package import, :func:`robustbench_lite.numerics.pin`), so a seeded
cell repeats on the same GPU model, driver and library versions, which go into the cell's key
(:func:`environment`). Across GPU models, or between a GPU
and the CPU, the low-order bits of float32 sums differ: those are other cells, never the same one.
"""
from __future__ import annotations

import re
from typing import Any

import torch

#: The names :func:`resolve` accepts.
NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")


class DeviceError(ValueError):
    """A device that is unknown or not present on this machine."""


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def found() -> str:
    """What this machine offers, in words, for error messages and ``rbl list devices``."""
    parts = ["cpu"]
    if torch.cuda.is_available():
        parts += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    else:
        parts.append(f"no CUDA device (torch {torch.__version__}, "
                     + (f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA") + ")")
    parts.append("mps" if _mps() else "no MPS")
    return ", ".join(parts)


def available() -> list[str]:
    """The device types present: always ``cpu``, then ``cuda`` and ``mps`` where they are."""
    return ["cpu"] + ["cuda"] * torch.cuda.is_available() + ["mps"] * _mps()


def resolve(spec: str | torch.device | None = "auto") -> torch.device:
    """The device ``spec`` names (None means ``auto``), checked to exist here."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu")
    if not isinstance(spec, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", spec):
        raise DeviceError(f"unknown device {spec!r}; allowed: {', '.join(NAMES)}")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} is not available: this machine has {found()}")
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r} is not available: this machine has {found()}")
        return torch.device("cuda", index)
    if spec == "mps" and not _mps():
        raise DeviceError(f"device 'mps' is not available: this machine has {found()}")
    return torch.device(spec)


def of(thing: Any) -> torch.device:
    """The device of a tensor, or of a module's first parameter or buffer (the CPU for neither)."""
    if isinstance(thing, torch.Tensor):
        return thing.device
    if isinstance(thing, torch.nn.Module):
        for t in thing.parameters():
            return t.device
        for t in thing.buffers():
            return t.device
    return torch.device("cpu")


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device`` (on the CPU, the same numbers as ``torch.Generator()``)."""
    return torch.Generator(device=device).manual_seed(seed)


def deterministic(device: torch.device) -> None:
    """Ask torch for deterministic kernels on a GPU (warning, not failing, where one has none)."""
    if device.type == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def environment(device: torch.device) -> dict[str, str]:
    """What decides a GPU's low-order bits, for a cell's key: the GPU model and the libraries."""
    if device.type == "cuda":
        return {"cuda_device": torch.cuda.get_device_name(device), "cuda": str(torch.version.cuda),
                "cudnn": str(torch.backends.cudnn.version()), "cuda_deterministic": "1"}
    if device.type == "mps":
        import platform

        return {"mps": platform.mac_ver()[0] or "unknown"}
    return {}


__all__ = ["NAMES", "DeviceError", "available", "deterministic", "environment", "found", "generator", "of", "resolve"]
