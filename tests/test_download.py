"""Downloads from a local HTTP server (127.0.0.1 only): resume with Range, SHA-256 record and check, offline error."""
import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ipl.download import download, ensure_source, recorded_sha256, sha256_file, verify
from ipl.core.errors import CheckpointError, WeightsNotFoundError
from ipl.registry import SourceEntry

PAYLOAD = bytes(range(256)) * 4000 + b"tail"  # ~1 MB, several chunks


class RangeHandler(BaseHTTPRequestHandler):
    ranges_seen: list = []

    def do_GET(self):  # noqa: N802
        data = PAYLOAD
        start = 0
        rng = self.headers.get("Range")
        RangeHandler.ranges_seen.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    RangeHandler.ranges_seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.pkl"
    httpd.shutdown()
    httpd.server_close()


def test_fresh_download_records_sha(server, tmp_path):
    dest = tmp_path / "m.pkl"
    download(server, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert recorded_sha256(dest) == hashlib.sha256(PAYLOAD).hexdigest()
    assert not (tmp_path / "m.pkl.part").exists()


def test_resume_partial_file(server, tmp_path):
    dest = tmp_path / "m.pkl"
    (tmp_path / "m.pkl.part").write_bytes(PAYLOAD[:300_001])
    download(server, dest, expected_sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert RangeHandler.ranges_seen == ["bytes=300001-"]
    assert dest.read_bytes() == PAYLOAD


def test_wrong_sha_is_refused_and_part_removed(server, tmp_path):
    dest = tmp_path / "m.pkl"
    with pytest.raises(CheckpointError, match="does not match"):
        download(server, dest, expected_sha256="0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "m.pkl.part").exists()


def test_recorded_sha_detects_later_corruption(server, tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    entry = SourceEntry(name="fake", family="stylegan2", url=server, format="nvidia-pkl", resolution=64, source_text="photo",
                        layers=6, filename="fake.pkl")
    path, digest = ensure_source(entry, progress=False)
    assert path == tmp_path / "home" / "models" / "fake.pkl" and digest == sha256_file(path)
    assert ensure_source(entry, progress=False)[1] == digest  # second use: verified against the record
    with open(path, "r+b") as fh:
        fh.write(b"X")
    with pytest.raises(CheckpointError, match="corrupt"):
        ensure_source(entry, progress=False)


def test_offline_error_names_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    url = "http://127.0.0.1:9/nothing.pkl"  # discard port: connection refused, never leaves the machine
    entry = SourceEntry(name="gone", family="stylegan2", url=url, format="nvidia-pkl", resolution=64, source_text="photo",
                        layers=6, filename="gone.pkl")
    with pytest.raises(WeightsNotFoundError) as e:
        ensure_source(entry, progress=False)
    assert url in str(e.value) and str(tmp_path / "home" / "models" / "gone.pkl") in str(e.value)
    monkeypatch.setenv("IPL_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="place it at exactly"):
        ensure_source(entry, progress=False)


def test_verify_passes_and_fails(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert verify(p, hashlib.sha256(b"abc").hexdigest()) == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(CheckpointError):
        verify(p, "1" * 64)
