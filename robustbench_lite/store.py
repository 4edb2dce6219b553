"""The results store: one SQLite row per evaluated cell, keyed by the hash of its full config.

A cell is written in one transaction after it is computed, so a run killed at any point
and restarted ends with every cell exactly once; ``INSERT OR IGNORE`` keeps the first.

The store checks itself. A cell's key is the sha256 of the canonical config text stored beside
it (``cell.CellConfig``); a row whose config does not hash to its key, whose numbers disagree
with its bits, or whose record names another key is refused with :class:`StoreIntegrityError`
(a corrupt or foreign store), never served. Writing checks the same before anything is stored.

An escalated cell (``engine.escalation_config``: the cell it escalates, the failed checks, the
ladder and its settings) is a row like any other; its record holds the ladder it climbed and the
checks run again after it, and the verdicts that triggered it are those of the cell it escalates.

Beside the cells: ``checks`` holds gradient-masking verdicts under their own key (the check
settings and the cells they read, ``cell.checks_config``); ``models`` the card of every model
evaluated into the store, keyed by (weights sha256, name), which is where reports read cards and
training curves from; ``artifacts`` experiments' outputs; ``failures`` cells that could not be
computed.

Cells written under the first key scheme (schema 1, before ``cell.CellConfig``: the key held the
model's name and weights but not its architecture or any code) stay in the file, untouched, but
are never served or reported: :meth:`Store.legacy` lists them, and ``rbl verify`` re-runs them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cell import SCHEMA, CellConfig, canonical, digest
from .checks import Verdict
from .engine import EvalResult
from .zoo import ModelCard

if TYPE_CHECKING:
    import torch

    from .cell import ModelId

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    config TEXT NOT NULL,
    row TEXT NOT NULL,
    robust BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checks (
    key TEXT PRIMARY KEY,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    config TEXT NOT NULL,
    verdicts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cell_checks (
    cell TEXT NOT NULL,
    checks TEXT NOT NULL,
    PRIMARY KEY (cell, checks)
);
CREATE TABLE IF NOT EXISTS models (
    weights_sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    identity TEXT NOT NULL,
    card TEXT,
    source TEXT,
    PRIMARY KEY (weights_sha256, name)
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
# Columns added after the first release of the results table; an older file gets them on open
# (a schema-1 row keeps schema 1: it is never served, see the module docstring).
_COLUMNS = {"results": (("schema", "INTEGER NOT NULL DEFAULT 1"), ("provenance", "TEXT NOT NULL DEFAULT '{}'"))}


class StoreIntegrityError(RuntimeError):
    """A stored row that is not what its key says: a corrupt, edited or foreign store."""


class Store:
    """SQLite-backed result rows. Reports read only from here."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        for table, columns in _COLUMNS.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- cells ---------------------------------------------------------------------------

    def put(self, result: EvalResult, config: CellConfig | dict[str, Any], provenance: dict[str, Any] | None = None) -> None:
        self.put_many([(result, config, provenance or {})])

    def put_many(self, rows: Iterable[tuple[EvalResult, CellConfig | dict[str, Any]] |
                                      tuple[EvalResult, CellConfig | dict[str, Any], dict[str, Any]]]) -> None:
        """Write cells in one transaction: all of them or, if the process dies, none. A cell whose
        config does not hash to its key is refused before anything is written."""
        batch = []
        for item in rows:
            result, config = item[0], item[1]
            provenance = item[2] if len(item) > 2 else {}  # type: ignore[misc]
            text = canonical(config)
            if digest(text) != result.key:
                raise StoreIntegrityError(f"refusing to store cell {result.key[:16]}...: its config hashes to "
                                          f"{digest(text)[:16]}...")
            record = {k: v for k, v in result.to_record().items() if k != "checks"}
            batch.append((result.key, SCHEMA, text, json.dumps(record), _pack(result),
                          json.dumps(provenance, sort_keys=True, default=str)))
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO results (key, schema, config, row, robust, provenance) VALUES (?, ?, ?, ?, ?, ?)", batch)

    def get(self, key: str) -> EvalResult | None:
        """The cell under ``key``, checked (a schema-1 cell is never served: None)."""
        hit = self._db.execute("SELECT key, config, row, robust FROM results WHERE key = ? AND schema = ?",
                               (key, SCHEMA)).fetchone()
        return None if hit is None else self._attach([_checked(*hit)])[0]

    def has(self, key: str) -> bool:
        """Whether a current cell is stored, without reading its row."""
        return self._db.execute("SELECT 1 FROM results WHERE key = ? AND schema = ?", (key, SCHEMA)).fetchone() is not None

    def config(self, key: str) -> dict[str, Any] | None:
        """The full configuration a cell was computed under (what its key hashes)."""
        hit = self._db.execute("SELECT config FROM results WHERE key = ?", (key,)).fetchone()
        return None if hit is None else json.loads(hit[0])

    def provenance(self, key: str) -> dict[str, Any] | None:
        """Where and how a cell was computed (batch size, machine, model source): not in its key."""
        hit = self._db.execute("SELECT provenance FROM results WHERE key = ?", (key,)).fetchone()
        return None if hit is None else json.loads(hit[0])

    def raw(self) -> list[tuple[str, int, str, str, bytes, dict[str, Any]]]:
        """Every stored row unchecked, for ``rbl verify``: (key, schema, config text, record text,
        bits, provenance), in insertion order."""
        rows = self._db.execute("SELECT key, schema, config, row, robust, provenance FROM results ORDER BY rowid").fetchall()
        return [(k, s, c, r, b, json.loads(p or "{}")) for k, s, c, r, b, p in rows]

    def keys(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT key FROM results WHERE schema = ? ORDER BY rowid", (SCHEMA,))]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results WHERE schema = ?", (SCHEMA,)).fetchone()[0])

    def results(self) -> list[EvalResult]:
        cur = self._db.execute("SELECT key, config, row, robust FROM results WHERE schema = ? ORDER BY rowid", (SCHEMA,))
        return self._attach([_checked(*r) for r in cur.fetchall()])

    def legacy(self) -> list[tuple[str, dict[str, Any], EvalResult]]:
        """(key, config, result) of the cells written under the first key scheme: kept, never served."""
        cur = self._db.execute("SELECT key, config, row, robust FROM results WHERE schema != ? ORDER BY rowid", (SCHEMA,))
        return [(k, json.loads(c), _result(json.loads(r), b)) for k, c, r, b in cur.fetchall()]

    def rows(self) -> list[dict[str, Any]]:
        return [r.to_row() for r in self.results()]

    def dataframe(self) -> "Any":
        import pandas as pd

        return pd.DataFrame(self.rows())

    # --- gradient-masking verdicts ---------------------------------------------------------

    def put_checks(self, key: str, config: dict[str, Any], verdicts: tuple[Verdict, ...]) -> None:
        """Store one set of verdicts under its own key, linked to the cells it describes."""
        text = canonical(config)
        if digest(text) != key:
            raise StoreIntegrityError(f"refusing to store verdicts {key[:16]}...: their config hashes to {digest(text)[:16]}...")
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO checks (key, config, verdicts) VALUES (?, ?, ?)",
                             (key, text, json.dumps([v.to_dict() for v in verdicts])))
            self._db.executemany("INSERT OR IGNORE INTO cell_checks (cell, checks) VALUES (?, ?)",
                                 [(cell, key) for cell in config.get("cells", ())])

    def raw_checks(self) -> list[tuple[str, str, str]]:
        """Every stored set of verdicts unchecked, for ``rbl verify``: (key, config text, verdicts text)."""
        return [tuple(r) for r in self._db.execute("SELECT key, config, verdicts FROM checks ORDER BY rowid")]

    def get_checks(self, key: str) -> tuple[Verdict, ...] | None:
        hit = self._db.execute("SELECT config, verdicts FROM checks WHERE key = ?", (key,)).fetchone()
        if hit is None:
            return None
        if digest(hit[0]) != key:
            raise StoreIntegrityError(f"{self.path}: the verdicts stored under {key[:16]}... have a config that "
                                      f"hashes to {digest(hit[0])[:16]}...: a corrupt or edited store")
        return tuple(Verdict.from_dict(v) for v in json.loads(hit[1]))

    def checks_of(self, cell: str) -> list[tuple[str, dict[str, Any], tuple[Verdict, ...]]]:
        """(key, config, verdicts) of every set of verdicts stored for one cell."""
        rows = self._db.execute("SELECT k.key, k.config FROM cell_checks c JOIN checks k ON k.key = c.checks "
                                "WHERE c.cell = ? ORDER BY k.rowid", (cell,)).fetchall()
        return [(k, json.loads(c), self.get_checks(k) or ()) for k, c in rows]

    def _attach(self, results: list[EvalResult]) -> list[EvalResult]:
        """Each cell with the verdicts stored for it (every set, in the order they were stored)."""
        if not results:
            return results
        links: dict[str, list[str]] = {}
        for cell, checks in self._db.execute("SELECT c.cell, c.checks FROM cell_checks c JOIN checks k ON k.key = c.checks "
                                             "ORDER BY k.rowid"):
            links.setdefault(cell, []).append(checks)
        cache: dict[str, tuple[Verdict, ...]] = {}
        out = []
        for r in results:
            keys = links.get(r.key) or []
            for combined in r.combined_from:
                keys += [k for k in links.get(combined, ()) if k not in keys]
            verdicts = tuple(v for k in keys for v in cache.setdefault(k, self.get_checks(k) or ()))
            out.append(dataclasses.replace(r, checks=verdicts) if verdicts else r)
        return out

    # --- models ------------------------------------------------------------------------------

    def put_model(self, identity: "ModelId", card: Any | None = None, source: str | None = None) -> None:
        """Record an evaluated model under (weights sha256, name): its identity and card as they
        were when it was evaluated. The first record of a (weights, name) pair is kept."""
        card_json = None
        if card is not None:
            card_json = json.dumps(dataclasses.asdict(card) if dataclasses.is_dataclass(card) else card, default=str)
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO models (weights_sha256, name, identity, card, source) VALUES (?, ?, ?, ?, ?)",
                             (identity.weights_sha256, identity.name, canonical(identity), card_json, source))

    def models(self) -> list[dict[str, Any]]:
        """Every recorded model: name, weights_sha256, identity, card (a dict or None), source."""
        rows = self._db.execute("SELECT name, weights_sha256, identity, card, source FROM models ORDER BY rowid").fetchall()
        return [{"name": n, "weights_sha256": w, "identity": json.loads(i), "card": json.loads(c) if c else None,
                 "source": s} for n, w, i, c, s in rows]

    def cards(self) -> list[Any]:
        """The model cards recorded in the store, as :class:`~robustbench_lite.zoo.ModelCard`s."""

        names = {f.name for f in dataclasses.fields(ModelCard)}
        return [ModelCard(**{k: v for k, v in m["card"].items() if k in names}) for m in self.models() if m["card"]]

    # --- failures ------------------------------------------------------------------------

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

    # --- artifacts -----------------------------------------------------------------------

    def put_artifact(self, kind: str, meta: dict[str, Any], tensors: dict[str, "torch.Tensor"]) -> str:
        """Store an experiment's output (a universal perturbation, fooling images, distances)
        with its metadata; the key hashes both, and a second put of the same is a no-op."""
        from safetensors.torch import save

        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        text = json.dumps(meta, sort_keys=True, default=str)
        key = artifact_key(kind, text, blob)
        self.put_raw_artifacts([(key, kind, text, blob)])
        return key

    def raw_artifacts(self) -> list[tuple[str, str, str, bytes]]:
        """(key, kind, meta text, tensors blob) of every artifact, as stored (what a bundle carries)."""
        return [tuple(r) for r in self._db.execute("SELECT key, kind, meta, tensors FROM artifacts ORDER BY rowid")]

    def put_raw_artifacts(self, rows: Iterable[tuple[str, str, str, bytes]]) -> None:
        """Store (key, kind, meta text, blob) rows in one transaction, each checked against its key."""
        rows = list(rows)
        for key, kind, text, blob in rows:
            if artifact_key(kind, text, blob) != key:
                raise StoreIntegrityError(f"artifact {key[:12]}... does not hash to its key; refusing to store it")
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO artifacts (key, kind, meta, tensors) VALUES (?, ?, ?, ?)", rows)

    def artifacts(self, kind: str | None = None) -> list[tuple[str, dict[str, Any], dict[str, "torch.Tensor"]]]:
        """(key, meta, tensors) of every stored artifact of ``kind`` (all kinds if None), in insertion order."""
        from safetensors.torch import load

        sql = "SELECT key, meta, tensors FROM artifacts" + (" WHERE kind = ?" if kind else "") + " ORDER BY rowid"
        rows = self._db.execute(sql, (kind,) if kind else ()).fetchall()
        return [(k, json.loads(m), load(b)) for k, m, b in rows]


def artifact_key(kind: str, meta_text: str, blob: bytes) -> str:
    """An artifact's key: the sha256 of its kind, metadata text and tensors."""
    return hashlib.sha256(kind.encode() + meta_text.encode() + blob).hexdigest()


def _pack(result: EvalResult) -> bytes:
    return np.packbits(np.concatenate([result.robust, result.robust_top5_mask])).tobytes()


def _result(record: dict[str, Any], bits: bytes) -> EvalResult:
    n = record["n"]
    both = np.unpackbits(np.frombuffer(bits, dtype=np.uint8))[: 2 * n].astype(bool)
    return EvalResult.from_record(record, both[:n], both[n:])


def _checked(key: str, config_text: str, row_text: str, bits: bytes) -> EvalResult:
    """A stored cell, after checking that it is what its key says."""
    def refuse(why: str) -> StoreIntegrityError:
        return StoreIntegrityError(f"stored cell {key[:16]}... {why}: a corrupt, edited or foreign store; "
                                   "it is never served (rbl verify re-runs what the store holds)")

    if digest(config_text) != key:
        raise refuse(f"has a config that hashes to {digest(config_text)[:16]}...")
    try:
        config, record = json.loads(config_text), json.loads(row_text)
        result = _result(record, bits)
    except (ValueError, KeyError, TypeError) as exc:
        raise refuse(f"cannot be read ({type(exc).__name__}: {exc})") from exc
    if result.key != key:
        raise refuse(f"holds the record of cell {result.key[:16]}...")
    if len(bits) != (2 * result.n + 7) // 8:
        raise refuse(f"holds {len(bits)} bytes of per-example bits for n = {result.n}")
    if config.get("kind") == "worst_case":
        if sorted(result.combined_from) != config["combined_from"]:
            raise refuse("is a worst case over other cells than its config names")
    elif config.get("kind") == "escalated":
        if result.escalated_from != config["cell"]:
            raise refuse("is the escalation of another cell than its config names")
    else:
        for name in ("n", "eps", "seed", "norm", "dataset", "data_sha256"):
            want = config.get(name)
            got = result.eps if name == "eps" and want == "inf" else getattr(result, name)
            if (float("inf") if want == "inf" else want) != got:
                raise refuse(f"says {name} = {got!r} but its config says {want!r}")
        if config["model"]["weights_sha256"] != result.weights_sha256:
            raise refuse("names other weights than its config")
    if int(result.robust.sum()) != round(result.robust_acc * result.n):
        raise refuse(f"has robust accuracy {result.robust_acc} but {int(result.robust.sum())} of {result.n} robust bits")
    return result
