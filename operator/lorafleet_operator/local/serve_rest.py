"""Deploy serve configs to Ray through the dashboard's Serve REST API, as KubeRay does.

``PUT /api/serve/applications/`` takes a whole ``ServeDeploySchema`` (declarative: an
application missing from it is deleted); ``GET /api/serve/applications/`` returns
``ServeInstanceDetails`` (per application: ``status``, ``message``, ``last_deployed_time_s``,
``deployed_app_config``, deployments with their replicas, pids and ``deployment_config``). A PUT
that changes only a deployment's ``user_config`` is a lightweight update: Serve calls
``reconfigure()`` on the running replicas, no restart.

When ``lorafleet up`` shares a Ray cluster it did not start, :meth:`ServeREST.deploy` keeps the
applications of others (their ``deployed_app_config``) in every PUT.

A cluster with token authentication (Ray's default; always for a head ``up`` starts) needs
``Authorization: Bearer <token>`` on every request: pass ``token``. It is sent only in that
header, never put in a message.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from lorafleet_operator.local.ray_token import bearer_headers

#: Application states that mean the deployment failed (Ray Serve ``ApplicationStatus``).
FAILED_STATES = ("DEPLOY_FAILED", "UNHEALTHY")


class DeployFailed(RuntimeError):
    """Ray Serve refused a config or an application failed to deploy.

    Attributes:
        app: The application name, or ``None`` when the PUT itself was refused.
        reason: ``ServeConfigRejected``, ``DeployFailed`` or ``DeployTimeout``.
    """

    def __init__(self, reason: str, message: str, app: str | None = None) -> None:
        self.reason, self.app = reason, app
        super().__init__(message)


class DashboardUnauthorized(RuntimeError):
    """The dashboard answered 401/403: token authentication is on and no (valid) token was sent."""


class ServeREST:
    """A client of one Ray dashboard's Serve REST API.

    Args:
        dashboard_url: ``http://127.0.0.1:<port>`` of the Ray dashboard.
        timeout_s: HTTP timeout of each request, in seconds.
        token: The cluster's Ray authentication token (``None``: send none, for a cluster
            with authentication disabled).
    """

    def __init__(
        self, dashboard_url: str, timeout_s: float = 120.0, *, token: str | None = None
    ) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s, headers=bearer_headers(token))

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    @property
    def _url(self) -> str:
        return f"{self.dashboard_url}/api/serve/applications/"

    def details(self) -> dict[str, Any]:
        """Return ``GET /api/serve/applications/`` (``ServeInstanceDetails`` JSON).

        Raises:
            DashboardUnauthorized: If the dashboard refuses the token (or its absence).
            httpx.HTTPError: If the dashboard cannot be reached or answers with an error.
        """
        resp = self._client.get(self._url)
        self._check_auth(resp)
        resp.raise_for_status()
        details: dict[str, Any] = resp.json()
        return details

    def _check_auth(self, resp: httpx.Response) -> None:
        if resp.status_code in (401, 403):
            sent = "Authorization" in self._client.headers
            raise DashboardUnauthorized(
                f"the Ray dashboard {self.dashboard_url} answered {resp.status_code}: "
                + (
                    "it refuses the token (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / "
                    "~/.ray/auth_token)"
                    if sent
                    else "it needs a token; set RAY_AUTH_TOKEN_PATH to the cluster's token file"
                )
            )

    def foreign_apps(self, mine: set[str]) -> list[dict[str, Any]]:
        """The deployed configs of applications that are not ``mine`` (kept in every PUT).

        Args:
            mine: Names of the applications this ``up`` manages.

        Returns:
            Their ``deployed_app_config`` dicts.
        """
        apps = self.details().get("applications") or {}
        out = []
        for name, app in sorted(apps.items()):
            config = app.get("deployed_app_config")
            if name not in mine and config:
                out.append(config)
        return out

    def deploy(
        self,
        applications: list[dict[str, Any]],
        *,
        http_options: dict[str, Any] | None = None,
        keep_others: bool = False,
        mine: set[str] | None = None,
    ) -> float:
        """PUT the applications (plus, with ``keep_others``, everyone else's) to Serve.

        Args:
            applications: Application configs (``ServeApplicationSchema`` dicts).
            http_options: Serve's ``http_options`` (``host``/``port`` of the HTTP proxy); only
                honoured when Serve is not running yet.
            keep_others: Keep applications deployed by others on a shared cluster.
            mine: Names of every application this ``up`` manages (also those being removed).

        Returns:
            The wall-clock time (``time.time()``, seconds) just before the PUT, to compare with
            the applications' ``last_deployed_time_s``.

        Raises:
            DeployFailed: With reason ``ServeConfigRejected`` when Serve answers non-200.
            DashboardUnauthorized: If the dashboard refuses the token (or its absence).
        """
        apps = list(applications)
        if keep_others:
            names = set(mine or set()) | {a["name"] for a in apps}
            apps = self.foreign_apps(names) + apps
        payload: dict[str, Any] = {"applications": apps}
        if http_options:
            payload["http_options"] = http_options
        payload = json.loads(json.dumps(payload))  # fail early on non-JSON values
        since = time.time() - 1.0
        resp = self._client.put(self._url, json=payload)
        self._check_auth(resp)
        if resp.status_code != 200:
            raise DeployFailed(
                "ServeConfigRejected",
                f"PUT /api/serve/applications/ answered {resp.status_code}: {resp.text[:2000]}",
            )
        return since

    def wait_running(
        self,
        applications: list[dict[str, Any]],
        since: float,
        timeout_s: float,
        gone: set[str] | None = None,
    ) -> dict[str, Any]:
        """Wait until every application is RUNNING with the requested ``user_config``.

        Args:
            applications: The application configs that were deployed.
            since: Value returned by :meth:`deploy`.
            timeout_s: Seconds to wait.
            gone: Application names that must have disappeared.

        Returns:
            The last :meth:`details` JSON.

        Raises:
            DeployFailed: ``DeployFailed`` when an application is DEPLOY_FAILED or UNHEALTHY
                (with Serve's message), ``DeployTimeout`` after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        details: dict[str, Any] = {}
        while True:
            details = self.details()
            apps = details.get("applications") or {}
            for config in applications:
                app = apps.get(config["name"]) or {}
                if app.get("status") in FAILED_STATES and _deployed_after(app, since):
                    raise DeployFailed(
                        "DeployFailed",
                        f"application {config['name']!r} is {app['status']}: "
                        f"{(app.get('message') or '').strip()[-3000:]}",
                        config["name"],
                    )
            ready = all(_app_ready(c, apps.get(c["name"]), since) for c in applications)
            if ready and not (set(gone or ()) & set(apps)):
                return details
            if time.monotonic() > deadline:
                summary = {
                    c["name"]: (apps.get(c["name"]) or {}).get("status", "MISSING")
                    for c in applications
                }
                raise DeployFailed(
                    "DeployTimeout",
                    f"applications not RUNNING after {timeout_s:.0f} s: {summary}",
                )
            time.sleep(0.5)


def _deployed_after(app: dict[str, Any], since: float) -> bool:
    return float(app.get("last_deployed_time_s") or 0.0) >= since


def _app_ready(config: dict[str, Any], app: dict[str, Any] | None, since: float) -> bool:
    if not app or app.get("status") != "RUNNING" or not _deployed_after(app, since):
        return False
    deployments = app.get("deployments") or {}
    for dep_config in config.get("deployments") or []:
        dep = deployments.get(dep_config["name"])
        if dep is None or dep.get("status") != "HEALTHY":
            return False
        replicas = dep.get("replicas") or []
        if not replicas or any(r.get("state") != "RUNNING" for r in replicas):
            return False
        if "user_config" in dep_config:
            current = (dep.get("deployment_config") or {}).get("user_config")
            if current != dep_config["user_config"]:
                return False
    return True


def replica_pids(details: dict[str, Any]) -> dict[str, list[int]]:
    """Map ``"<application>/<deployment>"`` to the pids of its RUNNING replicas.

    Args:
        details: A :meth:`ServeREST.details` result.

    Returns:
        Sorted process ids per deployment.
    """
    out: dict[str, list[int]] = {}
    for app_name, app in (details.get("applications") or {}).items():
        for dep_name, dep in (app.get("deployments") or {}).items():
            out[f"{app_name}/{dep_name}"] = sorted(
                int(r["pid"])
                for r in dep.get("replicas") or []
                if r.get("pid") and r.get("state") == "RUNNING"
            )
    return out
