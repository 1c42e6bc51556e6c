"""What a running ``lorafleet up`` exposes to other users of the machine (issue 12, local mode).

One real ``lorafleet up`` with its own Ray head serves a tiny classifier. Then, as another
user (uid 65534, ``nobody``) where that matters:

- the dashboard refuses job submission (``POST /api/jobs/``) without the token (401) and with a
  wrong one (403) -- ``curl`` run by ``runuser -u nobody``; the same curl as nobody *with* the
  token gets 200, so the refusals are the token check, not a network failure;
- the Ray client server (what ``ray.init("ray://127.0.0.1:<port>")`` talks to first: the
  ``RayletDriver/ClusterInfo`` PING) and the GCS refuse a process running as nobody with
  ``UNAUTHENTICATED``; the same process passes with the token; nobody cannot read the token file;
- no process of ``up``'s process tree listens on anything but loopback (read from the kernel
  through psutil: ``/proc/<pid>/net/tcp{,6}`` sockets mapped to the pids);
- the API answers 400 to a request whose ``Host`` names another host (DNS rebinding) and 200 to
  ``localhost:PORT``, ``127.0.0.1:PORT`` and ``[::1]:PORT``;
- the token file is 0600 in a 0700 folder and the token is in no process's command line (``ps``
  and every ``/proc/*/cmdline``), no environment block of ``up``'s processes, and no file of
  ``up``'s home (but the token file), log or Ray's session logs; it is removed when ``up`` stops.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from lorafleet_operator.local.ray_head import SECRETS_DIR, free_port
from lorafleet_operator.local.ray_token import TOKEN_FILE_NAME, read_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
NOBODY = 65534
APP = "guarded"

#: Run as root until the imports are done (the venv is under /root, which nobody cannot
#: enter), then as ``nobody``: three PINGs of the Ray client server and three GCS calls
#: (no token, a wrong token, the token read from stdin), then an attempt to read the token file.
PROBE = r"""
import json, os, sys
import grpc
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

client_addr, gcs_addr, token_file, uid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
token = sys.stdin.read().strip()
cases = {"none": None, "wrong": [("authorization", "Bearer not-the-token")],
         "token": [("authorization", "Bearer " + token)]}
ping = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
jobs = gcs_service_pb2.GetAllJobInfoRequest()
# Channels connect lazily, at the first call (made as nobody below).
calls = {}
for label, metadata in cases.items():
    client = ray_client_pb2_grpc.RayletDriverStub(grpc.insecure_channel(client_addr))
    gcs = gcs_service_pb2_grpc.JobInfoGcsServiceStub(grpc.insecure_channel(gcs_addr))
    calls["client/" + label] = (client.ClusterInfo, ping, metadata)
    calls["gcs/" + label] = (gcs.GetAllJobInfo, jobs, metadata)
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
out = {"uid": os.getuid(), "euid": os.geteuid()}
for name, (method, request, metadata) in calls.items():
    try:
        method(request, timeout=20, metadata=metadata)
        out[name] = "OK"
    except grpc.RpcError as exc:
        out[name] = exc.code().name
try:
    open(token_file).read()
    out["read_token_file"] = "read"
except OSError as exc:
    out["read_token_file"] = type(exc).__name__
print(json.dumps(out), flush=True)
os._exit(0)
"""


def _manifest(source: Path) -> dict:
    return {
        "apiVersion": "lorafleet.io/v1alpha1",
        "kind": "BaseModel",
        "metadata": {"name": APP},
        "spec": {
            "source": {"uri": f"file://{source}"},
            "task": "text-classification",
            "id2label": {"0": "negative", "1": "positive"},
        },
    }


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _curl_as_nobody(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    cmd = ["runuser", "-u", "nobody", "--", "curl", "-sS", "-m", "30", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: Path) -> Iterator[dict]:
    """A ``lorafleet up --no-watch`` with its own Ray head, serving one tiny classifier."""
    root = tmp_path_factory.mktemp("up-security")
    folder = root / "manifests"
    folder.mkdir()
    (folder / "base.yaml").write_text(yaml.safe_dump(_manifest(tiny_classifier)))
    home = root / "home"
    port = free_port()
    log = root / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(LORAFLEET, "up", "-f", str(folder), "--home", str(home), "--port", str(port)),
                *("--no-watch", "--num-cpus", "2", "--timeout", "300"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "COLUMNS": "200"},
        )
    info = {"proc": proc, "home": home, "port": port, "log": log}
    try:
        deadline = time.monotonic() + 600
        while "serving until Ctrl-C" not in log.read_text(errors="replace"):
            text = log.read_text(errors="replace")
            assert proc.poll() is None, f"lorafleet up exited ({proc.returncode}):\n{text}"
            assert time.monotonic() < deadline, f"lorafleet up is not serving:\n{text}"
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        info["ray_temp"] = Path(re.search(r"logs (/tmp/lfray[^/\s]+)/", text).group(1))
        info["dashboard"] = json.loads((home / "state.json").read_text())["dashboard"]
        info["token_file"] = home / SECRETS_DIR / TOKEN_FILE_NAME
        info["token"] = read_token(info["token_file"])
        procs = _tree(proc.pid)
        info["client_port"] = next(
            int(re.search(r"--port=(\d+)", " ".join(p.cmdline())).group(1))
            for p in procs
            if "ray.util.client.server" in p.cmdline()
        )
        (gcs,) = [p for p in procs if p.name() == "gcs_server"]
        info["gcs_port"] = next(
            c.laddr.port for c in gcs.connections("tcp") if c.status == "LISTEN"
        )
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_token_file_is_private(up: dict) -> None:
    token_file: Path = up["token_file"]
    file_stat, dir_stat = token_file.lstat(), token_file.parent.lstat()
    assert stat.S_ISREG(file_stat.st_mode) and stat.S_IMODE(file_stat.st_mode) == 0o600
    assert stat.S_ISDIR(dir_stat.st_mode) and stat.S_IMODE(dir_stat.st_mode) == 0o700
    assert file_stat.st_uid == dir_stat.st_uid == os.getuid()
    assert len(up["token"]) >= 40
    as_nobody = subprocess.run(
        ["runuser", "-u", "nobody", "--", "cat", str(token_file)], capture_output=True, text=True
    )
    assert as_nobody.returncode != 0 and "Permission denied" in as_nobody.stderr
    assert up["token"] not in as_nobody.stdout


def test_job_submission_by_another_user_is_refused(up: dict) -> None:
    url = f"{up['dashboard']}/api/jobs/"
    job = ["-X", "POST", "-H", "Content-Type: application/json", "-d", '{"entrypoint": "id"}']
    code = ["-o", "/dev/null", "-w", "%{http_code}"]
    assert _curl_as_nobody(*job, *code, url).stdout == "401"  # no token
    wrong = ["-H", "Authorization: Bearer not-the-token"]
    assert _curl_as_nobody(*job, *wrong, *code, url).stdout == "403"
    # The same user and curl with the token (a header read from stdin, not the command line)
    # get through: the refusals above were the token check. No job was created.
    listed = _curl_as_nobody("-H", "@-", url, stdin=f"Authorization: Bearer {up['token']}\n")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_ray_client_and_gcs_refuse_another_user_without_the_token(up: dict) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-c", PROBE),
            *(f"127.0.0.1:{up['client_port']}", f"127.0.0.1:{up['gcs_port']}"),
            *(str(up["token_file"]), str(NOBODY)),
        ],
        input=up["token"],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["uid"] == out["euid"] == NOBODY
    assert out["read_token_file"] == "PermissionError"
    for service in ("client", "gcs"):
        assert out[f"{service}/none"] == "UNAUTHENTICATED", out
        assert out[f"{service}/wrong"] == "UNAUTHENTICATED", out
        assert out[f"{service}/token"] == "OK", out  # reachable: refused for the token only


def test_no_process_of_up_listens_beyond_loopback(up: dict) -> None:
    listening: dict[tuple[str, int], str] = {}
    names = set()
    for proc in _tree(up["proc"].pid):
        try:
            names.add(proc.name())
            for conn in proc.connections("inet"):
                tcp_listen = conn.status == psutil.CONN_LISTEN
                udp_bound = conn.type == socket.SOCK_DGRAM and conn.laddr
                if tcp_listen or udp_bound:
                    listening[(conn.laddr.ip, conn.laddr.port)] = proc.name()
        except psutil.NoSuchProcess:
            continue
    exposed = {addr: name for addr, name in listening.items() if not _is_loopback(addr[0])}
    assert not exposed, f"listening beyond loopback: {exposed}"
    # The check saw the whole tree: dashboard, Serve proxy, client server, GCS, replicas.
    ports = {port for _, port in listening}
    dashboard_port = int(up["dashboard"].rsplit(":", 1)[1])
    assert {dashboard_port, up["port"], up["client_port"], up["gcs_port"]} <= ports
    assert {"gcs_server", "raylet"} <= names
    assert any("ServeReplica" in name for name in names), names
    assert len(listening) >= 10, listening


def test_api_answers_only_loopback_host_names(up: dict) -> None:
    port = up["port"]
    url = f"http://127.0.0.1:{port}/v1/models"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        resp = httpx.get(url, headers={"Host": host}, timeout=60)
        assert resp.status_code == 200, (host, resp.text)
        assert resp.json()["data"][0]["id"] == APP
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}"):
        resp = httpx.get(url, headers={"Host": host}, timeout=60)
        assert resp.status_code == 400, (host, resp.status_code, resp.text)
    classify = httpx.post(
        f"http://127.0.0.1:{port}/v1/classify",
        json={"model": APP, "input": ["hello"]},
        headers={"Host": "evil.example"},
        timeout=60,
    )
    assert classify.status_code == 400


def test_token_is_in_no_command_line_environment_log_or_state(up: dict) -> None:
    token = up["token"].encode()
    ps = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, check=True)
    assert len(ps.stdout.splitlines()) > 10 and token not in ps.stdout
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert token not in cmdline.read_bytes(), cmdline
        except OSError:
            continue  # the process ended
    # Ray's processes find the token through the file's path, never the token itself.
    with_path = 0
    for proc in _tree(up["proc"].pid):
        try:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        except OSError:
            continue
        assert token not in environ, proc.name()
        with_path += b"RAY_AUTH_TOKEN_PATH=" in environ
    assert with_path >= 5
    scanned = 0
    for folder in (up["home"], up["ray_temp"], up["log"].parent):
        for path in folder.rglob("*"):
            if path == up["token_file"] or not path.is_file() or path.is_symlink():
                continue
            assert token not in path.read_bytes(), path
            scanned += 1
    assert scanned >= 20  # state.json, up.log, the installer's log, Ray's session logs


def test_stopping_up_removes_the_token_file(up: dict) -> None:
    procs = _tree(up["proc"].pid)
    up["proc"].send_signal(signal.SIGINT)
    assert up["proc"].wait(timeout=120) == 0
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, alive
    assert not up["token_file"].exists()
    assert up["token_file"].parent.is_dir()
