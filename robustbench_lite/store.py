"""The results store: one SQLite row per evaluated cell, keyed by the hash of its full config.

A cell is written in one transaction after it is computed, so a run killed at any point
and restarted ends with every cell exactly once; ``INSERT OR IGNORE`` keeps the first.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine import EvalResult

if TYPE_CHECKING:
    import torch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    config TEXT NOT NULL,
    row TEXT NOT NULL,
    robust BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    meta TEXT NOT NULL,
    tensors BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    task TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL
)
"""


class Store:
    """SQLite-backed result rows. Reports read only from here."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, result: EvalResult, config: dict[str, Any]) -> None:
        self.put_many([(result, config)])

    def put_many(self, rows: Iterable[tuple[EvalResult, dict[str, Any]]]) -> None:
        """Write cells in one transaction: all of them or, if the process dies, none."""
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO results (key, config, row, robust) VALUES (?, ?, ?, ?)",
                [(r.key, json.dumps(c, sort_keys=True, default=str), json.dumps(r.to_record()),
                  np.packbits(np.concatenate([r.robust, r.robust_top5_mask])).tobytes()) for r, c in rows],
            )

    def put_failures(self, keys: Iterable[str], task: str, error: str, attempts: int) -> None:
        """Record cells that could not be computed (never as results); a rerun retries them."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO failures (key, task, error, attempts) VALUES (?, ?, ?, ?)",
                                 [(k, task, error, attempts) for k in keys])

    def clear_failures(self, keys: Iterable[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM failures WHERE key = ?", [(k,) for k in keys])

    def failures(self) -> list[dict[str, Any]]:
        """The cells recorded as failed: key, task, error, attempts, created."""
        cur = self._db.execute("SELECT key, task, error, attempts, created FROM failures ORDER BY created, key")
        return [dict(zip(("key", "task", "error", "attempts", "created"), r)) for r in cur.fetchall()]

    def set_checks(self, key: str, checks: "tuple[Any, ...]") -> None:
        """Attach gradient-masking verdicts to a stored cell (they never change its numbers)."""
        hit = self._db.execute("SELECT row FROM results WHERE key = ?", (key,)).fetchone()
        if hit is None:
            raise KeyError(f"no stored cell with key {key}")
        row = json.loads(hit[0]) | {"checks": [v.to_dict() for v in checks]}
        with self._db:
            self._db.execute("UPDATE results SET row = ? WHERE key = ?", (json.dumps(row), key))

    def get(self, key: str) -> EvalResult | None:
        cur = self._db.execute("SELECT row, robust FROM results WHERE key = ?", (key,))
        hit = cur.fetchone()
        return None if hit is None else _result(json.loads(hit[0]), hit[1])

    def has(self, key: str) -> bool:
        """Whether a cell is stored, without reading its row."""
        return self._db.execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone() is not None

    def config(self, key: str) -> dict[str, Any] | None:
        """The full configuration a cell was computed under (what its key hashes)."""
        hit = self._db.execute("SELECT config FROM results WHERE key = ?", (key,)).fetchone()
        return None if hit is None else json.loads(hit[0])

    def put_artifact(self, kind: str, meta: dict[str, Any], tensors: dict[str, "torch.Tensor"]) -> str:
        """Store an experiment's output (a universal perturbation, fooling images, distances)
        with its metadata; the key hashes both, and a second put of the same is a no-op."""
        from safetensors.torch import save

        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        text = json.dumps(meta, sort_keys=True, default=str)
        key = hashlib.sha256(kind.encode() + text.encode() + blob).hexdigest()
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO artifacts (key, kind, meta, tensors) VALUES (?, ?, ?, ?)",
                             (key, kind, text, blob))
        return key

    def artifacts(self, kind: str | None = None) -> list[tuple[str, dict[str, Any], dict[str, "torch.Tensor"]]]:
        """(key, meta, tensors) of every stored artifact of ``kind`` (all kinds if None), in insertion order."""
        from safetensors.torch import load

        sql = "SELECT key, meta, tensors FROM artifacts" + (" WHERE kind = ?" if kind else "") + " ORDER BY rowid"
        rows = self._db.execute(sql, (kind,) if kind else ()).fetchall()
        return [(k, json.loads(m), load(b)) for k, m, b in rows]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def results(self) -> list[EvalResult]:
        cur = self._db.execute("SELECT row, robust FROM results ORDER BY created, key")
        return [_result(json.loads(r), b) for r, b in cur.fetchall()]

    def rows(self) -> list[dict[str, Any]]:
        return [r.to_row() for r in self.results()]

    def dataframe(self) -> "Any":
        import pandas as pd

        return pd.DataFrame(self.rows())


def _result(record: dict[str, Any], bits: bytes) -> EvalResult:
    n = record["n"]
    both = np.unpackbits(np.frombuffer(bits, dtype=np.uint8))[: 2 * n].astype(bool)
    return EvalResult.from_record(record, both[:n], both[n:])
