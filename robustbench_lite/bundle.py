"""Zoo bundles: trained models, generative models and stored artifacts as one folder that
another machine imports and checks before it uses any of it.

A bundle is a folder::

    manifest.json                       what it holds, every file's sha256 and size, and its own sha256
    zoo/<name>/model.safetensors        a zoo model (weights and card, as in the cache)
    zoo/<name>/card.json
    generative/<name>/model.safetensors a generative model (weights and card)
    generative/<name>/card.json
    artifacts/<key>.safetensors         a stored artifact's tensors, byte for byte as in the store
    artifacts/<key>.json                its kind and metadata text

Reading a bundle verifies everything before anything is installed: the manifest's own hash, each
listed file's size and sha256, no file the manifest does not list, every card's weights hash,
every network building and taking its weights, every artifact hashing to its key. One flipped
byte anywhere is an error naming the file; nothing is half-imported (models are installed by
renaming folders into the cache, artifacts in one store transaction, and a failure part-way
restores what was there).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .zoo.checkpoint import CARD, WEIGHTS, CheckpointError, file_sha256
from .generative import base as generative
from . import zoo
from .store import artifact_key

FORMAT = "robustbench_lite-bundle"
VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("zoo", "generative")  # model folders; artifacts are files under artifacts/


class BundleError(ValueError):
    """A bundle that is missing, corrupt, inconsistent, or would overwrite other weights."""


@dataclass(frozen=True)
class Entry:
    kind: str  # "zoo", "generative" or "artifact"
    name: str  # the model's name, or the artifact's key
    weights_sha256: str = ""  # models only
    artifact_kind: str = ""  # artifacts only

    @property
    def folder(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Bundle:
    """A bundle whose every file has been verified."""

    path: Path
    entries: tuple[Entry, ...]
    manifest: dict[str, Any]

    def models(self, kind: str = "zoo") -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]

    def model_dir(self, name: str) -> Path:
        """The folder of zoo model ``name`` inside the bundle."""
        for e in self.models("zoo"):
            if e.name == name:
                return self.path / e.folder
        raise BundleError(f"bundle {self.path} has no zoo model {name!r}; it holds: "
                          f"{', '.join(e.name for e in self.models('zoo')) or 'none'}")


# --- writing -----------------------------------------------------------------------------


def _self_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _source_dir(name: str) -> tuple[str, Path]:
    """(kind, cache folder) of a trained zoo model or generative model named ``name``."""

    if zoo.is_trained(name):
        return "zoo", zoo.checkpoint_dir(name)
    try:
        return "generative", generative.resolve(name)
    except (ValueError, FileNotFoundError, KeyError):
        pass
    raise BundleError(f"nothing to export under {name!r}: no trained zoo model or generative model has that name; "
                      f"trained zoo models: {', '.join(zoo.trained()) or 'none'}")


def export(names: Sequence[str], out: Path, *, store: Any = None, artifacts: Sequence[str] = ()) -> Bundle:
    """Write the trained models ``names`` (zoo or generative) and the ``store``'s artifacts of the
    kinds ``artifacts`` (``"all"`` for every kind) into a new bundle folder ``out``, atomically."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"bundle folder {out} already exists and is not empty; choose a new --out")
    if not names and not artifacts:
        raise BundleError("nothing to export: name at least one model (or --artifacts KIND)")
    if artifacts and store is None:
        raise BundleError("exporting artifacts needs the store that holds them")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        for name in dict.fromkeys(names):
            kind, src = _source_dir(name)
            card = json.loads((src / CARD).read_text())
            dst = tmp / kind / name
            dst.mkdir(parents=True)
            for f in (WEIGHTS, CARD):
                shutil.copyfile(src / f, dst / f)
            if file_sha256(dst / WEIGHTS) != card.get("weights_sha256"):
                raise BundleError(f"{src / WEIGHTS} does not match its card's sha256; retrain or re-import {name!r}")
            entries.append({"kind": kind, "name": name, "weights_sha256": card["weights_sha256"]})
        if artifacts:
            want = None if "all" in artifacts else set(artifacts)
            rows = [r for r in store.raw_artifacts() if want is None or r[1] in want]
            missing = sorted((want or set()) - {r[1] for r in rows})
            if missing:
                raise BundleError(f"the store {store.path} holds no artifacts of kind {', '.join(missing)}; "
                                  f"it holds: {', '.join(sorted({r[1] for r in store.raw_artifacts()})) or 'none'}")
            (tmp / "artifacts").mkdir()
            for key, kind, meta, blob in rows:
                (tmp / "artifacts" / f"{key}.safetensors").write_bytes(blob)
                (tmp / "artifacts" / f"{key}.json").write_text(json.dumps({"kind": kind, "meta": meta}))
                entries.append({"kind": "artifact", "name": key, "artifact_kind": kind})
        files = {p.relative_to(tmp).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "version": VERSION, "robustbench_lite": __version__, "entries": entries, "files": files}
        manifest["sha256"] = _self_hash(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read(out)


# --- reading -----------------------------------------------------------------------------


def _manifest(path: Path) -> dict[str, Any]:
    mf = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"bundle {path} is not a folder")
    if not mf.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(mf.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mf} is corrupt: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mf} is not a robustbench_lite bundle manifest (format {FORMAT!r})")
    if manifest.get("sha256") != _self_hash(manifest):
        raise BundleError(f"{mf} is corrupt: its content does not hash to the sha256 it records")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{mf}: bundle version {manifest.get('version')!r}; this robustbench_lite reads version {VERSION}")
    return manifest


def _check_files(path: Path, files: dict[str, Any]) -> None:
    root = path.resolve()
    for rel, meta in files.items():
        p = (path / rel)
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not p.resolve().is_relative_to(root):
            raise BundleError(f"{path / MANIFEST} lists a file outside the bundle: {rel!r}")
        if not p.is_file() or p.is_symlink():
            raise BundleError(f"bundle {path} is incomplete: {rel} is missing")
        if p.stat().st_size != meta.get("bytes"):
            raise BundleError(f"bundle file {p} is corrupt: {p.stat().st_size} bytes, the manifest says {meta.get('bytes')}")
        if file_sha256(p) != meta.get("sha256"):
            raise BundleError(f"bundle file {p} is corrupt: its sha256 differs from the manifest's")
    extra = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if (p.is_file() or p.is_symlink()) and p.relative_to(path).as_posix() not in files and p.name != MANIFEST)
    if extra:
        raise BundleError(f"bundle {path} holds files its manifest does not list: {', '.join(extra)}")


def _check_model(path: Path, e: Entry) -> None:

    folder = path / e.folder
    try:
        if e.kind == "zoo":
            zoo.parse_name(e.name)
            lm = zoo.load_checkpoint(folder)
            name, sha = lm.name, lm.weights_sha256
        else:
            lg = generative.load(str(folder))
            name, sha = lg.name, lg.weights_sha256
    except (CheckpointError, ValueError, KeyError) as exc:
        raise BundleError(f"bundle entry {folder} does not load: {exc}") from exc
    if name != e.name or sha != e.weights_sha256:
        raise BundleError(f"bundle entry {folder}: its card names {name!r} with weights {sha[:12]}..., "
                          f"the manifest {e.name!r} with {e.weights_sha256[:12]}...")


def _check_artifact(path: Path, e: Entry) -> tuple[str, str, bytes]:

    info = json.loads((path / "artifacts" / f"{e.name}.json").read_text())
    blob = (path / "artifacts" / f"{e.name}.safetensors").read_bytes()
    if info.get("kind") != e.artifact_kind or artifact_key(info["kind"], info["meta"], blob) != e.name:
        raise BundleError(f"bundle artifact {path / 'artifacts' / e.name}: its content does not hash to its key")
    return info["kind"], info["meta"], blob


def read(path: Path) -> Bundle:
    """Open and verify a bundle (see the module docstring); any defect is a BundleError naming the file."""
    path = Path(path)
    manifest = _manifest(path)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path / MANIFEST} lists no files")
    _check_files(path, files)
    entries = []
    for raw in manifest.get("entries", []):
        try:
            e = Entry(**raw)
        except TypeError as exc:
            raise BundleError(f"{path / MANIFEST}: bad entry {raw!r}: {exc}") from None
        if e.kind not in (*KINDS, "artifact"):
            raise BundleError(f"{path / MANIFEST}: entry {e.name!r} has unknown kind {e.kind!r}; allowed: {', '.join(KINDS)}, artifact")
        if e.kind == "artifact":
            _check_artifact(path, e)
        else:
            _check_model(path, e)
        entries.append(e)
    return Bundle(path, tuple(entries), manifest)


# --- importing ---------------------------------------------------------------------------


def _cache_dir(kind: str, name: str) -> Path:
    """Where a model of ``kind`` ("zoo" or "generative") named ``name`` lives in the cache."""

    return zoo.checkpoint_dir(name) if kind == "zoo" else generative.checkpoint_dir(name)


def _installed_sha(kind: str, name: str) -> str | None:
    d = _cache_dir(kind, name)
    if not (d / CARD).is_file() or not (d / WEIGHTS).is_file():
        return None  # nothing there, or a card alone (its weights still to download): the bundle's are installed
    try:
        return json.loads((d / CARD).read_text()).get("weights_sha256") or "?"
    except (OSError, json.JSONDecodeError):
        return "?"


def install(bundle: Bundle, *, store: Any = None, replace: bool = False) -> dict[str, list[str]]:
    """Install a verified bundle: models into the cache, artifacts into ``store`` (required when the
    bundle holds any). A model already in the cache with the same weights is kept; one with other
    weights is an error unless ``replace``. Returns {"installed": [...], "kept": [...]}."""
    arts = [e for e in bundle.entries if e.kind == "artifact"]
    if arts and store is None:
        raise BundleError(f"bundle {bundle.path} holds artifacts; importing them needs a store")
    plan, kept = [], []
    for e in bundle.entries:
        if e.kind == "artifact":
            continue
        have = _installed_sha(e.kind, e.name)
        if have == e.weights_sha256:
            kept.append(e.name)
            continue
        if have is not None and not replace:
            raise BundleError(f"the cache already holds {e.kind} model {e.name!r} with other weights ({have[:12]}... , "
                              f"the bundle's are {e.weights_sha256[:12]}...); pass --replace to overwrite it")
        plan.append((e, _cache_dir(e.kind, e.name)))
    done: list[tuple[Path, Path | None]] = []  # (installed folder, the folder it displaced)
    try:
        for e, dst in plan:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
            for f in (WEIGHTS, CARD):
                shutil.copyfile(bundle.path / e.folder / f, tmp / f)
            if file_sha256(tmp / WEIGHTS) != e.weights_sha256:  # the bundle changed since it was read
                shutil.rmtree(tmp)
                raise BundleError(f"bundle file {bundle.path / e.folder / WEIGHTS} changed while it was imported")
            old = None
            if dst.exists():
                old = dst.with_name(f".{dst.name}.replaced")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dst, old)
            os.replace(tmp, dst)
            done.append((dst, old))
        if arts:
            store.put_raw_artifacts([(e.name, *_check_artifact(bundle.path, e)) for e in arts])
    except BaseException:
        for dst, old in reversed(done):
            shutil.rmtree(dst, ignore_errors=True)
            if old is not None:
                os.replace(old, dst)
        raise
    for _, old in done:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return {"installed": [e.name for e, _ in plan] + [e.name for e in arts], "kept": kept}


def import_(path: Path, *, store: Any = None, replace: bool = False) -> dict[str, list[str]]:
    """:func:`read` then :func:`install`."""
    return install(read(path), store=store, replace=replace)


def describe(bundle: Bundle) -> list[dict[str, Any]]:
    return [dataclasses.asdict(e) for e in bundle.entries]


__all__ = ["Bundle", "BundleError", "Entry", "describe", "export", "import_", "install", "read"]
