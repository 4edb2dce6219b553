"""The download path, against a loopback HTTP server (127.0.0.1 only): a good file, a truncated
one, an HTML error page, a wrong hash, a slow one, an HTTP error, and the offline switch."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from robustbench_lite import fetch
from robustbench_lite.cli import main
from robustbench_lite.fetch import FetchError


def _weights() -> bytes:
    from safetensors.torch import save

    torch.manual_seed(0)
    return save({"w": torch.randn(64, 64)})


GOOD = _weights()
SHA = hashlib.sha256(GOOD).hexdigest()
HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>...</body></html>"


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[tuple[str, str | None]] = []
    files: dict[str, bytes] = {}  # more files, served whole

    def log_message(self, *a):  # keep pytest's output clean
        pass

    def _send(self, body: bytes, ctype: str = "application/octet-stream", length: int | None = None, status: int = 200,
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _rest(self, start: int) -> None:
        """The good file from byte ``start`` on, as a 206 answer to a range request."""
        self._send(GOOD[start:], status=206, extra={"Content-Range": f"bytes {start}-{len(GOOD) - 1}/{len(GOOD)}"})

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).hits.append((self.path, rng))
        path = self.path.split("?")[0]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if path == "/good.safetensors":
            if start:
                return self._rest(start)
            return self._send(GOOD)
        if path == "/truncated.safetensors":  # promises the whole file, sends half, hangs up
            return self._send(GOOD[: len(GOOD) // 2], length=len(GOOD))
        if path == "/html-as-octets.pt":  # the page saved as weights, with a lying Content-Type
            return self._send(HTML)
        if path == "/drive.pt":
            return self._send(HTML, ctype="text/html; charset=utf-8")
        if path == "/missing.safetensors":
            return self._send(b"not found", ctype="text/plain", status=404)
        if path == "/slow.safetensors":  # the first part at once, then a stall longer than the client's timeout
            if start:
                return self._rest(start)
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[:1000])
            self.wfile.flush()
            time.sleep(1.5)
            return
        if path in type(self).files:
            return self._send(type(self).files[path])
        self._send(b"?", status=404)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RBL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RBL_OFFLINE", raising=False)
    _Handler.hits.clear()
    return tmp_path / "cache"


def _leftovers(cache: Path) -> list[str]:
    root = cache / "downloads"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def test_a_good_file_is_fetched_verified_cached_and_then_served_offline(server, cache, monkeypatch):
    url = f"{server}/good.safetensors"
    path = fetch.fetch(url, SHA)
    assert path.read_bytes() == GOOD and path.name == "good.safetensors" and SHA in str(path)
    assert _leftovers(cache) == ["good.safetensors"]  # no .part left behind
    n = len(_Handler.hits)
    monkeypatch.setenv("RBL_OFFLINE", "1")
    assert fetch.fetch(url, SHA) == path and len(_Handler.hits) == n  # from the cache, no request


def test_offline_refuses_the_network_with_a_clear_message(server, cache, monkeypatch):
    monkeypatch.setenv("RBL_OFFLINE", "1")
    with pytest.raises(FetchError, match="RBL_OFFLINE=1: not downloading .*good.safetensors.*not in the cache"):
        fetch.fetch(f"{server}/good.safetensors", SHA)
    assert _Handler.hits == []


def test_a_truncated_transfer_is_refused_and_never_cached(server, cache):
    url = f"{server}/truncated.safetensors"
    with pytest.raises(FetchError, match=r"truncated.*ended after \d+ of \d+ bytes|broke after \d+ bytes"):
        fetch.fetch(url, SHA, retries=1)
    assert "truncated.safetensors" not in _leftovers(cache)  # only a .part, never the file itself
    assert all(name.endswith(".part") for name in _leftovers(cache))
    assert [r for _, r in _Handler.hits][1:] and all(r and r.startswith("bytes=") for _, r in _Handler.hits[1:])  # resumed


@pytest.mark.parametrize("name", ["drive.pt", "html-as-octets.pt"])
def test_an_html_page_where_weights_should_be_is_named_as_such(server, cache, name):
    url = f"{server}/{name}"
    with pytest.raises(FetchError, match=f"{name} served an HTML"):
        fetch.fetch(url, hashlib.sha256(HTML).hexdigest())  # even when the named hash is the page's own
    assert _leftovers(cache) == []


def test_a_wrong_hash_is_refused_naming_both_hashes(server, cache):
    wrong = "0" * 64
    with pytest.raises(FetchError, match=f"good.safetensors: sha256 mismatch: the file has {SHA}.*{wrong}"):
        fetch.fetch(f"{server}/good.safetensors", wrong)
    assert _leftovers(cache) == []


def test_a_stalled_transfer_times_out_keeps_its_part_and_the_next_call_resumes(server, cache):
    url = f"{server}/slow.safetensors"
    with pytest.raises(FetchError, match=r"timed out after 0.3 s without data \(1000 bytes received\).*resumes"):
        fetch.fetch(url, SHA, timeout=0.3, retries=0)
    assert _leftovers(cache) == ["slow.safetensors.part"]
    path = fetch.fetch(url, SHA, timeout=5)
    assert path.read_bytes() == GOOD and _Handler.hits[-1][1] == "bytes=1000-"


def test_http_errors_bad_hashes_and_bad_sources_are_clear(server):
    with pytest.raises(FetchError, match="missing.safetensors: HTTP 404"):
        fetch.fetch(f"{server}/missing.safetensors", SHA)
    with pytest.raises(FetchError, match="needs the sha256 of the file .*'abc'"):
        fetch.fetch(f"{server}/good.safetensors", "abc")
    with pytest.raises(FetchError, match="not a download source: 'ftp://x'"):
        fetch.fetch("ftp://x", SHA)
    with pytest.raises(FetchError, match="cannot connect"):
        fetch.fetch("http://127.0.0.1:9/x.safetensors", SHA, timeout=2)  # the discard port: nothing listens


def test_hf_hub_sources_go_through_huggingface_hub_and_are_checked_the_same(cache, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    local = tmp_path / "hf.safetensors"
    local.write_bytes(GOOD)

    def fake(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    assert fetch.fetch("hf-hub:someone/tiny", SHA).read_bytes() == GOOD
    assert calls == [("someone/tiny", "model.safetensors")]
    local.write_bytes(HTML)
    with pytest.raises(FetchError, match="hf-hub:someone/tiny/sub/w.pt served an HTML"):
        fetch.fetch("hf-hub:someone/tiny/sub/w.pt", hashlib.sha256(HTML).hexdigest())
    assert calls[-1] == ("someone/tiny", "sub/w.pt")


def test_a_remote_checkpoint_is_evaluated_and_verified_from_its_url(server, cache, trained, tmp_path, capsys):
    """A remote checkpoint is a source plus its sha256: evaluated like the local file, stored with
    the URL as its source (so verify fetches it again), and a bad one exits 2 naming the URL."""
    from safetensors.torch import save

    body = save({k: v.contiguous() for k, v in trained.model.state_dict().items()})
    sha = hashlib.sha256(body).hexdigest()
    _Handler.files["/smallcnn.safetensors"] = body
    url = f"{server}/smallcnn.safetensors"
    store = tmp_path / "s.sqlite"
    args = ["--arch", "smallcnn", "--dataset", "fmnist", "--attack", "fgsm", "--eps", "0.1", "--n", "32", "--no-checks", "--json"]
    assert main(["eval", "--checkpoint", url, "--sha256", sha, "--store", str(store), *args]) == 0
    remote = json.loads(capsys.readouterr().out.splitlines()[0])
    (tmp_path / "smallcnn.safetensors").write_bytes(body)  # the same name: the name is part of a cell
    assert main(["eval", "--checkpoint", str(tmp_path / "smallcnn.safetensors"), "--no-store", *args]) == 0
    local = json.loads(capsys.readouterr().out.splitlines()[0])
    assert remote["robust_acc"] == local["robust_acc"] and remote["key"] == local["key"]
    from robustbench_lite.store import Store

    with Store(store) as s:
        assert [m["source"] for m in s.models()] == [url]
    for p in (cache / "downloads").rglob("*.safetensors"):
        p.unlink()  # verify downloads it again from the source it was stored with
    assert main(["verify", "--store", str(store), "--json"]) == 0
    (outcome,) = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert outcome["status"] == "identical", outcome
    assert list((cache / "downloads").rglob("smallcnn.safetensors"))
    rc = main(["eval", "--checkpoint", f"{server}/drive.pt", "--sha256", hashlib.sha256(HTML).hexdigest(), *args])
    assert rc == 2 and "drive.pt served an HTML" in capsys.readouterr().err
    rc = main(["eval", "--checkpoint", url, *args])
    assert rc == 2 and "needs its sha256 (--sha256)" in capsys.readouterr().err


def test_a_zoo_card_naming_a_source_is_fetched_on_first_use_and_never_trained(server, cache, trained, monkeypatch):
    import dataclasses

    from safetensors.torch import save

    from robustbench_lite import profiles, zoo

    body = save({k: v.contiguous() for k, v in trained.model.state_dict().items()})
    sha = hashlib.sha256(body).hexdigest()
    _Handler.files["/zoo/smallcnn.safetensors"] = body
    folder = zoo.checkpoint_dir(trained.name)
    folder.mkdir(parents=True)
    card = dataclasses.replace(trained.card, weights_sha256=sha, source=f"{server}/zoo/smallcnn.safetensors")
    (folder / "card.json").write_text(json.dumps(dataclasses.asdict(card)))
    assert zoo.fetchable(trained.name) and not zoo.is_trained(trained.name)
    monkeypatch.setattr(profiles, "train", lambda *a, **k: pytest.fail("a card with a source must not be retrained"))
    lm = zoo.load(trained.name)
    assert lm.weights_sha256 == sha and zoo.is_trained(trained.name)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(lm.model(x), trained.model(x))
    # A card whose source serves other bytes is refused, and leaves no weights beside the card.
    (folder / "model.safetensors").unlink()
    _Handler.files["/zoo/smallcnn.safetensors"] = body[:-8] + b"\0" * 8
    for p in (cache / "downloads").rglob("*.safetensors"):
        p.unlink()
    with pytest.raises(FetchError, match="sha256 mismatch"):
        zoo.load(trained.name)
    assert not (folder / "model.safetensors").exists()


def test_rbl_zoo_fetch_prints_the_cached_path_and_exits_2_on_a_bad_file(server, cache, capsys, monkeypatch):
    assert main(["zoo", "fetch", f"{server}/good.safetensors", "--sha256", SHA]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.read_bytes() == GOOD
    assert main(["zoo", "fetch", f"{server}/truncated.safetensors", "--sha256", SHA]) == 2
    assert "truncated.safetensors" in capsys.readouterr().err
    monkeypatch.setenv("RBL_OFFLINE", "1")
    assert main(["zoo", "fetch", f"{server}/good.safetensors", "--sha256", SHA]) == 0  # cached: no network needed
    assert main(["zoo", "fetch", f"{server}/slow.safetensors", "--sha256", SHA]) == 2
    assert "RBL_OFFLINE=1" in capsys.readouterr().err
