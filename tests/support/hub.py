"""Fixtures: an offline Hugging Face Hub (olah) and an S3 API (moto), both on loopback.

``olah_hub`` (session): olah 0.5.4 in offline mode, serving local git repositories from its
``mirrors-path``. Tests create repositories with :meth:`OlahHub.create_repo` (``git init -b
main``, one commit; large files stored as real Git LFS pointers with the object under
``.git/lfs/objects/`` so the tree API reports ``lfs.sha256`` as the Hub does) and point
``HF_ENDPOINT`` at :attr:`OlahHub.endpoint` with ``monkeypatch`` — never globally.

What olah 0.5.4 cannot serve, and the stand-in used instead (a small ASGI wrapper around
olah's own FastAPI app, in the same server process, see ``_LAUNCHER``):

- Gated repositories. Offline olah checks no token at all (``ensure_repo_visibility``
  returns early when offline). The wrapper answers a gated repo's API and resolve routes the
  way huggingface.co does: 401 without a token, 403 with a wrong one, both with
  ``X-Error-Code: GatedRepo`` (which ``huggingface_hub`` turns into ``GatedRepoError``).
- LFS file bytes and HTTP Range. Olah's local-mirror GET always answers 200 with the whole
  body (no Content-Length; the file is read into memory and sent in 4 KiB pieces, about
  30 MB/s here), so a client can never resume; its HEAD of an LFS file hashes the whole
  object on every call. The Hub serves LFS files from its CDN instead; so does the wrapper:
  ``/resolve/`` HEAD/GET of an LFS pointer is answered from the object file under
  ``.git/lfs/objects`` (ETag = the LFS sha256 oid, ``X-Repo-Commit``, ``Accept-Ranges``),
  with 206 + ``Content-Range`` for ``Range: bytes=N-`` / ``bytes=N-M``. API routes, plain
  git blobs and every other route stay olah's (Range on plain blobs is sliced by the wrapper).
- Optional per-repository bandwidth limit (:meth:`OlahHub.throttle`), so a test can kill a
  download midway deterministically, and a count of file bytes served per repository
  (:meth:`OlahHub.served_bytes`), so a test can tell a resumed download from a restarted one.

``s3_server`` (session): moto's ``ThreadedMotoServer`` on a free loopback port, yielding an
:class:`S3Server` with ``endpoint_url``, dummy credentials and :meth:`S3Server.upload_folder`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest
import requests

LFS_DEFAULT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    Args:
        host: The local address the port will be bound on.

    Returns:
        A port number (the OS picked it; another process may take it later).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server process exited with code {proc.returncode} before {url} answered"
            )
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException as exc:
            last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s: {last}")


# Runs in the olah server process: olah's app wrapped by the gate/range/throttle stand-in.
_LAUNCHER = textwrap.dedent(
    r"""
    import asyncio, json, os, re, sys, time
    import uvicorn
    from olah import server as olah_server

    from urllib.parse import unquote
    from git import Repo

    STATE = os.environ["LORAFLEET_OLAH_STATE"]
    MIRRORS = os.environ["LORAFLEET_OLAH_MIRRORS"]
    CHUNK = 1 << 20
    LFS_POINTER = re.compile(
        r"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n"
    )

    def lfs_object(repo_id, rev, path):
        # (commit, oid, object path) when path at rev is an LFS pointer, else None.
        folder = os.path.join(MIRRORS, "models", repo_id)
        if not os.path.isdir(folder):
            return None
        try:
            commit = Repo(folder).commit(rev)
            blob = commit.tree[path]
            if blob.type != "blob" or not 120 < blob.size < 150:
                return None
            match = LFS_POINTER.fullmatch(blob.data_stream.read().decode())
        except Exception:
            return None
        if match is None:
            return None
        oid = match[1]
        obj = os.path.join(folder, ".git", "lfs", "objects", oid[:2], oid[2:4], oid)
        return (commit.hexsha, oid, obj) if os.path.isfile(obj) else None
    PATH_RE = re.compile(
        r"^/(?:api/)?(?:models/)?(?P<org>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$"
    )

    def load_state():
        try:
            with open(STATE) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return {"gated": {}, "throttle": {}}

    async def send_json(send, status, body, headers):
        raw = json.dumps(body).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": raw})

    async def head_length(app, scope):
        head_scope = dict(scope, method="HEAD", headers=[
            (k, v) for k, v in scope["headers"] if k.lower() != b"range"])
        result = {}
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}
        async def send(msg):
            if msg["type"] == "http.response.start":
                result["status"] = msg["status"]
                for k, v in msg["headers"]:
                    if k.lower() == b"content-length":
                        result["length"] = int(v)
        await app(head_scope, receive, send)
        return result.get("length") if result.get("status") == 200 else None

    class HubStandIn:
        def __init__(self, app):
            self.app = app
            self.served = {}

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            path = scope["path"]
            if path == "/_standin/stats":
                return await send_json(send, 200, {"servedBytes": self.served}, {})
            if path.startswith("/api/models/"):
                path = path[len("/api/models"):]
            m = PATH_RE.match(path)
            repo_id = f"{m['org']}/{m['name']}" if m else None
            state = load_state()
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            token = state["gated"].get(repo_id) if repo_id else None
            if token is not None:
                auth = headers.get("authorization")
                if auth != f"Bearer {token}":
                    status = 401 if auth is None else 403
                    msg = (f"Access to model {repo_id} is restricted. You must have access to it "
                           "and be authenticated to access it. Please log in.")
                    return await send_json(send, status, {"error": msg},
                                           {"x-error-code": "GatedRepo", "x-error-message": msg})
            is_resolve = bool(m and m["rest"] and m["rest"].startswith("/resolve/"))
            if not (is_resolve and scope["method"] in ("GET", "HEAD")):
                return await self.app(scope, receive, send)
            rate = state["throttle"].get(repo_id)
            rng = headers.get("range")
            _, _, rev_path = m["rest"].partition("/resolve/")
            rev, _, file_path = rev_path.partition("/")
            lfs = lfs_object(repo_id, unquote(rev), unquote(file_path))
            if lfs is not None:
                return await self.serve_lfs(receive, send, scope["method"], repo_id, lfs, rng, rate)
            if scope["method"] != "GET":
                return await self.app(scope, receive, send)
            start = end = None
            total = None
            if rng:
                rm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                total = await head_length(self.app, scope)
                if rm and total is not None:
                    start = int(rm[1])
                    end = int(rm[2]) if rm[2] else total - 1
                    end = min(end, total - 1)
                    if start >= total:
                        return await send_json(send, 416, {"error": "Range Not Satisfiable"},
                                               {"content-range": f"bytes */{total}"})
            pos = 0
            t0 = time.monotonic()
            sent = 0

            async def wrapped_send(msg):
                nonlocal pos, sent
                if msg["type"] == "http.response.start":
                    if start is not None and msg["status"] == 200:
                        hdrs = [(k, v) for k, v in msg["headers"]
                                if k.lower() not in (b"content-length", b"transfer-encoding")]
                        hdrs.append((b"content-range", f"bytes {start}-{end}/{total}".encode()))
                        hdrs.append((b"content-length", str(end - start + 1).encode()))
                        hdrs.append((b"accept-ranges", b"bytes"))
                        msg = dict(msg, status=206, headers=hdrs)
                    return await send(msg)
                if msg["type"] == "http.response.body":
                    body = msg.get("body", b"")
                    if start is not None:
                        lo, hi = max(start - pos, 0), max(end + 1 - pos, 0)
                        pos += len(body)
                        body = body[lo:hi]
                    if rate and body:
                        sent += len(body)
                        ahead = sent / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                    self.served[repo_id] = self.served.get(repo_id, 0) + len(body)
                    msg = dict(msg, body=body)
                return await send(msg)

            return await self.app(scope, receive, wrapped_send)

        async def serve_lfs(self, receive, send, method, repo_id, lfs, rng, rate):
            commit, oid, obj = lfs
            total = os.path.getsize(obj)
            start, end, status = 0, total - 1, 200
            if rng:
                rm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if rm:
                    start = int(rm[1])
                    end = min(int(rm[2]) if rm[2] else total - 1, total - 1)
                    if start >= total:
                        return await send_json(send, 416, {"error": "Range Not Satisfiable"},
                                               {"content-range": f"bytes */{total}"})
                    status = 206
            hdrs = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(end - start + 1).encode()),
                (b"etag", f'"{oid}"'.encode()),
                (b"x-repo-commit", commit.encode()),
                (b"accept-ranges", b"bytes"),
            ]
            if status == 206:
                hdrs.append((b"content-range", f"bytes {start}-{end}/{total}".encode()))
            await send({"type": "http.response.start", "status": status, "headers": hdrs})
            if method == "HEAD":
                return await send({"type": "http.response.body", "body": b""})
            t0, sent, left = time.monotonic(), 0, end - start + 1
            gone = asyncio.Event()

            async def watch():  # uvicorn drops writes to a closed connection silently
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()

            watcher = asyncio.create_task(watch())
            with open(obj, "rb") as fh:
                fh.seek(start)
                while left > 0 and not gone.is_set():
                    chunk = fh.read(min(CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    sent += len(chunk)
                    self.served[repo_id] = self.served.get(repo_id, 0) + len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
                    if rate:
                        ahead = sent / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
            watcher.cancel()
            if left > 0 and not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    host, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(HubStandIn(olah_server.app), host=host, port=port, log_level="warning")
    """
)


@dataclass
class OlahHub:
    """A running olah server in offline mode plus helpers to publish repositories.

    Attributes:
        endpoint: Base URL for ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:40123``.
        mirrors_path: Folder olah serves git repositories from (``models/<org>/<name>``).
        state_file: JSON read by the stand-in on every request (gated tokens, throttles).
    """

    endpoint: str
    mirrors_path: Path
    state_file: Path
    _state: dict = field(default_factory=lambda: {"gated": {}, "throttle": {}})

    def repo_dir(self, repo_id: str) -> Path:
        """Return the git working tree that serves ``repo_id`` (``org/name``)."""
        org, _, name = repo_id.partition("/")
        if not org or not name or "/" in name:
            raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
        return self.mirrors_path / "models" / org / name

    def create_repo(
        self,
        repo_id: str,
        folder: str | os.PathLike,
        *,
        lfs_patterns: Iterable[str] = LFS_DEFAULT_PATTERNS,
        tag: str | None = None,
        message: str = "upload",
    ) -> str:
        """Publish the files of ``folder`` as a new commit on branch ``main`` of ``repo_id``.

        Files whose names match ``lfs_patterns`` are committed as Git LFS pointers (``oid
        sha256`` + ``size``) with the object stored under ``.git/lfs/objects/``, as the Hub
        stores weights; other files are plain git blobs. A later call replaces the whole tree
        with a new commit.

        Args:
            repo_id: ``org/name``.
            folder: Local folder whose files (recursively) become the repository's tree.
            lfs_patterns: Globs (matched against the file name) for LFS files.
            tag: Optional git tag to put on the new commit.
            message: Commit message.

        Returns:
            The 40-hex commit sha the Hub API reports for ``main``.
        """
        repo = self.repo_dir(repo_id)
        repo.mkdir(parents=True, exist_ok=True)
        if not (repo / ".git").exists():
            self._git(repo, "init", "-q", "-b", "main")
        for child in repo.iterdir():
            if child.name == ".git":
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        src = Path(folder)
        patterns = tuple(lfs_patterns)
        for file in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = file.relative_to(src)
            dest = repo / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if any(fnmatch(file.name, pat) for pat in patterns):
                dest.write_text(self._store_lfs_object(repo, file))
            else:
                shutil.copyfile(file, dest)
        self._git(repo, "add", "-A")
        self._git(repo, "commit", "-q", "--allow-empty", "-m", message)
        if tag:
            self._git(repo, "tag", "-f", tag)
        return self._git(repo, "rev-parse", "HEAD").strip()

    def lfs_object_path(self, repo_id: str, path_in_repo: str) -> Path:
        """Return the server-side LFS object file that holds ``path_in_repo``'s bytes."""
        pointer = (self.repo_dir(repo_id) / path_in_repo).read_text()
        oid = pointer.split("oid sha256:")[1].split()[0]
        return self.repo_dir(repo_id) / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def corrupt_lfs_file(self, repo_id: str, path_in_repo: str, offset: int = 0) -> None:
        """Flip one byte of an LFS file on the server (same size, wrong sha256)."""
        obj = self.lfs_object_path(repo_id, path_in_repo)
        obj.chmod(0o644)
        with obj.open("r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0xFF]))

    def gate(self, repo_id: str, token: str | None) -> None:
        """Make ``repo_id`` gated (only ``Authorization: Bearer <token>`` passes) or ungate it."""
        if token is None:
            self._state["gated"].pop(repo_id, None)
        else:
            self._state["gated"][repo_id] = token
        self._write_state()

    def throttle(self, repo_id: str, bytes_per_second: int | None) -> None:
        """Limit file downloads of ``repo_id`` to ``bytes_per_second`` (None: unlimited)."""
        if bytes_per_second is None:
            self._state["throttle"].pop(repo_id, None)
        else:
            self._state["throttle"][repo_id] = int(bytes_per_second)
        self._write_state()

    def served_bytes(self, repo_id: str) -> int:
        """Bytes of file content the server has sent for ``repo_id`` so far (resolve GETs)."""
        stats = requests.get(f"{self.endpoint}/_standin/stats", timeout=10).json()
        return int(stats["servedBytes"].get(repo_id, 0))

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        os.replace(tmp, self.state_file)

    @staticmethod
    def _store_lfs_object(repo: Path, file: Path) -> str:
        digest = hashlib.sha256()
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        oid = digest.hexdigest()
        obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        if not obj.exists():
            try:
                os.link(file, obj)
            except OSError:
                shutil.copyfile(file, obj)
        size = file.stat().st_size
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"

    @staticmethod
    def _git(repo: Path, *args: str) -> str:
        env = dict(
            os.environ,
            GIT_AUTHOR_NAME="lorafleet-tests",
            GIT_AUTHOR_EMAIL="tests@lorafleet.invalid",
            GIT_COMMITTER_NAME="lorafleet-tests",
            GIT_COMMITTER_EMAIL="tests@lorafleet.invalid",
        )
        return subprocess.run(
            ["git", "-c", "core.autocrlf=false", *args],
            cwd=repo,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout


@contextlib.contextmanager
def run_olah_hub(workdir: Path, host: str = "127.0.0.1") -> Iterator[OlahHub]:
    """Start olah (offline, mirrors only) behind the stand-in on a free port of ``host``.

    Args:
        workdir: Folder for the config, mirrors, olah's cache/logs and the stand-in state.
        host: Address to listen on: loopback, or the test node's bridge address for Pods
            (never all interfaces).

    Yields:
        The running :class:`OlahHub`; the server process is stopped on exit.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    mirrors = workdir / "mirrors"
    (mirrors / "models").mkdir(parents=True, exist_ok=True)
    config = workdir / "olah.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [basic]
            host = "{host}"
            port = {port}
            repos-path = "{workdir / "repos"}"
            mirror-netloc = "{host}:{port}"
            mirror-lfs-netloc = "{host}:{port}"
            mirrors-path = ["{mirrors}"]
            metadata-cache-ttl = 0

            [accessibility]
            offline = true
            """
        )
    )
    hub = OlahHub(
        endpoint=f"http://{host}:{port}",
        mirrors_path=mirrors,
        state_file=workdir / "standin-state.json",
    )
    hub._write_state()
    env = dict(
        os.environ,
        OLAH_CONFIG=str(config),
        OLAH_LOG_PATH=str(workdir / "logs"),
        LORAFLEET_OLAH_STATE=str(hub.state_file),
        LORAFLEET_OLAH_MIRRORS=str(mirrors),
    )
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, host, str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(hub.endpoint + "/api/whoami-v2", timeout=60, proc=proc)
        yield hub
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahHub]:
    """An offline olah Hub mirror on loopback for the whole session (see module doc)."""
    with run_olah_hub(tmp_path_factory.mktemp("olah")) as hub:
        yield hub


@dataclass
class S3Server:
    """A moto S3 server on loopback.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>`` for ``AWS_ENDPOINT_URL_S3``.
        access_key_id / secret_access_key / region: dummy credentials moto accepts.
    """

    endpoint_url: str
    access_key_id: str = "testing-key-id"
    secret_access_key: str = "testing-secret"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 at this server (for ``monkeypatch.setenv``)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        """Return a boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )

    def upload_folder(self, bucket: str, prefix: str, folder: str | os.PathLike) -> list[str]:
        """Upload every file of ``folder`` to ``s3://bucket/prefix/<relative path>``.

        The bucket is created when missing. Files are sent with single-part ``put_object``
        (so the ETag is the md5 of the bytes).

        Returns:
            The object keys written, sorted.
        """
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        keys = []
        src = Path(folder)
        for file in sorted(p for p in src.rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{file.relative_to(src).as_posix()}".lstrip("/")
            client.put_object(Bucket=bucket, Key=key, Body=file.read_bytes())
            keys.append(key)
        return keys


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 API on a free loopback port for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
