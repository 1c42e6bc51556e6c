"""Operator settings: one place for every knob, read from environment variables or CLI flags.

The Helm chart maps its values onto these environment variables (names in the ``ENV_*``
constants). ``lorafleet operator`` flags override the environment.

| variable | default | meaning |
| --- | --- | --- |
| ``LORAFLEET_INSTALLER_IMAGE`` | ``ghcr.io/lorafleet/lorafleet:0.1.0`` | image of install/cleanup Jobs |
| ``LORAFLEET_SERVING_IMAGE`` | installer image | image of the Ray pods (spec.serving.image wins) |
| ``LORAFLEET_IMAGE_PULL_POLICY`` | ``IfNotPresent`` | pull policy of Jobs and Ray pods |
| ``LORAFLEET_IMAGE_PULL_SECRETS`` | none | comma-separated Secret names: ``imagePullSecrets`` of Jobs and Ray pods |
| ``LORAFLEET_RAY_VERSION`` | ``2.60.0`` | RayService ``rayVersion`` (spec.serving.rayVersion wins) |
| ``LORAFLEET_DEFAULT_CLAIM`` | ``lorafleet-models`` | RWX claim used when a BaseModel has no spec.storage |
| ``LORAFLEET_MODELS_MOUNT`` | ``/models`` | where the volume is mounted in Jobs and Ray pods |
| ``LORAFLEET_HF_ENDPOINT`` | unset | ``HF_ENDPOINT`` given to install Jobs (a Hub mirror) |
| ``LORAFLEET_AWS_ENDPOINT_URL`` | unset | ``AWS_ENDPOINT_URL`` given to install Jobs |
| ``LORAFLEET_JOB_BACKOFF_LIMIT`` | ``2`` | Job ``backoffLimit`` (retries after the first failure) |
| ``LORAFLEET_JOB_DEADLINE_S`` | ``3600`` | Job ``activeDeadlineSeconds`` |
| ``LORAFLEET_JOB_TTL_S`` | ``3600`` | Job ``ttlSecondsAfterFinished`` |
| ``LORAFLEET_INSTALLER_RESOURCES`` | none | install Job container ``resources``, JSON: ``{"requests": {...}, "limits": {...}}`` |
| ``LORAFLEET_GPU_RESOURCE_NAME`` | ``nvidia.com/gpu`` | extended resource Ray workers request for ``spec.serving.gpus`` |
| ``LORAFLEET_RUN_AS_USER`` | ``10001`` | uid (and gid/fsGroup) of Job and Ray pods: the image's own user |
| ``LORAFLEET_READY_TIMEOUT_S`` | ``900`` | seconds a RayService may take to become ready before ``Degraded`` |
| ``LORAFLEET_POLL_INTERVAL_S`` | ``2`` | seconds between checks of running Jobs / RayServices |
| ``LORAFLEET_DEBOUNCE_S`` | ``1.0`` | coalescing window of serve-config writes, in seconds |
| ``LORAFLEET_REGISTRY_WRITE_INTERVAL_S`` | ``4.0`` | least time between adapter-registry writes of one BaseModel |
| ``LORAFLEET_MODELS_LOCAL_ROOT`` | unset | where the operator itself sees the volume: progress is read from the installer's progress files there instead of the install Pod's log (tests, local setups) |
| ``LORAFLEET_SERVE_PORT`` | ``8000`` | Ray Serve HTTP port, used in ``status.endpoint`` |
| ``LORAFLEET_METRICS_PORT`` | ``9090`` | Prometheus metrics port (0 disables) |
| ``LORAFLEET_HEALTH_PORT`` | ``8080`` | liveness endpoint port (0 disables) |
| ``LORAFLEET_LISTEN_HOST`` | ``0.0.0.0`` | address the metrics and liveness servers listen on |
| ``LORAFLEET_NAMESPACES`` | all | comma-separated namespaces to watch |
| ``LORAFLEET_PEERING`` | standalone | kopf peering name (several replicas, one active) |
| ``LORAFLEET_LOG_FORMAT`` | ``json`` | ``json`` or ``plain`` logs |
| ``LORAFLEET_NETWORK_POLICY`` | ``true`` | make a NetworkPolicy per BaseModel that admits to its Ray Pods only their own cluster, KubeRay (dashboard) and clients of the Serve port |
| ``LORAFLEET_SERVING_PROBE`` | ``true`` | before Ready, ask each Serve application through its Service (``GET /stats``) that it answers and lists the adapter; ``false`` only where the operator cannot reach the Serve Services (Ready then follows KubeRay's condition alone) |
| ``LORAFLEET_SERVING_PROBE_URL`` | unset | where the probe asks instead of ``http://<name>-serve-svc.<namespace>.svc:<port>``, a template with ``{service}``, ``{namespace}``, ``{port}`` (no credentials, query or fragment): for an operator outside the cluster reaching the Serve Services through a port-forward or an ingress |
| ``LORAFLEET_SERVING_STATUS_INTERVAL_S`` | ``15`` | while a Ready BaseModel's residency changes or requests flow, seconds between reads of its replicas' residency into ``status.serving`` |
| ``LORAFLEET_SERVING_STATUS_IDLE_S`` | ``120`` | the same once two reads in a row saw nothing move |
| ``LORAFLEET_SLOW_LOAD_S`` | ``30`` | an adapter load on a replica slower than this many seconds is a ``SlowLoad`` Warning Event on the LoraAdapter |
| ``LORAFLEET_METRICS_SCRAPER_NAMESPACE`` | unset | namespace of the Prometheus that scrapes the Ray Pods: each BaseModel's NetworkPolicy admits it to Ray's metrics port (8080) |
| ``LORAFLEET_KUBERAY_NAMESPACE`` | ``kuberay-system`` | namespace of the KubeRay operator (admitted to Ray's dashboard port) |
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

ENV_INSTALLER_IMAGE = "LORAFLEET_INSTALLER_IMAGE"
ENV_SERVING_IMAGE = "LORAFLEET_SERVING_IMAGE"
ENV_IMAGE_PULL_POLICY = "LORAFLEET_IMAGE_PULL_POLICY"
ENV_IMAGE_PULL_SECRETS = "LORAFLEET_IMAGE_PULL_SECRETS"
ENV_RAY_VERSION = "LORAFLEET_RAY_VERSION"
ENV_DEFAULT_CLAIM = "LORAFLEET_DEFAULT_CLAIM"
ENV_MODELS_MOUNT = "LORAFLEET_MODELS_MOUNT"
ENV_HF_ENDPOINT = "LORAFLEET_HF_ENDPOINT"
ENV_AWS_ENDPOINT_URL = "LORAFLEET_AWS_ENDPOINT_URL"
ENV_JOB_BACKOFF_LIMIT = "LORAFLEET_JOB_BACKOFF_LIMIT"
ENV_JOB_DEADLINE_S = "LORAFLEET_JOB_DEADLINE_S"
ENV_SERVING_STATUS_INTERVAL_S = "LORAFLEET_SERVING_STATUS_INTERVAL_S"
ENV_METRICS_SCRAPER_NAMESPACE = "LORAFLEET_METRICS_SCRAPER_NAMESPACE"
ENV_SLOW_LOAD_S = "LORAFLEET_SLOW_LOAD_S"
ENV_SERVING_PROBE_URL = "LORAFLEET_SERVING_PROBE_URL"
ENV_SERVING_STATUS_IDLE_S = "LORAFLEET_SERVING_STATUS_IDLE_S"
ENV_JOB_TTL_S = "LORAFLEET_JOB_TTL_S"
ENV_INSTALLER_RESOURCES = "LORAFLEET_INSTALLER_RESOURCES"
ENV_GPU_RESOURCE_NAME = "LORAFLEET_GPU_RESOURCE_NAME"
ENV_RUN_AS_USER = "LORAFLEET_RUN_AS_USER"
ENV_READY_TIMEOUT_S = "LORAFLEET_READY_TIMEOUT_S"
ENV_POLL_INTERVAL_S = "LORAFLEET_POLL_INTERVAL_S"
ENV_DEBOUNCE_S = "LORAFLEET_DEBOUNCE_S"
ENV_REGISTRY_WRITE_INTERVAL_S = "LORAFLEET_REGISTRY_WRITE_INTERVAL_S"
ENV_MODELS_LOCAL_ROOT = "LORAFLEET_MODELS_LOCAL_ROOT"
ENV_SERVE_PORT = "LORAFLEET_SERVE_PORT"
ENV_METRICS_PORT = "LORAFLEET_METRICS_PORT"
ENV_HEALTH_PORT = "LORAFLEET_HEALTH_PORT"
ENV_LISTEN_HOST = "LORAFLEET_LISTEN_HOST"
ENV_NAMESPACES = "LORAFLEET_NAMESPACES"
ENV_PEERING = "LORAFLEET_PEERING"
ENV_LOG_FORMAT = "LORAFLEET_LOG_FORMAT"
ENV_KUBERAY_NAMESPACE = "LORAFLEET_KUBERAY_NAMESPACE"
ENV_NETWORK_POLICY = "LORAFLEET_NETWORK_POLICY"
ENV_SERVING_PROBE = "LORAFLEET_SERVING_PROBE"

DEFAULT_IMAGE = "ghcr.io/lorafleet/lorafleet:0.1.0"
DEFAULT_GPU_RESOURCE_NAME = "nvidia.com/gpu"

# Kubernetes grammar (k8s.io/apimachinery): a resource quantity (pkg/api/resource/quantity.go),
# a qualified name with an optional DNS-subdomain prefix (pkg/util/validation), and a
# DNS subdomain (Secret names).
_QUANTITY = re.compile(
    r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


class SettingsError(ValueError):
    """An environment variable or flag has a value of the wrong kind."""


@dataclass(frozen=True)
class Settings:
    """Everything the operator's reconcile logic can be tuned with.

    Attributes:
        installer_image: Image of install and cleanup Jobs.
        serving_image: Image of Ray head/worker pods (``None``: the installer image).
        image_pull_policy: ``Always``, ``IfNotPresent`` or ``Never``.
        image_pull_secrets: Names of Secrets (in each BaseModel's namespace) listed as
            ``imagePullSecrets`` of install/cleanup Jobs and Ray pods; empty for none.
        ray_version: RayService ``rayVersion``.
        default_claim: RWX PersistentVolumeClaim used when ``spec.storage`` is not set.
        models_mount: Mount path of the volume in Jobs and Ray pods.
        hf_endpoint: ``HF_ENDPOINT`` for install Jobs, or ``None``.
        aws_endpoint_url: ``AWS_ENDPOINT_URL`` for install Jobs, or ``None``.
        job_backoff_limit: Job ``backoffLimit``.
        job_deadline_s: Job ``activeDeadlineSeconds`` (seconds).
        job_ttl_s: Job ``ttlSecondsAfterFinished`` (seconds).
        installer_resources: ``resources`` of the install Job container (``requests`` and
            ``limits``, resource name -> Kubernetes quantity string); empty for none.
        gpu_resource_name: Extended resource the Ray worker pods request ``spec.serving.gpus``
            of (``nvidia.com/gpu``, ``amd.com/gpu``, ...).
        run_as_user: uid/gid/fsGroup of pods (non-root); default 10001, the user the image
            (Dockerfile) and the chart (``runAsUser``) use.
        ready_timeout_s: Seconds a RayService may take to become ready before ``Degraded``.
        poll_interval_s: Seconds between checks of running Jobs and RayServices.
        debounce_s: Coalescing window of serve config writes (seconds).
        registry_write_interval_s: Least time between two adapter-registry (user_config)
            writes of one BaseModel, in seconds; a burst of adapter changes waits for it.
        models_local_root: Where the operator sees the volume, or None; when set, progress is
            read from the installer's progress files there instead of the install Pod's log.
        serve_port: Ray Serve HTTP port (for ``status.endpoint``).
        metrics_port: Prometheus port, 0 disables.
        health_port: Liveness port, 0 disables.
        listen_host: Address the metrics and liveness servers bind.
        namespaces: Namespaces to watch; empty means all.
        peering: kopf peering name, or ``None`` for standalone.
        log_format: ``json`` or ``plain``.
        network_policy: Whether each BaseModel gets a NetworkPolicy for its Ray Pods.
        kuberay_namespace: Namespace of the KubeRay operator, admitted to the Ray dashboard
            port by that NetworkPolicy.
        serving_probe: Whether Ready waits for the Serve application to answer through its
            Service and list the adapter (:mod:`lorafleet_operator.serveprobe`).
        serving_status_interval_s: Seconds between reads of a Ready BaseModel's residency
            (``status.serving``) while it changes or requests flow.
        serving_status_idle_s: The same once nothing moves.
        metrics_scraper_namespace: Namespace whose Pods (Prometheus) the NetworkPolicy admits
            to Ray's metrics port, or ``None``.
        slow_load_s: Adapter load seconds above which a ``SlowLoad`` Warning is posted.
        serving_probe_url: Template of the URL the probe asks (``{service}``, ``{namespace}``,
            ``{port}``), or ``None`` for the in-cluster Serve Service URL.
    """

    installer_image: str = DEFAULT_IMAGE
    serving_image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = field(default_factory=tuple)
    ray_version: str = "2.60.0"
    default_claim: str = "lorafleet-models"
    models_mount: str = "/models"
    hf_endpoint: str | None = None
    aws_endpoint_url: str | None = None
    job_backoff_limit: int = 2
    job_deadline_s: int = 3600
    job_ttl_s: int = 3600
    installer_resources: dict[str, dict[str, str]] = field(default_factory=dict)
    gpu_resource_name: str = DEFAULT_GPU_RESOURCE_NAME
    run_as_user: int = 10001
    ready_timeout_s: float = 900.0
    poll_interval_s: float = 2.0
    debounce_s: float = 1.0
    registry_write_interval_s: float = 4.0
    models_local_root: str | None = None
    serve_port: int = 8000
    metrics_port: int = 9090
    health_port: int = 8080
    listen_host: str = "0.0.0.0"
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    peering: str | None = None
    log_format: str = "json"
    network_policy: bool = True
    kuberay_namespace: str = "kuberay-system"
    serving_probe: bool = True
    serving_status_interval_s: float = 15.0
    serving_status_idle_s: float = 120.0
    metrics_scraper_namespace: str | None = None
    slow_load_s: float = 30.0
    serving_probe_url: str | None = None

    @property
    def ray_image(self) -> str:
        """Image of the Ray pods when the BaseModel does not name one."""
        return self.serving_image or self.installer_image

    def with_overrides(self, **overrides: object) -> Settings:
        """Return a copy with the given (non-``None``) fields replaced.

        Args:
            **overrides: Field name -> value; ``None`` values are ignored.

        Returns:
            The new settings.
        """
        changes: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **changes)


_ENV_FIELDS: dict[str, str] = {
    "installer_image": ENV_INSTALLER_IMAGE,
    "serving_image": ENV_SERVING_IMAGE,
    "image_pull_policy": ENV_IMAGE_PULL_POLICY,
    "image_pull_secrets": ENV_IMAGE_PULL_SECRETS,
    "ray_version": ENV_RAY_VERSION,
    "default_claim": ENV_DEFAULT_CLAIM,
    "models_mount": ENV_MODELS_MOUNT,
    "hf_endpoint": ENV_HF_ENDPOINT,
    "aws_endpoint_url": ENV_AWS_ENDPOINT_URL,
    "job_backoff_limit": ENV_JOB_BACKOFF_LIMIT,
    "job_deadline_s": ENV_JOB_DEADLINE_S,
    "job_ttl_s": ENV_JOB_TTL_S,
    "installer_resources": ENV_INSTALLER_RESOURCES,
    "gpu_resource_name": ENV_GPU_RESOURCE_NAME,
    "run_as_user": ENV_RUN_AS_USER,
    "ready_timeout_s": ENV_READY_TIMEOUT_S,
    "poll_interval_s": ENV_POLL_INTERVAL_S,
    "debounce_s": ENV_DEBOUNCE_S,
    "registry_write_interval_s": ENV_REGISTRY_WRITE_INTERVAL_S,
    "models_local_root": ENV_MODELS_LOCAL_ROOT,
    "serve_port": ENV_SERVE_PORT,
    "metrics_port": ENV_METRICS_PORT,
    "health_port": ENV_HEALTH_PORT,
    "listen_host": ENV_LISTEN_HOST,
    "namespaces": ENV_NAMESPACES,
    "peering": ENV_PEERING,
    "log_format": ENV_LOG_FORMAT,
    "network_policy": ENV_NETWORK_POLICY,
    "kuberay_namespace": ENV_KUBERAY_NAMESPACE,
    "serving_probe": ENV_SERVING_PROBE,
    "serving_status_interval_s": ENV_SERVING_STATUS_INTERVAL_S,
    "serving_status_idle_s": ENV_SERVING_STATUS_IDLE_S,
    "metrics_scraper_namespace": ENV_METRICS_SCRAPER_NAMESPACE,
    "slow_load_s": ENV_SLOW_LOAD_S,
    "serving_probe_url": ENV_SERVING_PROBE_URL,
}


#: Bounds of integer settings (inclusive; None: no upper bound); others must not be negative.
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    # runAsNonRoot: uid 0 would never start; Linux uids are 32-bit.
    "run_as_user": (1, 2**31 - 1),
    "serve_port": (1, 65535),
    "metrics_port": (0, 65535),  # 0 disables
    "health_port": (0, 65535),  # 0 disables
    "job_deadline_s": (1, None),  # activeDeadlineSeconds must be positive
}
#: Float settings that must be above zero (intervals the operator sleeps).
_POSITIVE_FLOATS = frozenset(
    {
        "poll_interval_s",
        "ready_timeout_s",
        "serving_status_interval_s",
        "serving_status_idle_s",
    }
)


#: Float settings with a floor, and why.
_FLOAT_MINIMA: dict[str, tuple[float, str]] = {
    "serving_status_interval_s": (1.0, "each read asks every Serve application"),
    "serving_status_idle_s": (1.0, "each read asks every Serve application"),
    "slow_load_s": (0.001, "a threshold in seconds"),
}
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PROBE_FIELDS = frozenset({"service", "namespace", "port"})


def check_probe_url(raw: str) -> str:
    """Check a ``LORAFLEET_SERVING_PROBE_URL`` template.

    Args:
        raw: ``http(s)://host[:port][/path]`` with ``{service}``, ``{namespace}`` and ``{port}``
            placeholders (plain, no format spec or conversion).

    Returns:
        ``raw``.

    Raises:
        ValueError: Another placeholder or a format spec, not http(s), credentials in the URL
            (they would be shown in status messages), a query or fragment (``/stats`` is
            appended to the path), or whitespace.
    """
    import string
    from urllib.parse import urlsplit

    try:
        parts = list(string.Formatter().parse(raw))
    except ValueError as exc:
        raise ValueError(f"not a URL template: {exc}") from exc
    for _, field_name, spec, conversion in parts:
        if field_name is not None and (field_name not in _PROBE_FIELDS or spec or conversion):
            raise ValueError(
                f"placeholder {{{field_name}}}: use only {{service}}, {{namespace}}, {{port}}"
            )
    url = urlsplit(raw.format(service="s", namespace="n", port=1))
    if any(c.isspace() for c in raw):
        raise ValueError("must not contain whitespace")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if url.username is not None or url.password is not None:
        raise ValueError("must not hold credentials (status messages quote the URL)")
    if url.query or url.fragment:
        raise ValueError("must not have a query or fragment (/stats is appended to it)")
    return raw


def parse_resources(raw: str) -> dict[str, dict[str, str]]:
    """Parse container ``resources`` from JSON text.

    Args:
        raw: A JSON object with optional ``requests`` and ``limits`` objects, each mapping a
            resource name (``cpu``, ``memory``, ``nvidia.com/gpu``, ...) to a Kubernetes
            quantity (a string such as ``"500m"`` or ``"4Gi"``, or a number).

    Returns:
        ``{"requests": {...}, "limits": {...}}`` (only the keys given), quantities as strings.

    Raises:
        ValueError: naming the part that is not valid JSON, an unknown key, a bad resource
            name or a bad quantity.
    """
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object with requests and/or limits")
    unknown = sorted(set(data) - {"requests", "limits"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}: only requests and limits are allowed")
    resources: dict[str, dict[str, str]] = {}
    for part, amounts in data.items():
        if not isinstance(amounts, dict):
            raise ValueError(f"{part} must be an object of resource name -> quantity")
        parsed: dict[str, str] = {}
        for name, amount in amounts.items():
            if not _QUALIFIED_NAME.match(name):
                raise ValueError(f"{part}: {name!r} is not a Kubernetes resource name")
            if isinstance(amount, bool) or not isinstance(amount, (str, int, float)):
                raise ValueError(f"{part}.{name}: {amount!r} is not a Kubernetes quantity")
            text = str(amount)
            if not _QUANTITY.match(text):
                raise ValueError(f"{part}.{name}: {text!r} is not a Kubernetes quantity")
            parsed[name] = text
        resources[part] = parsed
    return resources


def _parse_names(raw: str) -> tuple[str, ...]:
    """Split comma-separated Secret names, checking each is a DNS subdomain."""
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    for name in names:
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"{name!r} is not a valid Secret name (a DNS subdomain)")
    return names


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read :class:`Settings` from environment variables (unset or empty: the default).

    Args:
        environ: The environment (default ``os.environ``).

    Returns:
        The settings.

    Raises:
        SettingsError: naming the variable whose value is not of the expected type or range.
    """
    env = os.environ if environ is None else environ
    types = {f.name: f.type for f in fields(Settings)}
    values: dict[str, object] = {}
    for name, var in _ENV_FIELDS.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        kind = types[name]
        try:
            if kind == "int":
                value: object = int(raw)
                low, high = _INT_RANGES.get(name, (0, None))
                if value < low or (high is not None and value > high):  # type: ignore[operator]
                    raise ValueError(
                        f"must be at least {low}" if high is None else f"must be {low}..{high}"
                    )
            elif kind == "float":
                value = float(raw)
                if not math.isfinite(value) or value < 0:
                    raise ValueError("must be a finite number, not negative")
                if name in _POSITIVE_FLOATS and value == 0:
                    raise ValueError("must be above 0 (0 would make the operator spin)")
                least = _FLOAT_MINIMA.get(name)
                if least is not None and value < least[0]:
                    raise ValueError(f"must be at least {least[0]:g} ({least[1]})")
            elif kind == "bool":
                if raw.lower() not in ("true", "false"):
                    raise ValueError("must be true or false")
                value = raw.lower() == "true"
            elif name == "namespaces":
                value = tuple(ns.strip() for ns in raw.split(",") if ns.strip())
            elif name == "image_pull_secrets":
                value = _parse_names(raw)
            elif name == "installer_resources":
                value = parse_resources(raw)
            elif name == "serving_probe_url":
                value = check_probe_url(raw)
            elif name == "metrics_scraper_namespace":
                if not _DNS1123_LABEL.fullmatch(raw):
                    raise ValueError("not a namespace name (a DNS-1123 label, at most 63 chars)")
                value = raw
            elif name == "gpu_resource_name":
                if not _QUALIFIED_NAME.match(raw):
                    raise ValueError("not a Kubernetes resource name such as nvidia.com/gpu")
                value = raw
            else:
                value = raw
        except ValueError as exc:
            raise SettingsError(f"environment variable {var}={raw!r}: {exc}") from exc
        values[name] = value
    metrics_port = values.get("metrics_port", Settings.metrics_port)
    if metrics_port and metrics_port == values.get("health_port", Settings.health_port):
        raise SettingsError(
            f"environment variables {ENV_METRICS_PORT} and {ENV_HEALTH_PORT} are both"
            f" {metrics_port}: the metrics and liveness servers need their own ports"
        )
    if values.get("log_format", "json") not in ("json", "plain"):
        raise SettingsError(f"environment variable {ENV_LOG_FORMAT} must be json or plain")
    if values.get("image_pull_policy", "IfNotPresent") not in ("Always", "IfNotPresent", "Never"):
        raise SettingsError(
            f"environment variable {ENV_IMAGE_PULL_POLICY} must be Always, IfNotPresent or Never"
        )
    return Settings(**values)  # type: ignore[arg-type]
