"""Start and stop a local Ray head for ``lorafleet up`` -- and only the processes it started.

``ray start --head --block`` runs in its own session (process group) with every port that
has a fixed default (GCS, dashboard, dashboard agent, client server, metrics, runtime-env agent,
the dashboard's and autoscaler's own metrics servers) set to a free loopback port, so it can run
next to other Ray clusters on the same machine.

Every listener is on loopback. ``--node-ip-address=127.0.0.1`` alone is not enough: Ray 2.60's
``ray start`` replaces a loopback node address by the machine's external one
(``ray._private.services.resolve_ip_for_localhost``) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
is ``0`` -- the switch Ray uses on laptops to keep a single-node cluster on 127.0.0.1. With the
node address on loopback, the GCS, raylet, workers, agents, client server and metrics servers
bind 127.0.0.1 (they bind all interfaces only for a non-loopback node address). One listener
ignores the node address: a Serve replica's inter-deployment gRPC server binds ``[::]:0``; a
worker setup hook (``lorafleet_serving.loopback``, named in the workers' environment) moves it
to 127.0.0.1.

Token authentication is on (``RAY_AUTH_MODE=token``): a new random token per head
(:mod:`.ray_token`), whose file Ray's processes find through ``RAY_AUTH_TOKEN_PATH``; clients
send it as ``Authorization: Bearer`` (:attr:`LocalRayHead.auth_headers`). Another user of the
machine can reach the loopback ports but cannot read the token, so the dashboard (job
submission), the Ray client server and every gRPC service refuse them.

Stopping never uses ``ray stop``: that command kills *every* Ray process on the machine. Instead
:meth:`LocalRayHead.stop` sends SIGTERM to the ``ray start --block`` process (which shuts down
the processes it spawned) and its process group, waits, and SIGKILLs what is left of the
processes recorded as its descendants.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lorafleet_operator.local.ray_token import (
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    bearer_headers,
    new_token,
    write_token,
)

LOOPBACK = "127.0.0.1"
#: Folder of the token file inside ``--home``.
SECRETS_DIR = "secrets"
#: Ray's worker setup-hook variable (``ray/_private/ray_constants.py``, read by
#: ``default_worker.py`` when a Python worker starts) and the hook that moves wildcard gRPC
#: listeners (a Serve replica's ``[::]:0``) to 127.0.0.1. A string only: local mode does not
#: import the serving package.
WORKER_SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
LOOPBACK_HOOK = "lorafleet_serving.loopback.keep_grpc_on_loopback"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call.

    The port is drawn from below the kernel's ephemeral range
    (``/proc/sys/net/ipv4/ip_local_port_range``, where every outgoing connection takes its
    local port) and above Ray's worker ports (``--min-worker-port`` 10002 to
    ``--max-worker-port`` 19999 by default): a port handed out there stays free until the
    server that was told to use it binds it, however many connections and Ray workers start
    meanwhile. When none is free there, any free port (the kernel's choice).
    """
    low = _ephemeral_low()
    draw = random.SystemRandom()
    if low > _FIRST_PORT + 1:
        for _ in range(64):
            port = draw.randrange(_FIRST_PORT, low)
            if port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


#: Above Ray's default worker port range (10002-19999).
_FIRST_PORT = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int) -> bool:
    """Whether a TCP port on 127.0.0.1 can be bound right now.

    Args:
        port: The port number.

    Returns:
        ``True`` when nothing listens on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a server binds (SO_REUSEADDR): connections in TIME_WAIT do not count as in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def ray_env(token_file: Path) -> dict[str, str]:
    """Environment for the Ray head, its workers and its clients (token auth, loopback only).

    Args:
        token_file: The head's token file (Ray reads it through ``RAY_AUTH_TOKEN_PATH``; the
            token itself is never put in an environment block or on a command line).

    Returns:
        A copy of ``os.environ`` with the Ray settings applied and ``RAY_ADDRESS`` and
        ``RAY_AUTH_TOKEN`` (which would override the file) removed.
    """
    env = dict(os.environ)
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            TOKEN_PATH_ENV: str(token_file),
            # Keep the node address 127.0.0.1 (see the module docstring).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_enable_worker_prestart": "0",
            "RAY_num_prestart_python_workers": "0",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.pop("RAY_ADDRESS", None)
    env.pop(TOKEN_ENV, None)
    return env


def _new_session_dying_with_parent() -> None:
    """``preexec_fn`` of ``ray start``: own session; SIGTERM when ``lorafleet up`` dies.

    ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (Linux, ``man 2 prctl``) makes the kernel send SIGTERM to
    ``ray start --block`` if ``lorafleet up`` is killed without a chance to clean up (SIGKILL),
    and ``ray start --block`` then shuts down the processes it started.
    """
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class LocalRayHead:
    """A Ray head started by ``lorafleet up``.

    Attributes:
        dashboard_url: ``http://127.0.0.1:<port>``: the dashboard (Serve REST API).
        gcs_address: ``127.0.0.1:<port>``.
        temp_dir: Ray's ``--temp-dir`` (session logs under ``session_latest/logs``).
        pid: Process id of ``ray start --block`` (leader of its process group).
        token_file: The head's token file (0600 in a 0700 folder).
        client_port: Port of the Ray client server (``ray://127.0.0.1:<port>``; token needed).
        metrics_port: Port of the node's Prometheus endpoint (``/metrics`` on 127.0.0.1): Ray's
            own metrics and the serving metrics of every replica on this node.
    """

    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    pid: int
    token_file: Path
    client_port: int
    metrics_port: int = 0
    _token: str = field(default="", repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def logs_dir(self) -> Path:
        """Ray's log folder of this session."""
        return self.temp_dir / "session_latest" / "logs"

    @property
    def token(self) -> str:
        """The authentication token (never log or print it)."""
        return self._token

    @property
    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}`` for requests to the dashboard."""
        return bearer_headers(self._token)

    def client_env(self) -> dict[str, str]:
        """Environment for a process that talks to this head (``ray.init``, the Ray CLI).

        Returns:
            :func:`ray_env` with this head's token file.
        """
        return ray_env(self.token_file)

    @classmethod
    def start(
        cls, num_cpus: int, timeout_s: float = 180.0, secrets_dir: Path | None = None
    ) -> LocalRayHead:
        """Start the head and wait until its dashboard answers.

        Args:
            num_cpus: Logical CPUs Ray may schedule on this machine.
            timeout_s: Seconds to wait for the dashboard.
            secrets_dir: Folder for the token file (made 0700; ``lorafleet up`` passes
                ``HOME/secrets``); default: inside the head's own temp dir (also 0700).

        Returns:
            The running head; call :meth:`stop` to end it.

        Raises:
            RuntimeError: If ``ray start`` exits early (its output is in the message), the
                dashboard refuses the token, or it does not answer within ``timeout_s``.
            TokenFileError: If ``secrets_dir`` is not private to this user.
        """
        ray_bin = Path(sys.executable).with_name("ray")
        if not ray_bin.exists():
            found = shutil.which("ray")
            if not found:
                raise RuntimeError("the 'ray' command is not installed in this environment")
            ray_bin = Path(found)
        # Short path: Ray's unix socket paths must stay under ~107 characters.
        temp_dir = Path(tempfile.mkdtemp(prefix="lfray", dir="/tmp"))
        token = new_token()
        try:
            token_file = write_token(Path(secrets_dir or temp_dir / SECRETS_DIR), token)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        gcs_port, dash_port, client_port = free_port(), free_port(), free_port()
        metrics_port = free_port()
        cmd = [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--node-ip-address={LOOPBACK}",
            f"--port={gcs_port}",
            "--include-dashboard=true",
            f"--dashboard-host={LOOPBACK}",
            f"--dashboard-port={dash_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            # Ray 2.60 always starts the client server when grpc is installed; it checks the
            # token like every other gRPC service.
            f"--ray-client-server-port={client_port}",
            f"--metrics-export-port={metrics_port}",
            f"--runtime-env-agent-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--object-store-memory={256 * 1024 * 1024}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        env = ray_env(token_file)
        # Fixed-default ports of the dashboard's and the autoscaler's Prometheus servers.
        env["DASHBOARD_METRIC_PORT"] = str(free_port())
        env["AUTOSCALER_METRIC_PORT"] = str(free_port())
        env[WORKER_SETUP_HOOK_ENV] = LOOPBACK_HOOK
        log = temp_dir / "ray-start.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_new_session_dying_with_parent,
            )
        head = cls(
            dashboard_url=f"http://{LOOPBACK}:{dash_port}",
            gcs_address=f"{LOOPBACK}:{gcs_port}",
            temp_dir=temp_dir,
            pid=proc.pid,
            token_file=token_file,
            client_port=client_port,
            metrics_port=metrics_port,
            _token=token,
            _proc=proc,
        )
        try:
            head._wait_dashboard(log, timeout_s)
        except BaseException:
            head.stop(remove_temp=False)
            raise
        return head

    def _wait_dashboard(self, log: Path, timeout_s: float) -> None:
        """Wait until ``GET /api/version`` (token required) answers 200."""
        deadline = time.monotonic() + timeout_s
        url = f"{self.dashboard_url}/api/version"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited with code {self._proc.returncode}; output:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            with contextlib.suppress(httpx.HTTPError):
                resp = httpx.get(url, headers=self.auth_headers, timeout=5)
                if resp.is_success:
                    return
                if resp.status_code in (401, 403):
                    raise RuntimeError(
                        f"the Ray dashboard {self.dashboard_url} refused this head's token "
                        f"(HTTP {resp.status_code}; token file {self.token_file})"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Ray dashboard {self.dashboard_url} did not answer within "
                    f"{timeout_s:.0f} s (log: {log})"
                )
            time.sleep(0.5)

    def _descendants(self) -> list[Any]:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with ray
            return []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        return []

    def stop(self, grace_s: float = 15.0, remove_temp: bool = True) -> None:
        """Stop the head and every process it started, and nothing else.

        Args:
            grace_s: Seconds to wait after SIGTERM before SIGKILL.
            remove_temp: Delete the Ray temp dir (logs) afterwards. The token file is always
                removed.
        """
        procs = self._descendants()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.send_signal(sig)
            if procs:
                import psutil

                _, procs = psutil.wait_procs(procs, timeout=grace_s if sig == signal.SIGTERM else 5)
            elif self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=grace_s)
            if not procs and (self._proc is None or self._proc.poll() is not None):
                break
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        # The token is worthless once the head is gone; do not leave it lying around.
        with contextlib.suppress(OSError):
            self.token_file.unlink()
        if remove_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
