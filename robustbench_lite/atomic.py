"""Atomic file writes: a reader sees the old file or the new one, never half of one, and a write
that fails leaves nothing behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def write(path: str | Path, write: Callable[[str], Any], mode: int = 0o644) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path`` and move it into place.

    ``mode`` replaces mkstemp's 0600: a published report or a checkpoint is for everyone to read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
