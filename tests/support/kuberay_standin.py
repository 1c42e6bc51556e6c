"""A TEST STAND-IN for the KubeRay operator: deploys RayServices to a local Ray.

For a RayService, the KubeRay operator (v1.x, ``controllers/ray/rayservice_controller.go``)
creates a RayCluster, converts ``spec.serveConfigV2`` (a YAML string in Ray Serve's
``ServeDeploySchema`` shape) to JSON and ``PUT``s it to the Ray dashboard's
``/api/serve/applications/``; it re-sends the config only when it changed, polls
``GET /api/serve/applications/`` and mirrors what it sees into the RayService status:
``activeServiceStatus.applicationStatuses`` (per application ``status``/``message`` and
``serveDeploymentStatuses``), the ``Ready`` condition (reason ``NonZeroServeEndpoints`` when
serving, ``Initializing`` before), ``UpgradeInProgress=False`` and the deprecated
``serviceStatus: Running`` that KubeRay keeps equal to ``Ready``.

:class:`KubeRayStandIn` does the same against one local Ray (the ``ray_cluster`` fixture of
``tests/support/ray_cluster.py``) instead of a RayCluster per RayService. Because every
RayService shares that one Ray, and a ``PUT`` replaces all applications, the stand-in sends
the union of the applications of every RayService it manages; two RayServices with the same
application name or ``route_prefix`` are reported as an error in the later one's status.
Paths inside the serve config that live on cluster volumes (``/models/...``) are rewritten
through ``path_map`` to local folders before the ``PUT``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

__all__ = ["KubeRayStandIn", "rewrite_paths"]

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
SERVE_PATH = "/api/serve/applications/"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rewrite_paths(value: Any, path_map: Mapping[str, str]) -> Any:
    """Rewrite container paths to local folders in every string of a nested structure.

    A string equal to a mapped prefix, or starting with ``prefix + "/"``, has that prefix
    replaced (longest prefix first); other strings are left alone.

    Args:
        value: a JSON-like structure (dicts, lists, strings, numbers).
        path_map: ``{container path prefix: local folder}``, e.g. ``{"/models": "/tmp/x"}``.

    Returns:
        A rewritten deep copy of ``value``.
    """
    prefixes = sorted(((k.rstrip("/"), v) for k, v in path_map.items()), key=lambda kv: -len(kv[0]))

    def one(s: str) -> str:
        for prefix, local in prefixes:
            if s == prefix or s.startswith(prefix + "/"):
                return local.rstrip("/") + s[len(prefix) :]
        return s

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return one(v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(copy.deepcopy(value))


@dataclass
class _Managed:
    generation: int
    config: dict[str, Any]  # rewritten serve config of this RayService
    error: str = ""


class KubeRayStandIn:
    """Deploys RayServices' ``serveConfigV2`` to a local Ray and mirrors readiness (tests only).

    Args:
        api_client: a ``kubernetes.client.ApiClient`` for the test cluster.
        dashboard_url: base URL of the local Ray dashboard, e.g. ``http://127.0.0.1:8265``.
        path_map: ``{container path prefix: local folder}`` applied to every string of the
            serve config before it is sent (for example ``{"/models": str(tmp_models)}``).
        headers: extra HTTP headers for the dashboard (e.g. ``Authorization: Bearer ...``
            when the Ray cluster uses token authentication).
        request_timeout: seconds for one dashboard request.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        dashboard_url: str,
        *,
        path_map: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        request_timeout: float = 30.0,
    ):
        self.custom = client.CustomObjectsApi(api_client)
        self.dashboard_url = dashboard_url.rstrip("/")
        self.path_map = {k: str(v) for k, v in (path_map or {}).items()}
        self.session = requests.Session()
        self.session.headers.update(dict(headers or {}))
        self.request_timeout = request_timeout
        self._managed: dict[tuple[str, str], _Managed] = {}
        self._last_sent: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    # ------------------------------------------------------------------ one reconcile

    def reconcile(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Deploy RayService ``namespace/name`` (if its config changed) and update its status.

        Args:
            namespace: the RayService's namespace.
            name: its name.

        Returns:
            The status written, or None when the RayService does not exist (its applications
            are then removed from Ray).

        Raises:
            requests.HTTPError: the dashboard refused the serve config (the error is also put
                into the RayService status, as KubeRay records a failed deploy).
        """
        key = (namespace, name)
        with self._lock:
            try:
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name
                )
            except ApiException as e:
                if e.status != 404:
                    raise
                if self._managed.pop(key, None) is not None:
                    self._deploy()
                return None
            generation = obj["metadata"].get("generation", 0)
            text = obj.get("spec", {}).get("serveConfigV2") or ""
            try:
                config = yaml.safe_load(text) if text else {"applications": []}
                if not isinstance(config, dict):
                    raise ValueError("serveConfigV2 is not a YAML mapping")
                config = rewrite_paths(config, self.path_map)
                self._managed[key] = _Managed(generation, config)
                self._check_conflicts(key)
                self._deploy()
            except (ValueError, yaml.YAMLError, requests.HTTPError) as e:
                self._managed.setdefault(key, _Managed(generation, {"applications": []}))
                self._managed[key].error = f"serveConfigV2 of RayService {namespace}/{name}: {e}"
                status = self._status(obj, key, {})
                self._write_status(namespace, name, status)
                raise
            return self.refresh_status(namespace, name, obj)

    def refresh_status(
        self, namespace: str, name: str, obj: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Read the applications' state from Ray and write it into the RayService status.

        Args:
            namespace: the RayService's namespace.
            name: its name.
            obj: the RayService as just read (read again when None).

        Returns:
            The status written, or None when the RayService is gone.
        """
        key = (namespace, name)
        if obj is None:
            try:
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name
                )
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
        resp = self.session.get(self.dashboard_url + SERVE_PATH, timeout=self.request_timeout)
        resp.raise_for_status()
        apps = resp.json().get("applications") or {}
        status = self._status(obj, key, apps)
        self._write_status(namespace, name, status)
        return status

    def wait_ready(self, namespace: str, name: str, timeout: float = 300.0) -> dict[str, Any]:
        """Reconcile until the RayService is ``Ready`` (every application ``RUNNING``).

        Args:
            namespace: the RayService's namespace.
            name: its name.
            timeout: seconds to wait.

        Returns:
            The final status.

        Raises:
            TimeoutError: not ready in time; the message carries the applications' state.
        """
        deadline = time.monotonic() + timeout
        status = self.reconcile(namespace, name)
        while True:
            if status and status.get("serviceStatus") == "Running":
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"RayService {namespace}/{name} not Ready after {timeout:.0f} s: "
                    f"{(status or {}).get('activeServiceStatus')}"
                )
            time.sleep(1.0)
            status = self.reconcile(namespace, name)

    # ------------------------------------------------------------------ watcher mode

    def start(self, namespaces: Iterable[str], interval: float = 1.0) -> None:
        """Reconcile every RayService of ``namespaces`` in the background.

        Args:
            namespaces: namespaces to watch.
            interval: seconds between passes.
        """
        if self._thread is not None:
            raise RuntimeError("KubeRayStandIn.start() called twice")
        self._namespaces = list(namespaces)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="kuberay-standin", daemon=True
        )
        self._thread.start()

    def stop(self, remove_applications: bool = True) -> None:
        """Stop the background mode.

        Args:
            remove_applications: also remove from Ray the applications this stand-in deployed.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if remove_applications:
            with self._lock:
                had = bool(self._managed)
                self._managed.clear()
                if had:
                    with contextlib.suppress(requests.RequestException):
                        self._deploy()

    def __enter__(self) -> KubeRayStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            seen: set[tuple[str, str]] = set()
            for ns in self._namespaces:
                try:
                    items = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)[
                        "items"
                    ]
                except Exception as e:
                    if not self._stop.is_set():
                        log.warning("kuberay stand-in: listing RayServices in %s: %s", ns, e)
                    continue
                for obj in items:
                    key = (ns, obj["metadata"]["name"])
                    seen.add(key)
                    try:
                        managed = self._managed.get(key)
                        if managed is None or managed.generation != obj["metadata"].get(
                            "generation"
                        ):
                            self.reconcile(*key)
                        else:
                            self.refresh_status(*key, obj)
                    except Exception as e:
                        log.warning("kuberay stand-in: RayService %s/%s: %s", *key, e)
                        self.errors.append(e)
            with self._lock:
                gone = [k for k in self._managed if k[0] in self._namespaces and k not in seen]
                for k in gone:
                    self._managed.pop(k, None)
                if gone:
                    try:
                        self._deploy()
                    except Exception as e:
                        self.errors.append(e)
            self._stop.wait(interval)

    # ------------------------------------------------------------------ internals

    def _check_conflicts(self, key: tuple[str, str]) -> None:
        mine = self._managed[key].config.get("applications") or []
        for other_key, other in self._managed.items():
            if other_key == key:
                continue
            for app in other.config.get("applications") or []:
                for a in mine:
                    if a.get("name") == app.get("name"):
                        raise ValueError(
                            f"application name {a.get('name')!r} is also used by RayService "
                            f"{other_key[0]}/{other_key[1]} on the shared local Ray"
                        )
                    if a.get("route_prefix", "/") == app.get("route_prefix", "/"):
                        raise ValueError(
                            f"route_prefix {a.get('route_prefix', '/')!r} is also used by "
                            f"RayService {other_key[0]}/{other_key[1]} on the shared local Ray"
                        )

    def _deploy(self) -> None:
        """PUT the union of all managed applications, when it differs from the last PUT."""
        body: dict[str, Any] = {"applications": []}
        for m in self._managed.values():
            if m.error:
                continue
            for k, v in m.config.items():
                if k != "applications":
                    body.setdefault(k, v)
            body["applications"].extend(m.config.get("applications") or [])
        if body == self._last_sent:
            return
        resp = self.session.put(
            self.dashboard_url + SERVE_PATH, json=body, timeout=self.request_timeout
        )
        if resp.status_code >= 400:
            raise requests.HTTPError(
                f"dashboard refused the serve config: HTTP {resp.status_code}: {resp.text[:2000]}",
                response=resp,
            )
        self._last_sent = body

    def _status(
        self, obj: Mapping[str, Any], key: tuple[str, str], apps: Mapping[str, Any]
    ) -> dict[str, Any]:
        managed = self._managed.get(key)
        wanted = (
            [a.get("name") for a in (managed.config.get("applications") or [])] if managed else []
        )
        app_statuses: dict[str, Any] = {}
        for name in wanted:
            details = apps.get(name) or {}
            deployments = {
                dname: {"status": d.get("status", ""), "message": d.get("message", "")}
                for dname, d in (details.get("deployments") or {}).items()
            }
            app_statuses[name] = {
                "status": details.get("status", "NOT_STARTED"),
                "message": details.get("message", ""),
                "serveDeploymentStatuses": deployments,
            }
        error = managed.error if managed else ""
        ready = (
            not error
            and bool(wanted)
            and all(s["status"] == "RUNNING" for s in app_statuses.values())
        )
        old = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}

        def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
            prev = old.get(ctype)
            changed = prev is None or prev.get("status") != status
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": obj["metadata"].get("generation", 0),
                "lastTransitionTime": (
                    _now() if changed else prev.get("lastTransitionTime") or _now()
                ),
            }

        if ready:
            ready_cond = cond(
                "Ready",
                "True",
                "NonZeroServeEndpoints",
                "Number of serve endpoints is greater than 0",
            )
        elif (old.get("Ready") or {}).get("status") == "True":
            ready_cond = cond(
                "Ready",
                "False",
                "ZeroServeEndpoints",
                error or "Number of serve endpoints dropped to 0",
            )
        else:
            ready_cond = cond(
                "Ready", "False", "Initializing", error or "RayService is initializing"
            )
        status: dict[str, Any] = {
            "conditions": [
                ready_cond,
                cond(
                    "UpgradeInProgress",
                    "False",
                    "NoPendingCluster",
                    "Active Ray cluster exists and no pending Ray cluster",
                ),
            ],
            "lastUpdateTime": _now(),
            "observedGeneration": obj["metadata"].get("generation", 0),
            "numServeEndpoints": 1 if ready else 0,
            "serviceStatus": "Running" if ready else None,
            "activeServiceStatus": {
                "applicationStatuses": app_statuses,
                "rayClusterName": f"{key[1]}-standin",
            },
        }
        return status

    def _write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status != 404:
                raise
