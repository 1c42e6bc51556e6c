"""One local Ray cluster with Serve per test session, driven like KubeRay drives it.

Fixture:
    ``ray_cluster`` (session scope): a Ray head started with ``ray start --head --block`` on
    loopback, with the dashboard (whose REST API ``PUT /api/serve/applications/`` is what the
    KubeRay operator and lorafleet's local mode call) and a Serve HTTP proxy on a free loopback
    port. Yields a :class:`RayCluster`.

Helpers:
    :func:`deploy_serve_config` PUTs a Serve config (``ServeDeploySchema`` shape, as in
    ``docs/interfaces.md`` section 3) and waits until every application in it is RUNNING with
    healthy deployments carrying the requested ``user_config``.
    :func:`serve_status` returns ``GET /api/serve/applications/``.
    :func:`replica_pids` maps ``(application, deployment)`` to the replica process ids.

Ray 2.60 notes (read from the installed ``ray/scripts/scripts.py``): ``ray start`` enables
token authentication unless ``RAY_AUTH_MODE=disabled``; ``ray stop`` kills *every* Ray process
on the machine by name, so teardown here signals only the process group this fixture started.
Worker ports are random (``--min-worker-port=0 --max-worker-port=0``) and every fixed-default
port (GCS, dashboard, dashboard agent, client server, metrics) is a free loopback port, so
several sessions can run side by side on one machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

__all__ = [
    "RayCluster",
    "deploy_serve_config",
    "free_port",
    "ray_cluster",
    "replica_pids",
    "serve_status",
    "start_ray_cluster",
]

LOOPBACK = "127.0.0.1"
#: Seconds to wait for the head (GCS, raylet, dashboard) to come up.
START_TIMEOUT_S = 120.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call.

    Returns:
        A port number (int) chosen by the kernel for an ephemeral bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class RayCluster:
    """A running local Ray head with dashboard and Serve HTTP proxy.

    Attributes:
        address: GCS address ``127.0.0.1:<port>`` (for ``ray.init(address=...)``).
        dashboard_url: ``http://127.0.0.1:<port>``, base of the dashboard REST API.
        http_url: ``http://127.0.0.1:<port>``, the Serve HTTP proxy.
        temp_dir: Ray's ``--temp-dir`` (logs under ``session_latest/logs``).
        pid: process id of the blocking ``ray start`` process (leader of its process group).
        env: environment for subprocesses that talk to this cluster (auth disabled).
    """

    address: str
    dashboard_url: str
    http_url: str
    temp_dir: Path
    pid: int
    env: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def logs_dir(self) -> Path:
        """Ray's log folder for this session (``<temp_dir>/session_latest/logs``)."""
        return self.temp_dir / "session_latest" / "logs"

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every process of this cluster, and only those.

        Sends SIGTERM to the ``ray start --block`` process group and to all recorded
        descendants, waits up to ``grace_s`` seconds, then SIGKILLs the survivors. ``ray stop``
        is not used: it kills all Ray processes on the machine, including other sessions'.

        Args:
            grace_s: seconds to wait for a graceful exit before SIGKILL.
        """
        import psutil

        procs: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)
            _, alive = psutil.wait_procs(procs, timeout=grace_s if sig == signal.SIGTERM else 5)
            procs = alive
            if not procs:
                break
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)


def _cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RAY_AUTH_MODE": "disabled",
            # Keep the number of idle Python workers small on a 2-core machine.
            "RAY_enable_worker_prestart": "0",
            "RAY_prestart_worker_first_driver": "0",
            "RAY_num_prestart_python_workers": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Serve's controller logs are enough; no log deduplication noise in tests.
            "RAY_DEDUP_LOGS": "0",
        }
    )
    env.pop("RAY_ADDRESS", None)
    return env


def _wait_http_ok(
    url: str,
    timeout_s: float,
    proc: subprocess.Popen | None,
    log: Path,
    ok_statuses: tuple[int, ...] = (200,),
) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"ray start exited with code {proc.returncode} while waiting for {url}; "
                f"output:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            resp = requests.get(url, timeout=5)
            if resp.status_code in ok_statuses:
                return
            last_error = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except requests.RequestException as exc:
            last_error = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s (last error: {last_error})")


def start_ray_cluster(num_cpus: int = 4, timeout_s: float = START_TIMEOUT_S) -> RayCluster:
    """Start a local Ray head with dashboard and a Serve HTTP proxy on loopback.

    Args:
        num_cpus: logical CPUs Ray may schedule (deployments in tests use fractions of one).
        timeout_s: seconds to wait for the dashboard and the Serve proxy.

    Returns:
        The running :class:`RayCluster`; call :meth:`RayCluster.stop` to end it.

    Raises:
        RuntimeError: ``ray start`` exited early (its output is in the message).
        TimeoutError: the dashboard or the Serve proxy did not answer in time.
    """
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="rlf", dir="/tmp"))  # short: unix socket paths
    gcs_port, dash_port, http_port = free_port(), free_port(), free_port()
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
    env = _cluster_env()
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    cluster = RayCluster(
        address=f"{LOOPBACK}:{gcs_port}",
        dashboard_url=f"http://{LOOPBACK}:{dash_port}",
        http_url=f"http://{LOOPBACK}:{http_port}",
        temp_dir=temp_dir,
        pid=proc.pid,
        env=env,
        _proc=proc,
    )
    try:
        _wait_http_ok(f"{cluster.dashboard_url}/api/version", timeout_s, proc, log)
        # Start Serve (controller + proxy) with the proxy on our loopback port. Later PUTs
        # that omit http_options keep these (Serve ignores HTTP options once running).
        resp = requests.put(
            f"{cluster.dashboard_url}/api/serve/applications/",
            json={
                "http_options": {"host": LOOPBACK, "port": http_port},
                "applications": [],
            },
            timeout=120,
        )
        if resp.status_code != 200:
            raise RuntimeError(f"starting Serve failed: HTTP {resp.status_code}: {resp.text}")
        # The proxy answers 503 "Route table is not populated yet" until an application
        # is deployed: any answer from it means it is listening.
        _wait_http_ok(f"{cluster.http_url}/-/healthz", timeout_s, proc, log, (200, 503))
    except BaseException:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return cluster


def serve_status(dashboard_url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Return Serve's status as the dashboard reports it.

    Args:
        dashboard_url: base URL of the Ray dashboard.
        timeout_s: HTTP timeout in seconds.

    Returns:
        The JSON of ``GET /api/serve/applications/`` (``ServeInstanceDetails``): keys
        ``applications`` (name -> status, message, deployments -> replicas with ``pid``),
        ``http_options``, ``controller_info``.

    Raises:
        requests.HTTPError: the dashboard answered with an error status.
    """
    resp = requests.get(f"{dashboard_url}/api/serve/applications/", timeout=timeout_s)
    resp.raise_for_status()
    return resp.json()


def replica_pids(status: dict[str, Any]) -> dict[tuple[str, str], list[int]]:
    """Extract replica process ids from a :func:`serve_status` result.

    Args:
        status: the JSON returned by :func:`serve_status`.

    Returns:
        ``{(application, deployment): sorted pids of RUNNING/UPDATING replicas}``.
    """
    out: dict[tuple[str, str], list[int]] = {}
    for app_name, app in (status.get("applications") or {}).items():
        for dep_name, dep in (app.get("deployments") or {}).items():
            out[(app_name, dep_name)] = sorted(
                int(r["pid"])
                for r in dep.get("replicas") or []
                if r.get("pid") and r.get("state") in ("RUNNING", "UPDATING")
            )
    return out


def _app_ready(app_cfg: dict[str, Any], app: dict[str, Any] | None, since: float) -> bool:
    if not app or app.get("status") != "RUNNING":
        return False
    if float(app.get("last_deployed_time_s") or 0.0) < since:
        return False
    deployments = app.get("deployments") or {}
    for dep_cfg in app_cfg.get("deployments") or []:
        dep = deployments.get(dep_cfg["name"])
        if dep is None or dep.get("status") != "HEALTHY":
            return False
        replicas = dep.get("replicas") or []
        if not replicas or any(r.get("state") != "RUNNING" for r in replicas):
            return False
        if "user_config" in dep_cfg:
            current = (dep.get("deployment_config") or {}).get("user_config")
            if current != dep_cfg["user_config"]:
                return False
    return True


def deploy_serve_config(
    dashboard_url: str, config: dict[str, Any], timeout: float = 300.0
) -> dict[str, Any]:
    """PUT a Serve config to the dashboard and wait until it is running.

    This is what KubeRay does with a RayService's ``serveConfigV2``. A second PUT that changes
    only a deployment's ``user_config`` updates replicas in place (``reconfigure()``).

    Args:
        config: a ``ServeDeploySchema`` dict (``{"applications": [...]}``, see
            ``docs/interfaces.md`` section 3). JSON-serialisable.
        dashboard_url: base URL of the Ray dashboard.
        timeout: seconds to wait until every application is RUNNING, every listed deployment
            HEALTHY with all replicas RUNNING and carrying the requested ``user_config``.

    Returns:
        The final :func:`serve_status` JSON.

    Raises:
        RuntimeError: the PUT was refused, or an application reached DEPLOY_FAILED /
            UNHEALTHY (the message includes Serve's reason).
        TimeoutError: not running within ``timeout`` seconds (includes the last status).
    """
    payload = json.loads(json.dumps(config))  # fail early on non-JSON values
    # last_deployed_time_s is set by the controller; allow for clock rounding.
    since = time.time() - 1.0
    resp = requests.put(f"{dashboard_url}/api/serve/applications/", json=payload, timeout=120)
    if resp.status_code != 200:
        raise RuntimeError(f"PUT /api/serve/applications/ -> {resp.status_code}: {resp.text}")
    wanted = {a["name"]: a for a in payload.get("applications", [])}
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = serve_status(dashboard_url)
        apps = status.get("applications") or {}
        for name in wanted:
            app = apps.get(name) or {}
            if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(
                    f"application {name!r} is {app['status']}: {app.get('message', '')}"
                )
        stale = set(apps) - set(wanted)
        if not stale and all(_app_ready(cfg, apps.get(n), since) for n, cfg in wanted.items()):
            return status
        time.sleep(0.5)
    summary = {
        n: {
            "status": a.get("status"),
            "message": (a.get("message") or "")[:500],
            "deployments": {d: v.get("status") for d, v in (a.get("deployments") or {}).items()},
        }
        for n, a in (status.get("applications") or {}).items()
    }
    raise TimeoutError(f"Serve config not running after {timeout:.0f} s: {summary}")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One local Ray head + dashboard + Serve proxy for the whole session (see module doc)."""
    cluster = start_ray_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
