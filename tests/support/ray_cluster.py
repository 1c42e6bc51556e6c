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

Ray 2.60 notes (read from the installed ``ray/scripts/scripts.py``): the head runs with token
authentication, as ``lorafleet up``'s does: every dashboard request needs
``headers=ray_cluster.auth_headers`` (the helpers here take ``token=ray_cluster.token``), and a
subprocess that calls ``ray.init`` needs ``env=ray_cluster.env`` (``RAY_AUTH_TOKEN_PATH``).
``ray stop`` kills *every* Ray process on the machine by name, so teardown here signals only the
process group this fixture started. Worker ports are random (``--min-worker-port=0
--max-worker-port=0``) and every fixed-default port (GCS, dashboard, dashboard agent, client
server, metrics) is a free loopback port, so several sessions can run side by side on one
machine.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from lorafleet_operator.local.ray_head import LOOPBACK, LocalRayHead, free_port
from lorafleet_operator.local.ray_token import bearer_headers
from lorafleet_operator.local.serve_rest import DeployFailed, ServeREST

__all__ = [
    "RayCluster",
    "deploy_serve_config",
    "free_port",
    "ray_cluster",
    "replica_pids",
    "serve_status",
    "start_ray_cluster",
]

#: Seconds to wait for the head (GCS, raylet, dashboard) to come up.
START_TIMEOUT_S = 120.0


@dataclass
class RayCluster:
    """A running local Ray head with dashboard and Serve HTTP proxy.

    The head is started exactly as ``lorafleet up`` starts its own
    (:class:`lorafleet_operator.local.ray_head.LocalRayHead`); the tests add Serve's HTTP proxy
    on a free loopback port.

    Attributes:
        head: the Ray head (``ray start --head --block``, dashboard on loopback, token auth).
        http_url: ``http://127.0.0.1:<port>``, the Serve HTTP proxy.
        env: environment for subprocesses that talk to this cluster (its token file in
            ``RAY_AUTH_TOKEN_PATH``).
    """

    head: LocalRayHead
    http_url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """GCS address ``127.0.0.1:<port>`` (for ``ray.init(address=...)``)."""
        return self.head.gcs_address

    @property
    def dashboard_url(self) -> str:
        """``http://127.0.0.1:<port>``, base of the dashboard REST API."""
        return self.head.dashboard_url

    @property
    def token(self) -> str:
        """The cluster's Ray authentication token (for :class:`ServeREST` and the helpers)."""
        return self.head.token

    @property
    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}`` for requests to the dashboard."""
        return self.head.auth_headers

    @property
    def token_file(self) -> Path:
        """The token file (0600); give it to ``lorafleet up`` as ``RAY_AUTH_TOKEN_PATH``."""
        return self.head.token_file

    @property
    def temp_dir(self) -> Path:
        """Ray's ``--temp-dir`` (logs under ``session_latest/logs``)."""
        return self.head.temp_dir

    @property
    def pid(self) -> int:
        """Process id of the blocking ``ray start`` process (leader of its process group)."""
        return self.head.pid

    @property
    def logs_dir(self) -> Path:
        """Ray's log folder for this session (``<temp_dir>/session_latest/logs``)."""
        return self.head.logs_dir

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every process of this cluster, and only those (never ``ray stop``, which kills
        every Ray process on the machine, other sessions' too); the temp dir is kept.

        Args:
            grace_s: seconds to wait for a graceful exit before SIGKILL.
        """
        self.head.stop(grace_s=grace_s, remove_temp=False)


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
        TimeoutError: the Serve proxy did not answer in time.
    """
    head = LocalRayHead.start(num_cpus=num_cpus, timeout_s=timeout_s)
    http_port = free_port()
    cluster = RayCluster(
        head=head, http_url=f"http://{LOOPBACK}:{http_port}", env=head.client_env()
    )
    try:
        # Start Serve (controller + proxy) with the proxy on our loopback port. Later PUTs
        # that omit http_options keep these (Serve ignores HTTP options once running).
        resp = requests.put(
            f"{cluster.dashboard_url}/api/serve/applications/",
            json={
                "http_options": {"host": LOOPBACK, "port": http_port},
                "applications": [],
            },
            headers=head.auth_headers,
            timeout=120,
        )
        if resp.status_code != 200:
            raise RuntimeError(f"starting Serve failed: HTTP {resp.status_code}: {resp.text}")
        # The proxy answers 503 "Route table is not populated yet" until an application
        # is deployed: any answer from it means it is listening.
        _wait_http_ok(
            f"{cluster.http_url}/-/healthz",
            timeout_s,
            head._proc,
            head.temp_dir / "ray-start.log",
            (200, 503),
        )
    except BaseException:
        head.stop(remove_temp=True)
        raise
    return cluster


def serve_status(
    dashboard_url: str, timeout_s: float = 30.0, *, token: str | None = None
) -> dict[str, Any]:
    """Return Serve's status as the dashboard reports it.

    Args:
        dashboard_url: base URL of the Ray dashboard.
        timeout_s: HTTP timeout in seconds.
        token: the cluster's Ray token (``ray_cluster.token``).

    Returns:
        The JSON of ``GET /api/serve/applications/`` (``ServeInstanceDetails``): keys
        ``applications`` (name -> status, message, deployments -> replicas with ``pid``),
        ``http_options``, ``controller_info``.

    Raises:
        requests.HTTPError: the dashboard answered with an error status.
    """
    resp = requests.get(
        f"{dashboard_url}/api/serve/applications/",
        headers=bearer_headers(token),
        timeout=timeout_s,
    )
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


def deploy_serve_config(
    dashboard_url: str,
    config: dict[str, Any],
    timeout: float = 300.0,
    *,
    token: str | None = None,
) -> dict[str, Any]:
    """PUT a Serve config to the dashboard and wait until it is running.

    This is what KubeRay does with a RayService's ``serveConfigV2``, done by the same client
    ``lorafleet up`` uses (:class:`lorafleet_operator.local.serve_rest.ServeREST`). A second
    PUT that changes only a deployment's ``user_config`` updates replicas in place
    (``reconfigure()``).

    Args:
        dashboard_url: base URL of the Ray dashboard.
        config: a ``ServeDeploySchema`` dict (``{"applications": [...]}``, see
            ``docs/interfaces.md`` section 3). JSON-serialisable.
        timeout: seconds to wait until every application is RUNNING, every listed deployment
            HEALTHY with all replicas RUNNING and carrying the requested ``user_config``, and
            applications left out of ``config`` are gone.
        token: the cluster's Ray token (``ray_cluster.token``).

    Returns:
        The final :func:`serve_status` JSON.

    Raises:
        RuntimeError: the PUT was refused, or an application reached DEPLOY_FAILED /
            UNHEALTHY (the message includes Serve's reason).
        TimeoutError: not running within ``timeout`` seconds (includes the last status).
    """
    apps = list(config.get("applications", []))
    stale = set(serve_status(dashboard_url, token=token).get("applications") or {}) - {
        a["name"] for a in apps
    }
    rest = ServeREST(dashboard_url, token=token)
    try:
        since = rest.deploy(apps, http_options=config.get("http_options"))
        return rest.wait_running(apps, since, timeout, gone=stale)
    except DeployFailed as exc:
        if exc.reason == "DeployTimeout":
            raise TimeoutError(str(exc)) from exc
        raise
    finally:
        rest.close()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One local Ray head + dashboard + Serve proxy for the whole session (see module doc)."""
    cluster = start_ray_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
