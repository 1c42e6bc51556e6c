"""``lorafleet operator``: run the kopf operator (handlers in :mod:`lorafleet_operator.handlers`).

Flags override the environment variables of :mod:`lorafleet_operator.settings`. Namespace
selection: ``--namespace NS`` (repeatable) or ``--all-namespaces`` (default when neither is
given and ``LORAFLEET_NAMESPACES`` is empty). Several replicas run with ``--peering NAME``: kopf
peering keeps one active. Liveness: ``http://<listen-host>:<health-port>/healthz`` (kopf's probe);
metrics: ``http://<listen-host>:<metrics-port>/metrics`` (Prometheus). ``LORAFLEET_LISTEN_HOST``
defaults to ``0.0.0.0`` because the operator runs in a Pod, where the kubelet's probe and
Prometheus reach it on the Pod IP; both endpoints serve counters and a liveness answer only
(no object data, no secrets). Outside a Pod, set ``LORAFLEET_LISTEN_HOST=127.0.0.1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from lorafleet_operator import settings as settings_mod


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and kopf's object if any."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON (``exc`` holds a formatted traceback when present)."""
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)
        if k8s:
            entry["object"] = {k: k8s.get(k) for k in ("kind", "namespace", "name") if k8s.get(k)}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _configure_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _run(args: argparse.Namespace) -> int:
    env_overrides = {
        settings_mod.ENV_INSTALLER_IMAGE: args.installer_image,
        settings_mod.ENV_DEFAULT_CLAIM: args.default_claim,
        settings_mod.ENV_HF_ENDPOINT: args.hf_endpoint,
        settings_mod.ENV_JOB_BACKOFF_LIMIT: args.job_backoff_limit,
        settings_mod.ENV_JOB_DEADLINE_S: args.job_deadline,
        settings_mod.ENV_JOB_TTL_S: args.job_ttl,
        settings_mod.ENV_READY_TIMEOUT_S: args.ready_timeout,
        settings_mod.ENV_METRICS_PORT: args.metrics_port,
        settings_mod.ENV_HEALTH_PORT: args.health_port,
        settings_mod.ENV_PEERING: args.peering,
        settings_mod.ENV_LOG_FORMAT: args.log_format,
    }
    for var, value in env_overrides.items():
        if value is not None:
            os.environ[var] = str(value)
    if args.namespace:
        os.environ[settings_mod.ENV_NAMESPACES] = ",".join(args.namespace)
    try:
        settings = settings_mod.settings_from_env()
    except settings_mod.SettingsError as exc:
        print(f"lorafleet operator: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_format, args.verbose)

    import kopf  # heavy imports only when the command runs

    import lorafleet_operator.handlers  # noqa: F401  (registers the handlers)
    from lorafleet_operator.metrics import start_metrics_server

    start_metrics_server(settings.metrics_port, addr=settings.listen_host)
    namespaces = () if args.all_namespaces else settings.namespaces
    liveness = (
        f"http://{settings.listen_host}:{settings.health_port}/healthz"
        if settings.health_port
        else None
    )
    kopf.run(
        standalone=settings.peering is None,
        peering_name=settings.peering,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``lorafleet operator`` and its flags.

    Args:
        subparsers: The top-level parser's sub-parsers.
    """
    parser = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator (kopf)",
        description=(
            "Reconcile BaseModel and LoraAdapter resources into install Jobs and KubeRay "
            "RayServices. Every flag has an environment variable (see "
            "lorafleet_operator.settings); flags win."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="namespace to watch (repeatable; env LORAFLEET_NAMESPACES, comma-separated)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument(
        "--peering",
        help="kopf peering name: replicas with the same name keep one active (default standalone)",
    )
    parser.add_argument("--installer-image", help="image of install/cleanup Jobs")
    parser.add_argument("--default-claim", help="RWX claim used when spec.storage is not set")
    parser.add_argument("--hf-endpoint", help="HF_ENDPOINT given to install Jobs (Hub mirror)")
    parser.add_argument("--job-backoff-limit", type=int, help="install Job backoffLimit")
    parser.add_argument("--job-deadline", type=int, help="install Job activeDeadlineSeconds")
    parser.add_argument("--job-ttl", type=int, help="install Job ttlSecondsAfterFinished")
    parser.add_argument(
        "--ready-timeout", type=float, help="seconds before a not-ready RayService is Degraded"
    )
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (0 disables)")
    parser.add_argument("--health-port", type=int, help="liveness port (0 disables)")
    parser.add_argument("--log-format", choices=["json", "plain"], help="log line format")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.set_defaults(func=_run)
