"""Pickles never kept on the volume; file names with control characters refused, escaped.

Before: ``training_args.bin``, ``optimizer.pt``, ``last.ckpt`` and an ``adapter_model.bin``
beside ``adapter_model.safetensors`` were installed untouched (never loaded, but left where the
next tool may ``torch.load`` them), a ``pytorch_model.bin`` beside ``model.safetensors`` was
converted over it, and archive members named with a newline, CR or an ANSI escape were accepted.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from lorafleet_serving.installer import InstallRequest, install
from lorafleet_serving.installer.pickles import is_pickle
from safetensors.torch import load_file

from tests.support.hub import free_port

pytestmark = pytest.mark.integration

CONTROL_NAMES = ["evil\x1b[31m.json", "two\nlines.json", "back\rwards.json", "rtl\u202ejson.txt"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    root = tmp_path_factory.mktemp("www-names")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _assert_refused_naming(report: dict, name: str) -> None:
    assert report["ok"] is False and report["reason"] == "InvalidSource", report
    assert repr(name) in report["message"], report  # named, escaped
    assert not any(c in report["message"] for c in "\x1b\n\r\u202e"), report  # never raw


def test_training_pickles_are_left_out_of_an_adapter_and_listed(
    tmp_path, bert_adapter, installed_bert
):
    src = tmp_path / "src"
    shutil.copytree(bert_adapter, src)
    tensors = load_file(str(src / "adapter_model.safetensors"))
    torch.save({"learning_rate": torch.tensor(0.1)}, src / "training_args.bin")
    torch.save({"state": {}, "param_groups": []}, src / "optimizer.pt")
    torch.save({"epoch": 3}, src / "last.ckpt")
    torch.save(tensors, src / "adapter_model.bin")  # a second copy of the weights, pickled
    (src / "notes.dat").write_bytes(pickle.dumps({"a": 1}, protocol=4))  # pickle by content
    (src / "state").mkdir()
    torch.save({"rng": torch.zeros(2)}, src / "state" / "rng_state.pth")
    dest = tmp_path / "dest"
    dest.mkdir()
    report = install(InstallRequest(
        "adapter", namespace="ml", name="topic", source=f"file://{src}", dest=dest,
        base_path=installed_bert,
    ))  # fmt: skip
    assert report["ok"], report
    final = Path(report["path"])
    left_out = [
        "adapter_model.bin", "last.ckpt", "notes.dat", "optimizer.pt", "state/rng_state.pth",
        "training_args.bin",
    ]  # fmt: skip
    for rel in left_out:
        assert not (final / rel).exists(), rel
    assert f"left out {len(left_out)} pickle file(s): {', '.join(left_out)}" in report["message"]
    manifest = json.loads((final / "lorafleet.json").read_text())
    finding = [f for f in manifest["findings"] if f["code"] == "PickleLeftOut"]
    assert len(finding) == 1 and all(rel in finding[0]["message"] for rel in left_out)
    assert not {f["path"] for f in manifest["files"]} & set(left_out)
    assert _sha256(final / "adapter_model.safetensors") == _sha256(
        bert_adapter / "adapter_model.safetensors"
    )  # the safetensors weights are the ones kept, untouched
    assert not any(is_pickle(p) for p in final.rglob("*") if p.is_file())


def test_pickled_weights_beside_safetensors_are_not_converted_over_them(tmp_path, bert2):
    src = tmp_path / "src"
    shutil.copytree(bert2, src)
    zeros = {k: torch.zeros_like(v) for k, v in load_file(str(src / "model.safetensors")).items()}
    torch.save(zeros, src / "pytorch_model.bin")
    dest = tmp_path / "dest"
    dest.mkdir()
    report = install(InstallRequest(
        "base", namespace="ml", name="bert", source=f"file://{src}", dest=dest,
        task="text-classification", num_labels=2,
    ))  # fmt: skip
    assert report["ok"], report
    final = Path(report["path"])
    assert _sha256(final / "model.safetensors") == _sha256(bert2 / "model.safetensors")
    assert not (final / "pytorch_model.bin").exists()
    assert "left out 1 pickle file(s): pytorch_model.bin" in report["message"]


def test_pickle_detection_by_name_and_content(tmp_path):
    cases = {
        "a.pt": b"not even a pickle",  # by name: whatever the next tool makes of it
        "weights.bin": None,  # torch.save zip format
        "legacy.bin": None,  # torch.save legacy format (pickle protocol 2)
        "plain.bin": b"\x00\x01raw bytes that are no pickle",
        "config.json": b'{"a": 1}',
        "model.safetensors": b"\x80\x02" + b"\x00" * 40,  # header length 640: never sniffed
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.bin")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    got = {name: is_pickle(tmp_path / name) for name in cases}
    assert got == {
        "a.pt": True,
        "weights.bin": True,
        "legacy.bin": True,
        "plain.bin": False,
        "config.json": False,
        "model.safetensors": False,
    }


@pytest.mark.parametrize("name", CONTROL_NAMES)
def test_archive_member_with_control_characters_is_refused(tmp_path, www, installed_bert, name):
    root, url = www
    slug = hashlib.sha256(name.encode()).hexdigest()[:8]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member in ("adapter_config.json", name):
            info = tarfile.TarInfo(member)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    (root / f"{slug}.tar").write_bytes(buf.getvalue())
    with zipfile.ZipFile(root / f"{slug}.zip", "w") as zf:
        zf.writestr("adapter_config.json", "{}")
        zf.writestr(name, "{}")
    for archive in (f"{slug}.tar", f"{slug}.zip"):
        dest = tmp_path / archive
        dest.mkdir()
        report = install(InstallRequest(
            "adapter", namespace="ml", name="evil", source=f"{url}/{archive}", dest=dest,
            base_path=installed_bert,
        ))  # fmt: skip
        _assert_refused_naming(report, name)
        assert not (dest / "ml").exists()
        assert not [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_local_file_with_control_characters_is_refused(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "src"
    shutil.copytree(bert_adapter, src)
    (src / CONTROL_NAMES[1]).write_text("{}")
    report = install(InstallRequest(
        "adapter", namespace="ml", name="evil", source=f"file://{src}", dest=tmp_path,
        base_path=installed_bert,
    ))  # fmt: skip
    _assert_refused_naming(report, CONTROL_NAMES[1])


def test_s3_key_with_control_characters_is_refused(
    tmp_path, s3_server, monkeypatch, bert_adapter, installed_bert
):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    s3_server.upload_folder("names", "evil", bert_adapter)
    s3_server.client().put_object(Bucket="names", Key=f"evil/{CONTROL_NAMES[0]}", Body=b"{}")
    report = install(InstallRequest(
        "adapter", namespace="ml", name="evil", source="s3://names/evil", dest=tmp_path,
        base_path=installed_bert,
    ))  # fmt: skip
    _assert_refused_naming(report, CONTROL_NAMES[0])


def test_hub_file_with_control_characters_is_refused(
    tmp_path, olah_hub, monkeypatch, bert_adapter, installed_bert
):
    monkeypatch.setenv("HF_ENDPOINT", olah_hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    src = tmp_path / "src"
    shutil.copytree(bert_adapter, src)
    (src / CONTROL_NAMES[2]).write_text("{}")
    olah_hub.create_repo("acme/evil-names", src)
    dest = tmp_path / "dest"
    dest.mkdir()
    report = install(InstallRequest(
        "adapter", namespace="ml", name="evil", source="hf://acme/evil-names", dest=dest,
        base_path=installed_bert,
    ))  # fmt: skip
    _assert_refused_naming(report, CONTROL_NAMES[2])


def test_url_naming_a_file_with_control_characters_is_refused(tmp_path, installed_bert):
    report = install(InstallRequest(
        "adapter", namespace="ml", name="evil", source="https://example.invalid/a%0Ab.safetensors",
        dest=tmp_path, base_path=installed_bert,
    ))  # fmt: skip
    _assert_refused_naming(report, "a\nb.safetensors")
