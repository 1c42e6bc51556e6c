"""Build the Ray Serve config of one BaseModel (docs/interfaces.md, section 3).

One function, :func:`build_serve_config`, is used by the operator (the RayService's
``serveConfigV2``) and by local mode (deployed to a local Ray), so both serve exactly the same
application. Its inputs are plain values: a name, the install path, the parsed
:class:`~lorafleet_operator.models.BaseModelSpec` and the adapter registry. The output follows
Ray Serve's ``ServeDeploySchema`` (``ray.serve.schema``). Only ``user_config`` of the ``Model``
deployment depends on the adapters, so adding or removing one is a lightweight update that Ray
Serve applies in place through ``reconfigure()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from lorafleet_operator.models import BaseModelSpec, Task

#: The serving app's entry point (``build_app(args) -> serve.Application``).
IMPORT_PATH = "lorafleet_serving.ray_app:build_app"
#: Deployment names inside the application.
INGRESS_DEPLOYMENT = "Ingress"
MODEL_DEPLOYMENT = "Model"
#: CPUs of the (light, FastAPI) ingress replica.
INGRESS_NUM_CPUS = 0.1
#: CPUs of a model replica when the spec gives no cpu quantity.
DEFAULT_MODEL_NUM_CPUS = 1.0


class ServeConfigError(ValueError):
    """An adapter registry entry or argument cannot go into a serve config."""


def parse_cpu_quantity(quantity: str | int | float) -> float:
    """Convert a Kubernetes CPU quantity (``500m``, ``2``, ``1.5``) into cores.

    Args:
        quantity: The quantity string or number.

    Returns:
        Number of CPU cores as a float.

    Raises:
        ServeConfigError: If the quantity is not a plain or milli CPU quantity.
    """
    text = str(quantity).strip()
    try:
        if text.endswith("m"):
            return float(text[:-1]) / 1000.0
        return float(text)
    except ValueError as exc:
        raise ServeConfigError(f"serving.cpu {quantity!r} is not a CPU quantity") from exc


def adapter_entry(
    path: str, rank: int | None = None, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Build one adapter registry entry of ``user_config.adapters``.

    Args:
        path: Install folder of the adapter (``ROOT/<ns>/adapters/<name>/<revision>``).
        rank: LoRA rank r from the install report.
        labels: Label names (id -> name) of a classification adapter's head.

    Returns:
        ``{"path": ..., "rank": ..., "labels": ...}`` without unset keys.

    Raises:
        ServeConfigError: If ``path`` is empty or ``rank`` is not a positive integer.
    """
    if not path:
        raise ServeConfigError("adapter path is empty")
    entry: dict[str, Any] = {"path": str(path)}
    if rank is not None:
        if not isinstance(rank, int) or rank < 1:
            raise ServeConfigError(f"adapter rank must be a positive integer, got {rank!r}")
        entry["rank"] = rank
    if labels:
        entry["labels"] = {str(k): str(v) for k, v in labels.items()}
    return entry


def build_serve_config(
    name: str,
    base_path: str,
    spec: BaseModelSpec,
    adapters: Mapping[str, Mapping[str, Any]],
    *,
    served_name: str | None = None,
    labels: Mapping[str, str] | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    route_prefix: str = "/",
    allowed_hosts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build the Ray Serve config (``ServeDeploySchema`` dict) of one BaseModel.

    Args:
        name: The BaseModel's name; becomes the application name.
        base_path: Install folder of the base model as the replicas see it.
        spec: The BaseModel spec (task, dtype, serving settings).
        adapters: The adapter registry: served name -> ``{"path", "rank", "labels"}`` (see
            :func:`adapter_entry`); extra keys are rejected.
        served_name: The base model's own ``"model"`` name (default: ``name``).
        labels: Label names of the base's classification head (default: ``spec.id2label``; the
            installer's report may provide them).
        num_cpus: CPUs per model replica (default: from ``spec.serving.cpu`` or 1).
        num_gpus: GPUs per model replica (default: ``spec.serving.gpus``; local mode passes 0).
        route_prefix: HTTP route prefix of the application.
        allowed_hosts: Host names the ingress answers (any other ``Host`` header: 400); local
            mode passes the loopback names. ``None`` or empty (a cluster): any host.

    Returns:
        ``{"applications": [...]}`` ready for ``yaml.safe_dump`` or the dashboard REST API.

    Raises:
        ServeConfigError: If an adapter entry has no path or unknown keys.
    """
    serving = spec.serving
    if num_cpus is None:
        num_cpus = parse_cpu_quantity(serving.cpu) if serving.cpu else DEFAULT_MODEL_NUM_CPUS
    if num_gpus is None:
        num_gpus = serving.gpus
    args: dict[str, Any] = {
        "served_name": served_name or name,
        "base_path": str(base_path),
        "task": Task(spec.task).value,
        "dtype": str(spec.dtype),
    }
    base_labels = labels if labels is not None else spec.id2label
    if base_labels and spec.task == Task.TEXT_CLASSIFICATION:
        args["labels"] = {str(k): str(v) for k, v in base_labels.items()}
    args["max_batch_size"] = serving.max_batch_size
    args["batch_wait_timeout_ms"] = serving.batch_wait_timeout_ms
    args["max_tokens_limit"] = serving.max_tokens_limit
    if allowed_hosts:
        args["allowed_hosts"] = [str(host) for host in allowed_hosts]

    registry: dict[str, Any] = {}
    for adapter_name in sorted(adapters):
        raw = dict(adapters[adapter_name])
        unknown = set(raw) - {"path", "rank", "labels"}
        if unknown:
            raise ServeConfigError(
                f"adapter {adapter_name!r}: unknown registry keys {sorted(unknown)}"
            )
        try:
            registry[adapter_name] = adapter_entry(
                raw.get("path", ""), raw.get("rank"), raw.get("labels")
            )
        except ServeConfigError as exc:
            raise ServeConfigError(f"adapter {adapter_name!r}: {exc}") from exc

    model: dict[str, Any] = {"name": MODEL_DEPLOYMENT}
    if serving.autoscaling is not None:
        autoscaling: dict[str, Any] = {
            "min_replicas": serving.autoscaling.min_replicas,
            "max_replicas": serving.autoscaling.max_replicas,
        }
        if serving.autoscaling.target_ongoing_requests is not None:
            autoscaling["target_ongoing_requests"] = serving.autoscaling.target_ongoing_requests
        model["autoscaling_config"] = autoscaling
    else:
        model["num_replicas"] = 1 if serving.replicas is None else serving.replicas
    actor_options: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        actor_options["num_gpus"] = num_gpus
    model["ray_actor_options"] = actor_options
    model["max_ongoing_requests"] = serving.max_ongoing_requests
    model["user_config"] = {
        "max_adapters": serving.max_adapters_per_replica,
        "adapters": registry,
    }
    return {
        "applications": [
            {
                "name": name,
                "import_path": IMPORT_PATH,
                "route_prefix": route_prefix,
                "args": args,
                "deployments": [
                    {
                        "name": INGRESS_DEPLOYMENT,
                        "num_replicas": 1,
                        "ray_actor_options": {"num_cpus": INGRESS_NUM_CPUS},
                    },
                    model,
                ],
            }
        ]
    }


def dump_serve_config(config: Mapping[str, Any]) -> str:
    """Serialise a serve config as YAML (the RayService ``serveConfigV2`` string).

    Args:
        config: Output of :func:`build_serve_config`.

    Returns:
        Deterministic YAML text (keys in insertion order).
    """
    return yaml.safe_dump(dict(config), sort_keys=False, width=1000)


def registry_of(config_yaml: str | None) -> dict[str, dict[str, Any]]:
    """Read the adapter registry back out of a ``serveConfigV2`` YAML string.

    Args:
        config_yaml: The RayService's ``spec.serveConfigV2`` (may be empty or ``None``).

    Returns:
        Served name -> registry entry; empty when there is no config or no Model deployment.
    """
    if not config_yaml:
        return {}
    config = yaml.safe_load(config_yaml) or {}
    for app in config.get("applications", []):
        for deployment in app.get("deployments", []):
            if deployment.get("name") == MODEL_DEPLOYMENT:
                return dict((deployment.get("user_config") or {}).get("adapters") or {})
    return {}
