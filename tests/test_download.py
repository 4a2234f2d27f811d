"""Downloads from a local HTTP server (127.0.0.1 only): resume with Range, every reply checked (Content-Length,
Content-Range, a .part that does not fit), size and SHA-256 record and check, IPL_MIRROR, offline error, and the
check of a Hugging Face cache snapshot against the hub's hashes."""
import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ipl.core.errors import CheckpointError, WeightsNotFoundError
from ipl.download import (OVERLAP, download, ensure_source, recorded_sha256, sha256_file, verify,
                          verify_hub_snapshot)
from ipl.registry import SourceEntry, get_source

PAYLOAD = bytes(range(256)) * 4000 + b"tail"  # ~1 MB, several chunks
N = len(PAYLOAD)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path. `mode` picks a misbehaviour; every request is logged as (path, Range)."""

    mode = "good"
    seen: list = []
    timeout = 10  # a stuck client cannot hold the server

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        Handler.seen.append((self.path, rng))
        mode = Handler.mode
        if mode == "never-length" or (mode == "no-length-once" and not rng):
            # (a) no Content-Length, the connection closes after half the file (HTTP/1.0: the body ends there)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD[: N // 2])
            return
        if not rng:
            self.send_response(200)
            self.send_header("Content-Length", str(N))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            return
        start = int(rng.split("=")[1].split("-")[0])
        if start >= N:
            self.send_response(416)
            if mode != "416-bare":
                self.send_header("Content-Range", f"bytes */{N}")
            self.end_headers()
            return
        if mode == "wrong-start":  # (b) a 206 that does not start where it was asked to
            start = 0
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{N - 1}/{N}")
        self.send_header("Content-Length", str(N - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def base():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    Handler.mode, Handler.seen = "good", []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


@pytest.fixture()
def server(base):
    return base + "/model.pkl"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("IPL_MIRROR", "IPL_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def ranges():
    return [r for _, r in Handler.seen]


def _entry(url, **kw):
    return SourceEntry(name="fake", family="stylegan2", url=url, format="nvidia-pkl", resolution=64,
                       source_text="photo", layers=6, filename="fake.pkl", **kw)


def test_fresh_download_records_sha(server, tmp_path):
    dest = tmp_path / "m.pkl"
    download(server, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert recorded_sha256(dest) == SHA
    assert not (tmp_path / "m.pkl.part").exists()


def test_resume_partial_file(server, tmp_path):
    dest = tmp_path / "m.pkl"
    (tmp_path / "m.pkl.part").write_bytes(PAYLOAD[:300_001])
    download(server, dest, expected_sha256=SHA, progress=False)
    assert ranges() == [f"bytes={300_001 - OVERLAP}-"]  # resumes a little early: the overlap is compared
    assert dest.read_bytes() == PAYLOAD


def test_wrong_sha_is_refused_and_part_removed(server, tmp_path):
    dest = tmp_path / "m.pkl"
    with pytest.raises(CheckpointError, match="does not match.*deleted"):
        download(server, dest, expected_sha256="0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "m.pkl.part").exists()


# (a) a reply without Content-Length that ends early ---------------------------------------------------------------

def test_a_no_length_is_confirmed_by_a_range_request(server, tmp_path):
    Handler.mode = "no-length-once"
    dest = download(server, tmp_path / "m.pkl", progress=False)
    assert dest.read_bytes() == PAYLOAD and recorded_sha256(dest) == SHA  # the truncated half was not recorded
    assert ranges() == [None, f"bytes={N // 2 - OVERLAP}-"]


def test_a_no_length_never_confirmed_is_refused(server, tmp_path):
    Handler.mode = "never-length"
    dest = tmp_path / "m.pkl"
    with pytest.raises(WeightsNotFoundError, match="without saying how long the file is"):
        download(server, dest, progress=False)
    assert not dest.exists() and recorded_sha256(dest) is None
    assert (tmp_path / "m.pkl.part").stat().st_size == N // 2  # kept, not recorded as good


def test_a_no_length_with_known_size_resumes(server, tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    Handler.mode = "no-length-once"
    path, digest = ensure_source(_entry(server, size=N), progress=False)
    assert path.read_bytes() == PAYLOAD and digest == SHA


# (b) a 206 whose Content-Range does not start at the requested byte -----------------------------------------------

def test_b_206_at_the_wrong_offset_restarts_from_zero(server, tmp_path, capsys):
    Handler.mode = "wrong-start"
    (tmp_path / "m.pkl.part").write_bytes(PAYLOAD[:500_000])
    dest = download(server, tmp_path / "m.pkl", progress=False)
    assert dest.read_bytes() == PAYLOAD  # never appended
    assert ranges() == [f"bytes={500_000 - OVERLAP}-", None]
    assert "sent bytes from 0" in capsys.readouterr().err


# (c) a .part longer than the remote file --------------------------------------------------------------------------

@pytest.mark.parametrize("extra,mode", [(OVERLAP + 1000, "good"), (OVERLAP + 1000, "416-bare"), (100, "good")])
def test_c_part_longer_than_the_file_is_dropped(server, tmp_path, capsys, extra, mode):
    Handler.mode = mode
    (tmp_path / "m.pkl.part").write_bytes(PAYLOAD + b"G" * extra)  # garbage tail
    dest = download(server, tmp_path / "m.pkl", progress=False)
    assert dest.read_bytes() == PAYLOAD and recorded_sha256(dest) == SHA
    assert ranges()[-1] is None  # started again from zero
    err = capsys.readouterr().err
    assert "starting m.pkl again from zero" in err
    if mode == "good":
        assert f"longer than the server's file ({N} bytes)" in err


def test_c_part_longer_than_the_registry_size(server, tmp_path):
    (tmp_path / "m.pkl.part").write_bytes(PAYLOAD + b"G")
    dest = download(server, tmp_path / "m.pkl", expected_size=N, progress=False)
    assert dest.read_bytes() == PAYLOAD and ranges() == [None]  # dropped before any request


# (d) a corrupt .part ----------------------------------------------------------------------------------------------

def test_d_corrupt_part_tail_is_detected_and_restarted(server, tmp_path, capsys):
    bad = bytearray(PAYLOAD[:600_000])
    bad[-10:] = b"X" * 10
    (tmp_path / "m.pkl.part").write_bytes(bytes(bad))
    dest = download(server, tmp_path / "m.pkl", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert ranges() == [f"bytes={600_000 - OVERLAP}-", None]
    assert "differ from the server's" in capsys.readouterr().err


def test_d_corrupt_part_caught_by_the_hash_is_fetched_again(server, tmp_path, capsys):
    bad = bytearray(PAYLOAD[:600_000])
    bad[:10] = b"X" * 10  # before the overlap: only a known hash can see it
    (tmp_path / "m.pkl.part").write_bytes(bytes(bad))
    dest = download(server, tmp_path / "m.pkl", expected_sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert ranges() == [f"bytes={600_000 - OVERLAP}-", None]
    assert "wrong SHA-256" in capsys.readouterr().err


# sizes ------------------------------------------------------------------------------------------------------------

def test_size_mismatch_deletes_and_says_so(server, tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    says = f"the server says the file is {N} bytes, expected {N + 1} bytes.*deleted"
    with pytest.raises(CheckpointError, match=says):
        ensure_source(_entry(server, size=N + 1), progress=False)
    assert list((tmp_path / "home" / "models").iterdir()) == []


def test_cached_file_of_the_wrong_size_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    path, _ = ensure_source(_entry(server, size=N), progress=False)
    assert ensure_source(_entry(server, size=N), progress=False)[0] == path
    with open(path, "ab") as fh:
        fh.write(b"!")
    with pytest.raises(CheckpointError, match=f"is {N + 1} bytes, but source 'fake' is {N} bytes"):
        ensure_source(_entry(server, size=N), progress=False)


def test_registry_sizes_are_none_or_positive():
    from ipl.registry import REGISTRY

    assert all(e.size is None or (isinstance(e.size, int) and e.size > 0) for e in REGISTRY.values())
    assert "size" in get_source("ffhq").to_dict()


# IPL_MIRROR -------------------------------------------------------------------------------------------------------

def test_mirror_serves_a_registry_entry(base, tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IPL_MIRROR", base + "/lab/models/")
    path, digest = ensure_source(get_source("ffhq"), progress=False)
    assert path == tmp_path / "home" / "models" / "ffhq.pkl"
    assert path.read_bytes() == PAYLOAD and digest == SHA == recorded_sha256(path)
    assert Handler.seen == [("/lab/models/ffhq.pkl", None)]


def test_mirror_file_url(tmp_path, monkeypatch):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "ffhq.pkl").write_bytes(PAYLOAD)
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IPL_MIRROR", (tmp_path / "lab").as_uri())
    path, digest = ensure_source(get_source("ffhq"), progress=False)
    assert path.read_bytes() == PAYLOAD and digest == SHA


def test_mirror_offline_error_names_the_mirror_url(tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IPL_MIRROR", "http://127.0.0.1:9/lab")  # discard port: refused
    with pytest.raises(WeightsNotFoundError, match="http://127.0.0.1:9/lab/ffhq.pkl"):
        ensure_source(get_source("ffhq"), progress=False)


# the recorded SHA-256, offline ------------------------------------------------------------------------------------

def test_recorded_sha_detects_later_corruption(server, tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    entry = _entry(server)
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


# a Hugging Face cache snapshot --------------------------------------------------------------------------------------

def _hub_snapshot(root, files):
    """A hub-cache layout: blobs named by the hub's etag (SHA-256 for LFS files, git blob SHA-1 for small
    ones), snapshots/<commit>/<path> symlinks to them."""
    snap = root / "snapshots" / ("c" * 40)
    (root / "blobs").mkdir(parents=True)
    for rel, (data, lfs) in files.items():
        etag = (hashlib.sha256(data).hexdigest() if lfs
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (root / "blobs" / etag).write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "blobs" / etag, link.parent))
    return snap


def test_hub_snapshot_verified_and_bad_blob_deleted(tmp_path):
    snap = _hub_snapshot(tmp_path / "models--google--ddpm", {
        "unet/diffusion_pytorch_model.safetensors": (PAYLOAD, True),
        "unet/config.json": (b'{"sample_size": 256}', False),
        "scheduler/scheduler_config.json": (b"{}", False)})
    assert verify_hub_snapshot(snap) == 3
    weights = snap / "unet" / "diffusion_pytorch_model.safetensors"
    blob = weights.resolve()
    with open(blob, "r+b") as fh:
        fh.write(b"XX")
    with pytest.raises(CheckpointError, match="were deleted .*diffusion_pytorch_model.safetensors: hub hash"):
        verify_hub_snapshot(snap)
    assert not blob.exists() and not os.path.lexists(weights)
    assert (snap / "unet" / "config.json").is_file()  # the good ones stay


def test_hub_snapshot_with_the_shared_xet_store(tmp_path):
    """huggingface_hub >= 2.x may link blobs/<sha256> on to a cache-wide store file named by its Xet hash (not
    a SHA-256 of the content): the hash to check is the first link's name, not the last one's."""
    repo = tmp_path / "hub" / "models--google--ddpm"
    snap = _hub_snapshot(repo, {"unet/diffusion_pytorch_model.safetensors": (PAYLOAD, True)})
    blob = repo / "blobs" / SHA
    store = tmp_path / "hub" / "blobs" / "ab" / ("ab" + "0" * 62)
    store.parent.mkdir(parents=True)
    blob.rename(store)
    blob.symlink_to(os.path.relpath(store, blob.parent))
    assert verify_hub_snapshot(snap) == 1 and store.is_file()
    store.write_bytes(PAYLOAD[:-1] + b"?")
    with pytest.raises(CheckpointError, match=f"hub hash {SHA}"):
        verify_hub_snapshot(snap)
    assert not store.exists() and not os.path.lexists(blob)


def test_a_fresh_hub_download_is_checked_against_the_hub_hashes(tmp_path, monkeypatch):
    """The diffusion family checks what snapshot_download fetched (a cache hit is taken as it is)."""
    import huggingface_hub

    from ipl.generators import diffusion

    snap = _hub_snapshot(tmp_path / "models--google--ddpm", {"unet/config.json": (b'{"sample_size": 256}', False)})
    (snap / "unet" / "config.json").resolve().write_bytes(b'{"sample_size": 512}')  # corrupted in transit

    def fake_snapshot_download(repo_id, local_files_only=False, **kw):
        if local_files_only:
            raise OSError("not cached")
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("IPL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="do not match the hash the Hugging Face hub published"):
        diffusion._hub_folder("google/ddpm-ema-church-256", allow_download=True)
    assert not os.path.lexists(snap / "unet" / "config.json")
