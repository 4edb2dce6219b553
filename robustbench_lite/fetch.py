"""Downloads of weights that live elsewhere: ``https://...`` (or ``http://``) and ``hf-hub:org/name``.

What breaks model downloads in practice is a file that is not the file: a Google Drive or proxy
page saved under the weights' name (``invalid load key '<'`` from pickle), a transfer cut short,
a host that moved, no network at all. Here a download

- always names its sha256; the file is checked against it, and against its type (an HTML page,
  a truncated safetensors or an unknown format is refused naming the URL) before anything reads it;
- goes to ``<name>.part`` beside its cache path and is renamed into place only once checked
  (atomic: a reader never sees a partial file), and a rerun resumes a cut-off ``.part`` with an
  HTTP range request;
- is cached by its sha256 under ``<cache>/downloads/``, so a second use needs no network;
- is refused, with a message saying what to do, when ``RBL_OFFLINE=1`` and the file is not cached.

``hf-hub:org/name`` fetches ``model.safetensors`` from that Hugging Face repository;
``hf-hub:org/name/path/file.safetensors`` another file (``huggingface_hub``, a dependency of timm).
"""
from __future__ import annotations

import http.client
import os
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

from .paths import cache_dir
from .zoo.checkpoint import file_sha256

CHUNK = 1 << 16


class FetchError(ValueError):
    """A download that failed, was refused, or is not the file its source promised."""


class ResumableFetchError(FetchError):
    """A transfer that broke part-way: its ``.part`` file is kept, and the next try resumes it."""


def is_remote(source: str) -> bool:
    return isinstance(source, str) and source.startswith(("https://", "http://", "hf-hub:"))


def offline() -> bool:
    return os.environ.get("RBL_OFFLINE", "") not in ("", "0")


def _check_sha(sha256: str, source: str) -> str:
    s = (sha256 or "").lower()
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise FetchError(f"a download needs the sha256 of the file (64 hex digits); got {sha256!r} for {source}")
    return s


def _filename(source: str) -> str:
    if source.startswith("hf-hub:"):
        rest = source[len("hf-hub:"):].split("/")
        return rest[-1] if len(rest) > 2 else "model.safetensors"
    name = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name if name and name not in (".", "..") else "download"


def cached_path(source: str, sha256: str) -> Path:
    """Where the file of ``source`` with ``sha256`` is (or will be) cached."""
    sha = _check_sha(sha256, source)
    return cache_dir() / "downloads" / sha[:2] / sha / _filename(source)


def check_type(path: Path, source: str) -> None:
    """Refuse a file that is not weights: an HTML page, a truncated or malformed safetensors,
    anything that is neither safetensors nor a torch zip archive."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    text = head.lstrip().lower()
    if text.startswith(b"<"):  # <!doctype, <html, <?xml: a web page where weights should be
        raise FetchError(f"{source} served an HTML/XML page, not weights (a login, quota or error page, or "
                         f"Google Drive's virus-scan notice, saved as the file): first bytes {head[:60]!r}")
    if head[:4] == b"PK\x03\x04":  # torch.save's zip archive; read later with weights_only=True
        return
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{":
            if 8 + n > size:
                raise FetchError(f"{source}: truncated safetensors file ({size} bytes, its header alone needs {8 + n})")
            return
    raise FetchError(f"{source}: not a weights file (neither safetensors nor a torch zip archive); first bytes {head[:16]!r}")


def fetch(source: str, sha256: str, *, timeout: float = 30.0, retries: int = 2, check: bool = True) -> Path:
    """The cached, verified local copy of ``source`` (see the module docstring). ``timeout`` bounds
    each network read; a stalled or cut-off transfer is resumed up to ``retries`` times, then left
    as ``.part`` for the next call to resume."""
    if not is_remote(source):
        raise FetchError(f"not a download source: {source!r}; allowed: https://..., http://..., hf-hub:org/name[/file]")
    dest = cached_path(source, sha256)
    sha = dest.parent.name
    if dest.is_file():
        if file_sha256(dest) == sha:
            return dest
        dest.unlink()  # a corrupted cache entry is fetched again
    if offline():
        raise FetchError(f"RBL_OFFLINE=1: not downloading {source}, and it is not in the cache ({dest}); "
                         f"unset RBL_OFFLINE to download it, or put the file there (sha256 {sha[:16]}...)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if source.startswith("hf-hub:"):
        _hf(source, part)
    else:
        for attempt in range(retries + 1):
            try:
                _http(source, part, timeout)
                break
            except FetchError as exc:
                if not isinstance(exc, ResumableFetchError) or attempt == retries:
                    raise
    got = file_sha256(part)
    try:
        if check:
            check_type(part, source)
        if got != sha:
            raise FetchError(f"{source}: sha256 mismatch: the file has {got}, the source was named with {sha} "
                             f"({part.stat().st_size} bytes; a different or altered file)")
    except FetchError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _http(url: str, part: Path, timeout: float) -> None:
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "robustbench_lite", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the .part may be whole; the hash decides
            return
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url}: cannot connect ({reason}); check the address and the network, "
                         f"or set RBL_OFFLINE=1 to work from the cache only") from None
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
            first = resp.read(60)
            raise FetchError(f"{url} served an HTML page (Content-Type {ctype}), not weights (a login, quota or "
                             f"error page, or Google Drive's virus-scan notice): first bytes {first!r}")
        if resp.status == 206:
            mode, done = "ab", have
        else:
            mode, done = "wb", 0
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        with open(part, mode) as f:
            try:
                while True:
                    chunk = resp.read1(CHUNK)  # what has arrived: a stall keeps the bytes before it
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
            except (socket.timeout, TimeoutError):
                raise ResumableFetchError(f"{url}: timed out after {timeout:g} s without data ({done} bytes received); "
                                 f"the partial file {part} is kept and the next try resumes it") from None
            except (http.client.IncompleteRead, ConnectionError, OSError) as exc:
                raise ResumableFetchError(f"{url}: the transfer broke after {done} bytes ({type(exc).__name__}); "
                                 f"the partial file {part} is kept and the next try resumes it") from None
    if total is not None and done < total:
        raise ResumableFetchError(f"{url}: truncated: the transfer ended after {done} of {total} bytes; "
                         f"the partial file {part} is kept and the next try resumes it")


def _hf(source: str, part: Path) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - timm depends on it
        raise FetchError(f"{source}: hf-hub sources need huggingface_hub (pip install huggingface_hub)") from exc
    parts = source[len("hf-hub:"):].split("/")
    if len(parts) < 2 or not all(parts):
        raise FetchError(f"bad hf-hub source {source!r}; allowed: hf-hub:org/name or hf-hub:org/name/path/file")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "model.safetensors"
    try:
        local = hf_hub_download(repo_id=repo, filename=filename)
    except Exception as exc:  # huggingface_hub raises its own error types (network, 404, gated)
        raise FetchError(f"{source}: cannot download {filename} from the Hugging Face repository {repo}: "
                         f"{type(exc).__name__}: {exc}") from None
    with open(local, "rb") as src, open(part, "wb") as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk)


__all__ = ["FetchError", "cached_path", "check_type", "fetch", "is_remote", "offline"]
