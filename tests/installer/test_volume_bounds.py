"""A bomb, a lying server or a full volume never leaves the shared volume full.

Each case installs onto a real 48 MiB filesystem (``small_volume``: a tmpfs mounted for the
test) from a real HTTP server on loopback, and checks the named reason and that the volume's
free space is back to what it was - so every other install can still proceed.

Before: a 0.5 MB zip of 512 MiB of zeros, and a server that declares 10 bytes and streams
100 MiB, both ended in ``InternalError`` (ENOSPC) with the partial bytes kept in staging as
"resumable", and every later install was refused ``InsufficientSpace``.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from lorafleet_serving.installer import InstallRequest, install
from lorafleet_serving.installer.archive import UnpackBudget
from lorafleet_serving.installer.errors import InstallError

from tests.support.hub import free_port

pytestmark = pytest.mark.integration

MIB = 1 << 20
CONFIG = '{"peft_type": "LORA", "r": 8}'
STREAM_BYTES = 100 * MIB  # what the lying servers would send: twice the volume


class _Handler(BaseHTTPRequestHandler):
    """Routes of ``server.routes``: ``bytes`` (honest file) or ``"liar"`` / ``"nosize"``.

    ``liar``: HEAD says ``Content-Length: 10``; GET streams :data:`STREAM_BYTES` without a
    length. ``nosize``: HEAD is refused (405); GET streams the same. Bytes sent per path are
    counted in ``server.sent`` (the client stops reading: sending fails early).
    """

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
        elif route == "nosize":
            self.send_error(405)
        else:
            self.send_response(200)
            self.send_header("Content-Length", "10" if route == "liar" else str(len(route)))
            self.end_headers()

    def do_GET(self):
        path = self.path.split("?")[0]
        route = self.server.routes.get(path)
        if route is None:
            self.send_error(404)
            return
        self.send_response(200)
        if isinstance(route, bytes):
            self.send_header("Content-Length", str(len(route)))
            self.end_headers()
            self.wfile.write(route)
            return
        self.end_headers()  # no length: the body ends when the connection closes
        chunk = b"\0" * MIB
        try:
            while self.server.sent.get(path, 0) < STREAM_BYTES:
                self.wfile.write(chunk)
                self.server.sent[path] = self.server.sent.get(path, 0) + len(chunk)
        except OSError:  # the installer hung up
            pass


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    server.routes, server.sent = {}, {}
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """A zip of about 0.5 MB holding an adapter config and 512 MiB of zeros."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("adapter_config.json", CONFIG)
        with zf.open("adapter_model.safetensors", "w", force_zip64=True) as member:
            zeros = b"\0" * MIB
            for _ in range(512):
                member.write(zeros)
    return buf.getvalue()


def _adapter(dest: Path, source: str, base: Path, name: str = "topic", **kw) -> dict:
    return install(
        InstallRequest(
            "adapter", namespace="ml", name=name, source=source, dest=dest, base_path=base, **kw
        )
    )


def _assert_volume_restored(volume: Path, free_before: int, name: str) -> None:
    assert shutil.disk_usage(volume).free == free_before
    assert not (volume / ".staging" / "ml" / "adapters" / name).exists()
    assert not (volume / "ml").exists()


def _assert_still_usable(volume: Path, bert_adapter: Path, installed_bert: Path) -> None:
    ok = _adapter(volume, f"file://{bert_adapter}", installed_bert, name="after")
    assert ok["ok"], ok  # before: InsufficientSpace until someone cleaned the staging


def test_zip_bomb_is_archive_too_large_and_the_volume_is_freed(
    small_volume, web, zip_bomb, bert_adapter, installed_bert
):
    assert len(zip_bomb) < MIB
    web.routes["/bomb.zip"] = zip_bomb
    free_before = shutil.disk_usage(small_volume).free
    report = _adapter(small_volume, f"{web.url}/bomb.zip", installed_bert, name="bomb")
    assert report["reason"] == "ArchiveTooLarge", report
    assert f"unpacks to {512 * MIB + len(CONFIG)} bytes" in report["message"], report
    assert "the volume can take" in report["message"], report
    _assert_volume_restored(small_volume, free_before, "bomb")
    _assert_still_usable(small_volume, bert_adapter, installed_bert)


def test_server_sending_past_the_declared_size_is_stopped_at_once(
    small_volume, web, bert_adapter, installed_bert
):
    web.routes["/liar/adapter_model.safetensors"] = "liar"
    free_before = shutil.disk_usage(small_volume).free
    report = _adapter(
        small_volume, f"{web.url}/liar/adapter_model.safetensors", installed_bert, name="liar"
    )
    assert report["reason"] == "SizeMismatch", report
    assert "adapter_model.safetensors" in report["message"], report
    assert "declared 10 bytes" in report["message"], report
    assert web.sent["/liar/adapter_model.safetensors"] < STREAM_BYTES  # hung up, not drained
    _assert_volume_restored(small_volume, free_before, "liar")
    _assert_still_usable(small_volume, bert_adapter, installed_bert)


def test_download_of_unknown_size_outgrowing_the_volume_is_insufficient_space(
    small_volume, web, bert_adapter, installed_bert
):
    web.routes["/nosize/adapter_model.safetensors"] = "nosize"
    free_before = shutil.disk_usage(small_volume).free
    report = _adapter(
        small_volume, f"{web.url}/nosize/adapter_model.safetensors", installed_bert, name="big"
    )
    assert report["reason"] == "InsufficientSpace", report
    assert "declared no size" in report["message"], report
    _assert_volume_restored(small_volume, free_before, "big")
    _assert_still_usable(small_volume, bert_adapter, installed_bert)


def test_volume_filling_up_while_converting_is_insufficient_space(
    small_volume, tmp_path, bert_adapter, installed_bert
):
    """The pickle fits (26 MiB of 48), its safetensors copy does not: a real ENOSPC."""
    import torch

    src = tmp_path / "bin-adapter"
    src.mkdir()
    shutil.copy(bert_adapter / "adapter_config.json", src)
    state = {"base_model.model.x.lora_A.weight": torch.zeros(26 * MIB // 4)}
    torch.save(state, src / "adapter_model.bin")
    free_before = shutil.disk_usage(small_volume).free
    report = _adapter(small_volume, f"file://{src}", installed_bert, name="full")
    assert report["reason"] == "InsufficientSpace", report  # before: InternalError, kept
    assert "ran out of space" in report["message"], report
    assert "staged files were removed" in report["message"], report
    _assert_volume_restored(small_volume, free_before, "full")
    _assert_still_usable(small_volume, bert_adapter, installed_bert)


def test_configured_bound_refuses_a_tar_before_unpacking(tmp_path, web, installed_bert):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"\0" * (3 * MIB)
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    web.routes["/big.tar.gz"] = buf.getvalue()
    report = _adapter(tmp_path, f"{web.url}/big.tar.gz", installed_bert, max_unpacked_bytes=MIB)
    assert report["reason"] == "ArchiveTooLarge", report
    assert f"--max-unpacked-bytes {MIB}" in report["message"], report
    assert not (tmp_path / "ml").exists()
    assert not any((tmp_path / ".staging").rglob("*.safetensors"))


def test_unpacking_stops_before_the_first_byte_past_the_bound(tmp_path):
    """Headers may lie: the bytes really written are counted, before each chunk is written."""
    budget = UnpackBudget(2 * MIB + 5, "a.zip", "test bound")
    out = tmp_path / "member"
    with out.open("wb") as dst:
        budget.copy(io.BytesIO(b"x" * MIB), dst, "first")
        with pytest.raises(InstallError) as exc:
            budget.copy(io.BytesIO(b"y" * (2 * MIB)), dst, "second\x1b[31m")
    assert exc.value.reason == "ArchiveTooLarge"
    assert "'second\\x1b[31m'" in exc.value.message  # named, escaped
    assert out.stat().st_size <= 2 * MIB + 5
    assert budget.written == out.stat().st_size


def test_corrupt_archive_is_invalid_source_not_internal_error(tmp_path, web, installed_bert):
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_config.json", "{}" * 5000)
    web.routes["/broken.zip"] = good.getvalue()[:-30]  # cut short: no central directory
    report = _adapter(tmp_path, f"{web.url}/broken.zip", installed_bert)
    assert report["reason"] == "InvalidSource", report
    assert "not a readable zip archive" in report["message"], report
