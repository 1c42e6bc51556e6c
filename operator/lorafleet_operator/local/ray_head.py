"""Start and stop a local Ray head for ``lorafleet up`` -- and only the processes it started.

``ray start --head --block`` runs in its own session (process group) with every port that
has a fixed default (GCS, dashboard, dashboard agent, client server, metrics, runtime-env agent)
set to a free loopback port, so it can run next to other Ray clusters on the same machine.
Token authentication is disabled (``RAY_AUTH_MODE=disabled``; Ray 2.60 enables it by default),
since the dashboard and the Serve proxy listen on loopback only.

Stopping never uses ``ray stop``: that command kills *every* Ray process on the machine. Instead
:meth:`LocalRayHead.stop` sends SIGTERM to the ``ray start --block`` process (which shuts down
the processes it spawned) and its process group, waits, and SIGKILLs what is left of the
processes recorded as its descendants.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


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


def ray_env() -> dict[str, str]:
    """Environment for the Ray head and its workers (auth off, no usage stats, few idle workers).

    Returns:
        A copy of ``os.environ`` with the Ray settings applied and ``RAY_ADDRESS`` removed.
    """
    env = dict(os.environ)
    env.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_enable_worker_prestart": "0",
            "RAY_num_prestart_python_workers": "0",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.pop("RAY_ADDRESS", None)
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
    """

    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    pid: int
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def logs_dir(self) -> Path:
        """Ray's log folder of this session."""
        return self.temp_dir / "session_latest" / "logs"

    @classmethod
    def start(cls, num_cpus: int, timeout_s: float = 180.0) -> LocalRayHead:
        """Start the head and wait until its dashboard answers.

        Args:
            num_cpus: Logical CPUs Ray may schedule on this machine.
            timeout_s: Seconds to wait for the dashboard.

        Returns:
            The running head; call :meth:`stop` to end it.

        Raises:
            RuntimeError: If ``ray start`` exits early (its output is in the message) or the
                dashboard does not answer within ``timeout_s``.
        """
        ray_bin = Path(sys.executable).with_name("ray")
        if not ray_bin.exists():
            found = shutil.which("ray")
            if not found:
                raise RuntimeError("the 'ray' command is not installed in this environment")
            ray_bin = Path(found)
        # Short path: Ray's unix socket paths must stay under ~107 characters.
        temp_dir = Path(tempfile.mkdtemp(prefix="lfray", dir="/tmp"))
        gcs_port, dash_port = free_port(), free_port()
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
            f"--ray-client-server-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--object-store-memory={256 * 1024 * 1024}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        log = temp_dir / "ray-start.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ray_env(),
                preexec_fn=_new_session_dying_with_parent,
            )
        head = cls(
            dashboard_url=f"http://{LOOPBACK}:{dash_port}",
            gcs_address=f"{LOOPBACK}:{gcs_port}",
            temp_dir=temp_dir,
            pid=proc.pid,
            _proc=proc,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"ray start exited with code {proc.returncode}; output:\n"
                        + log.read_text(errors="replace")[-3000:]
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{head.dashboard_url}/api/version", timeout=5).is_success:
                        return head
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the Ray dashboard {head.dashboard_url} did not answer within "
                        f"{timeout_s:.0f} s (log: {log})"
                    )
                time.sleep(0.5)
        except BaseException:
            head.stop(remove_temp=False)
            raise

    def _descendants(self) -> list:
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
            remove_temp: Delete the Ray temp dir (logs) afterwards.
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
        if remove_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
