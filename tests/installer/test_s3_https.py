"""S3 (moto server) and https (a loopback HTTP server with Range support) sources."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from lorafleet_serving.installer import InstallRequest, install

from tests.support.hub import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return s3_server


def _adapter(dest: Path, source: str, base: Path, **kw) -> dict:
    return install(
        InstallRequest(
            "adapter", namespace="ml", name="topic", source=source, dest=dest, base_path=base, **kw
        )
    )


def test_s3_prefix_is_a_folder_and_subfolders_are_kept(
    tmp_path, s3_env, bert_adapter, installed_bert
):
    s3_env.upload_folder("models", "m/adapter", bert_adapter)
    other = tmp_path / "old"
    other.mkdir()
    (other / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    s3_env.upload_folder("models", "m/adapter-old", other)
    s3_env.client().put_object(
        Bucket="models", Key="m/adapter/checkpoints/x.pt", Body=b"training leftovers"
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    report = _adapter(dest, "s3://models/m/adapter", installed_bert)
    assert report["ok"], report
    final = Path(report["path"])
    files = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    assert "checkpoints/x.pt" not in files  # a pickle by name: left out, listed
    assert "left out 1 pickle file(s): checkpoints/x.pt" in report["message"]
    assert not any("old" in f for f in files)
    assert {"adapter_config.json", "adapter_model.safetensors", "lorafleet.json"} <= set(files)
    manifest = json.loads((final / "lorafleet.json").read_text())
    assert [f["code"] for f in manifest["findings"]] == ["PickleLeftOut"]
    assert manifest["source"] == {
        "uri": "s3://models/m/adapter",
        "bucket": "models",
        "prefix": "m/adapter",
        "endpoint": s3_env.endpoint_url,
    }
    assert s3_env.secret_access_key not in (final / "lorafleet.json").read_text()
    assert final.name.startswith("sha256-")
    # the same bytes give the same revision folder: a re-run is a no-op
    again = _adapter(dest, "s3://models/m/adapter", installed_bert)
    assert again["path"] == report["path"] and "already installed" in again["message"]


def test_s3_missing_prefix_and_bucket_are_source_not_found(tmp_path, s3_env, installed_bert):
    s3_env.client().create_bucket(Bucket="empty-bucket")
    report = _adapter(tmp_path, "s3://empty-bucket/nothing/here", installed_bert)
    assert report["reason"] == "SourceNotFound"
    assert _adapter(tmp_path, "s3://no-such-bucket/x", installed_bert)["reason"] == "SourceNotFound"


def test_s3_etag_mismatch_is_checksum_mismatch(
    tmp_path, s3_env, bert_adapter, installed_bert, monkeypatch
):
    from lorafleet_serving.installer.sources import s3 as s3_mod

    s3_env.upload_folder("models", "corrupt/adapter", bert_adapter)
    real = s3_mod.S3Source._fetch

    def flip_a_byte(self, f, target, deadline):
        real(self, f, target, deadline)
        if f.path == "adapter_model.safetensors":
            data = bytearray(target.read_bytes())
            data[100] ^= 0xFF
            target.write_bytes(bytes(data))

    monkeypatch.setattr(s3_mod.S3Source, "_fetch", flip_a_byte)
    dest = tmp_path / "dest"
    dest.mkdir()
    report = _adapter(dest, "s3://models/corrupt/adapter", installed_bert)
    assert report["reason"] == "ChecksumMismatch"
    assert "adapter_model.safetensors" in report["message"] and "md5" in report["message"]
    assert not (dest / "ml" / "adapters").exists()


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support (206), quiet; records Range headers."""

    ranges_seen: list[str] = []

    def log_message(self, *args):
        pass

    def send_head(self):
        if (
            self.path.startswith("/private/")
            and self.headers.get("Authorization") != "Bearer s3cr3t-bearer"
        ):
            self.send_error(401 if "Authorization" not in self.headers else 403)
            return None
        rng = self.headers.get("Range")
        if rng:
            self.ranges_seen.append(rng)
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        start = int(rng.split("=")[1].split("-")[0])
        size = path.stat().st_size
        fh = path.open("rb")
        fh.seek(start)
        self.send_response(206)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        return fh


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    server = ThreadingHTTPServer(
        ("127.0.0.1", free_port()), partial(_RangeHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _tar_gz(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=p.relative_to(folder).as_posix(), recursive=False)
    return out


def test_https_archive_is_unpacked_and_sha256_checked(
    tmp_path, http_root, bert_adapter, installed_bert
):
    root, url = http_root
    archive = _tar_gz(bert_adapter, root / "topic.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    dest.mkdir()
    report = _adapter(dest, f"{url}/topic.tar.gz", installed_bert, sha256=digest)
    assert report["ok"], report
    assert (Path(report["path"]) / "adapter_model.safetensors").is_file()
    other = tmp_path / "other"
    other.mkdir()
    bad = _adapter(other, f"{url}/topic.tar.gz", installed_bert, sha256="0" * 64)
    assert bad["reason"] == "ChecksumMismatch" and "sha256" in bad["message"]
    assert not (other / "ml" / "adapters").exists()


def test_https_zip_with_links_or_dotdot_is_refused(tmp_path, http_root, installed_bert):
    root, url = http_root
    with zipfile.ZipFile(root / "evil.zip", "w") as zf:
        zf.writestr("adapter_config.json", "{}")
        zf.writestr("../../escape.txt", "x")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    (root / "link.tar").write_bytes(buf.getvalue())
    for name, needle in (("evil.zip", "escapes"), ("link.tar", "link")):
        dest = tmp_path / name
        dest.mkdir()
        report = _adapter(dest, f"{url}/{name}", installed_bert)
        assert report["reason"] == "InvalidSource", report
        assert needle in report["message"]
        assert not (dest / "ml" / "adapters").exists()
    assert not (tmp_path.parent / "escape.txt").exists()


def test_https_single_file_resumes_a_partial_download(tmp_path, http_root, bert2):
    root, url = http_root
    shutil.copy(bert2 / "model.safetensors", root / "weights.safetensors")
    data = (root / "weights.safetensors").read_bytes()
    from lorafleet_serving.installer.deadline import Deadline
    from lorafleet_serving.installer.sources import open_source

    src = open_source(f"{url}/weights.safetensors", sha256=hashlib.sha256(data).hexdigest())
    listing = src.list(Deadline(30))
    files = tmp_path / "staging" / "files"
    files.mkdir(parents=True)
    part = tmp_path / "staging" / "download" / "weights.safetensors.part"
    part.parent.mkdir()
    part.write_bytes(data[: len(data) // 2])  # a killed earlier run
    _RangeHandler.ranges_seen.clear()
    digests = src.download(listing, files, Deadline(30))
    assert _RangeHandler.ranges_seen == [f"bytes={len(data) // 2}-"]
    assert (files / "weights.safetensors").read_bytes() == data
    assert digests["weights.safetensors"].sha256 == hashlib.sha256(data).hexdigest()


def test_https_bearer_token_from_environment(
    tmp_path, http_root, bert_adapter, installed_bert, monkeypatch
):
    root, url = http_root
    (root / "private").mkdir(exist_ok=True)
    _tar_gz(bert_adapter, root / "private" / "topic.tar.gz")
    monkeypatch.delenv("HTTPS_BEARER_TOKEN", raising=False)
    (tmp_path / "a").mkdir()
    report = _adapter(tmp_path / "a", f"{url}/private/topic.tar.gz", installed_bert)
    assert report["reason"] == "Unauthorized"
    monkeypatch.setenv("HTTPS_BEARER_TOKEN", "wrong-token-value")
    (tmp_path / "b").mkdir()
    wrong = _adapter(tmp_path / "b", f"{url}/private/topic.tar.gz", installed_bert)
    assert wrong["reason"] == "Unauthorized" and "wrong-token-value" not in json.dumps(wrong)
    monkeypatch.setenv("HTTPS_BEARER_TOKEN", "s3cr3t-bearer")
    (tmp_path / "c").mkdir()
    ok = _adapter(tmp_path / "c", f"{url}/private/topic.tar.gz", installed_bert)
    assert ok["ok"], ok
    assert "s3cr3t-bearer" not in (Path(ok["path"]) / "lorafleet.json").read_text()
