"""Checkpoints: safetensors weights beside a JSON model card.

Pickles are refused: a ``.pt`` file is only read with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS = "model.safetensors"
CARD = "card.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, untrusted or does not fit its architecture."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    arch: str
    dataset: str
    recipe: str
    hyperparameters: dict[str, Any]
    seed: int
    data_sha256: str
    clean_acc: float
    weights_sha256: str = ""
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    train_seconds: float = 0.0
    curves: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""  # where the weights are downloaded from (https://... or hf-hub:...), if not shipped

    @classmethod
    def from_json(cls, path: Path) -> "ModelCard":
        return read_card(cls, path)


def read_card(cls: type, path: Path) -> Any:
    """A card dataclass from JSON; a missing required field or unreadable file is a CheckpointError."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable model card: {exc}") from exc
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if not isinstance(raw, dict) or not required <= raw.keys():
        raise CheckpointError(f"{path}: model card lacks {sorted(required - set(raw if isinstance(raw, dict) else {}))}")
    return cls(**{k: v for k, v in raw.items() if k in names})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: nn.Module, card: Any, directory: Path) -> Any:
    """Write weights and card (a dataclass with ``weights_sha256``) into ``directory`` atomically:
    a reader never sees half of it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        card = dataclasses.replace(card, weights_sha256=file_sha256(tmp / WEIGHTS))
        (tmp / CARD).write_text(json.dumps(dataclasses.asdict(card), indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def read_state(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or from a ``.pt``/``.pth`` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if expected_sha256:
        got = file_sha256(path)
        if got != expected_sha256:
            raise CheckpointError(f"checkpoint {path} is corrupt: sha256 {got[:16]}... but its card says {expected_sha256[:16]}...")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is not a valid safetensors file: {exc}") from exc
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError here
            raise CheckpointError(
                f"refusing checkpoint {path}: it is not a plain tensor state dict loadable with "
                f"weights_only=True (untrusted pickles are never executed): {type(exc).__name__}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
        return state
    raise CheckpointError(f"checkpoint {path}: unknown format {path.suffix!r}; allowed: .safetensors, .pt, .pth, .bin, .ckpt")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load; a bare network's state (no ``net.`` prefix) goes into the normalizing wrapper's ``net``."""
    target = model
    if hasattr(model, "net") and not any(k.startswith("net.") for k in state):
        target = model.net
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {source} does not fit the architecture: {exc}") from exc
