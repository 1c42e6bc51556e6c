"""Secrets appear nowhere the installer or local mode writes.

A pre-signed https source (``?X-Amz-Signature=...&X-Amz-Security-Token=...``) served over real
TLS on loopback, a Hub mirror reached through ``HF_ENDPOINT=http://user:PASSWORD@...`` (olah),
and secret environment values (``HF_TOKEN``, ``HTTPS_BEARER_TOKEN``): installs that succeed and
installs that fail in the ways HTTP libraries print URLs (``for url: https://...?...`` and
``Max retries exceeded with url: /path?...``). Then every file written - report files,
``lorafleet.json`` and every other installed file, local mode's ``state.json`` and installer
logs - and every stream - the installer's stdout/stderr, what ``lorafleet up`` prints,
``lorafleet status`` (table and JSON) - is searched for each secret.

Before: the signature was in the report message, ``lorafleet status``, ``state.json`` and the
logs; the endpoint password was in ``lorafleet.json``.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import ssl
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from lorafleet_serving.installer.redaction import RedactingStream, public_url, redact

from tests.support.hub import free_port

pytestmark = pytest.mark.integration

SIGNATURE = "3f9aSIGNATUREc0ffee0123456789abcdef"
SESSION_TOKEN = "FwoGZXIvYXdzSESSIONTOKEN+abc/def=="
PASSWORD = "endpoint-Passw0rd-xyz"
HF_TOKEN = "hf_ENVTOKENnotlogged123"
BEARER = "bearer-ENVTOKEN-notlogged-456"
SECRETS = (SIGNATURE, SESSION_TOKEN, PASSWORD, HF_TOKEN, BEARER)


def _signed(base: str, path: str) -> str:
    from urllib.parse import quote

    return (
        f"{base}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Security-Token={quote(SESSION_TOKEN, safe='')}&X-Amz-Signature={SIGNATURE}"
    )


def _leaks(text: str) -> list[str]:
    from urllib.parse import quote

    return [s for s in SECRETS if s in text or quote(s, safe="") in text]


def _files_leaking(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        leaked = _leaks(path.read_bytes().decode("utf-8", errors="replace"))
        if leaked:
            found[str(path)] = leaked
    return found


class _Presigned(SimpleHTTPRequestHandler):
    """Static files that answer only with the right signature, like a pre-signed S3 URL.

    ``/bad/...`` answers 400 (an HTTP error the installer does not map).
    """

    def log_message(self, *args):
        pass

    def send_head(self):
        parts = urlsplit(self.path)
        if parts.path.startswith("/bad/"):
            self.send_error(400)
            return None
        if parse_qs(parts.query).get("X-Amz-Signature") != [SIGNATURE]:
            self.send_error(403)
            return None
        return super().send_head()


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory, bert_adapter):
    """An HTTPS server on 127.0.0.1 (self-signed; its certificate in ``ca``) with topic.tar.gz."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root = tmp_path_factory.mktemp("tls-site")
    certs = tmp_path_factory.mktemp("tls-certs")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (certs / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with tarfile.open(root / "topic.tar.gz", "w:gz") as tar:
        for p in sorted(bert_adapter.rglob("*")):
            tar.add(p, arcname=p.relative_to(bert_adapter).as_posix(), recursive=False)
    server = ThreadingHTTPServer(
        ("127.0.0.1", free_port()), partial(_Presigned, directory=str(root))
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", certs / "cert.pem"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def hub_repo(olah_hub, bert2):
    olah_hub.create_repo("acme/redact-bert", bert2)
    return "acme/redact-bert"


@pytest.fixture
def secret_env(monkeypatch, olah_hub, tls_site):
    """HF_ENDPOINT with a password, secret tokens and the TLS site's CA for every subprocess."""
    endpoint = olah_hub.endpoint.replace("http://", f"http://lorafleet:{PASSWORD}@")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("HTTPS_BEARER_TOKEN", BEARER)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_site[1]))
    return endpoint


def _closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


def _cli(
    tmp_path: Path, label: str, *args: str, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    report_file = tmp_path / f"{label}.report"
    proc = subprocess.run(
        [sys.executable, "-m", "lorafleet_serving.installer", *args, "--report-file",
         str(report_file)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300,
    )  # fmt: skip
    return proc, report_file


def test_installer_cli_writes_no_secret(tmp_path, secret_env, tls_site, installed_bert, hub_repo):
    site, _ca = tls_site
    dest = tmp_path / "dest"
    dest.mkdir()
    closed = f"https://127.0.0.1:{_closed_port()}"
    dead_hub = f"http://lorafleet:{PASSWORD}@127.0.0.1:{_closed_port()}"
    adapter = ["adapter", "--namespace", "ml", "--dest", str(dest), "--base-path",
               str(installed_bert)]  # fmt: skip
    runs = {
        "signed-ok": [*adapter, "--name", "ok", "--source", _signed(site, "/topic.tar.gz")],
        "signed-400": [*adapter, "--name", "bad", "--source", _signed(site, "/bad/t.tar.gz")],
        "signed-down": [*adapter, "--name", "down", "--timeout", "3",
                        "--source", _signed(closed, "/topic.tar.gz")],
        "hub-ok": ["base", "--namespace", "ml", "--name", "hub", "--dest", str(dest),
                   "--source", f"hf://{hub_repo}", "--task", "text-classification"],
    }  # fmt: skip
    outcomes = {}
    for label, args in runs.items():
        proc, report_file = _cli(tmp_path, label, *args)
        outcomes[label] = proc
        assert not _leaks(proc.stdout), (label, proc.stdout)
        assert not _leaks(proc.stderr), (label, proc.stderr)
        assert report_file.read_text().strip(), label
    hub_down, _ = _cli(
        tmp_path, "hub-down", "base", "--namespace", "ml", "--name", "hub2", "--dest", str(dest),
        "--source", f"hf://{hub_repo}", "--timeout", "3", env={"HF_ENDPOINT": dead_hub},
    )  # fmt: skip
    assert "lorafleet-install: Timeout" in hub_down.stderr, hub_down.stderr  # user name kept
    assert outcomes["signed-ok"].returncode == 0, outcomes["signed-ok"].stderr
    assert outcomes["hub-ok"].returncode == 0, outcomes["hub-ok"].stderr
    assert "InternalError" in outcomes["signed-400"].stderr  # for url: https://...?***
    assert "400 Client Error" in outcomes["signed-400"].stderr
    assert "Traceback" in outcomes["signed-400"].stderr  # the traceback is printed, redacted
    assert "Timeout" in outcomes["signed-down"].stderr
    assert "with url: /topic.tar.gz?***" in outcomes["signed-down"].stderr
    assert not _leaks(hub_down.stdout + hub_down.stderr)
    assert _files_leaking(tmp_path) == {}
    manifests = list(dest.rglob("lorafleet.json"))
    assert len(manifests) == 2  # the adapter and the hub base were installed
    hub_manifest = next(m for m in manifests if "basemodels" in str(m)).read_text()
    assert public_url(secret_env) in hub_manifest and "lorafleet:" not in hub_manifest


def test_local_mode_writes_no_secret(tmp_path, secret_env, tls_site, hub_repo, capsys):
    import yaml
    from lorafleet_operator.cli import main as lorafleet_main
    from lorafleet_operator.local.fleet import Fleet, Reporter
    from lorafleet_operator.local.manifests import load_manifests
    from lorafleet_operator.local.serve_rest import ServeREST

    site, _ca = tls_site
    folder = tmp_path / "manifests"
    folder.mkdir()
    docs = [
        {"apiVersion": "lorafleet.io/v1alpha1", "kind": "BaseModel",
         "metadata": {"name": "hubbase"},
         "spec": {"source": {"uri": f"hf://{hub_repo}"}, "task": "text-classification",
                  "id2label": {"0": "neg", "1": "pos"}}},
        {"apiVersion": "lorafleet.io/v1alpha1", "kind": "BaseModel",
         "metadata": {"name": "broken"},
         "spec": {"source": {"uri": _signed(site, "/bad/weights.tar.gz")},
                  "task": "text-classification"}},
        {"apiVersion": "lorafleet.io/v1alpha1", "kind": "LoraAdapter",
         "metadata": {"name": "signed"},
         "spec": {"baseModel": "hubbase", "source": {"uri": _signed(site, "/topic.tar.gz")}}},
    ]  # fmt: skip
    (folder / "all.yaml").write_text(yaml.safe_dump_all(docs))
    objects, _ = load_manifests(folder)
    lines: list[str] = []
    home = tmp_path / "home"
    fleet = Fleet(
        home,
        ServeREST(f"http://127.0.0.1:{_closed_port()}"),  # never called: installs only
        8123,
        Reporter(lines.append, lines.append),
        timeout_s=300,
    )
    fleet.objects = {o.key: o for o in objects}
    # what Fleet.apply does before it deploys: bases, then adapters over their bases
    base = fleet._install(fleet.objects["BaseModel/default/hubbase"], None)
    assert base is not None, lines
    assert fleet._install(fleet.objects["BaseModel/default/broken"], None) is None
    record = fleet._install(
        fleet.objects["LoraAdapter/default/signed"],
        {**base, "key": "BaseModel/default/hubbase"},
    )
    assert record is not None, lines
    broken = fleet.state.objects["BaseModel/default/broken"]
    assert broken["phase"] == "Failed" and broken["reason"] == "InternalError", broken
    assert "?***" in broken["message"], broken
    capsys.readouterr()
    assert lorafleet_main(["status", "--home", str(home)]) == 0
    assert lorafleet_main(["status", "--home", str(home), "-o", "json"]) == 0
    status = capsys.readouterr().out
    assert "InternalError" in status and "hubbase" in status
    assert not _leaks(status), status
    assert not _leaks("\n".join(lines)), lines
    assert sorted(p.name for p in (home / "logs").iterdir())  # logs were written
    assert _files_leaking(home) == {}


def test_redacting_stream_finds_a_secret_split_over_writes():
    out = io.StringIO()
    stream = RedactingStream(out, [SIGNATURE])
    stream.write("GET /x?X-Amz-Sig")
    stream.write(f"nature={SIGNATURE[:10]}")
    stream.write(f"{SIGNATURE[10:]} failed\nnext ")
    stream.write(f"line holds {SIGNATURE}")
    assert SIGNATURE not in out.getvalue()
    stream.flush()
    assert out.getvalue() == "GET /x?*** failed\nnext line holds ***"


def test_redact_covers_library_url_forms_and_userinfo(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"https://user:{PASSWORD}@mirror.example")
    text = redact(
        "HTTPSConnectionPool(host='h', port=443): Max retries exceeded with url: "
        f"/a.tar.gz?X-Amz-Signature={SIGNATURE} (Caused by ...); endpoint pw {PASSWORD}; "
        f"s3://b/k?versionId=v1; ftp://u:p4ss@host/x; quoted %3FX-Amz-Signature%3D{SIGNATURE}"
    )
    assert not _leaks(text) and "p4ss" not in text and "versionId" not in text, text
    assert "with url: /a.tar.gz?***" in text
    assert redact("is it installed? yes") == "is it installed? yes"  # prose stays
