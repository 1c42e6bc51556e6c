"""Builder of the NetworkPolicy that keeps a BaseModel's Ray Pods closed to the namespace.

Ray's own ports (GCS 6379, dashboard 8265 with its job-submission API, Ray client 10001, and
the raylet/object-manager/worker ports) are for the Ray cluster itself; with token auth
(:mod:`lorafleet_operator.rayservice`) they already refuse callers without the token, and this
policy is the second wall: only Pods of the same BaseModel's Ray cluster reach any port; the
KubeRay operator's namespace reaches the dashboard port (KubeRay deploys Serve applications
and reads their status there); anyone may reach the Serve HTTP port (the API clients use).

A NetworkPolicy is enforced only by a CNI plugin that implements it (Calico, Cilium, ...);
elsewhere it is inert. API: ``networking.k8s.io/v1`` NetworkPolicy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lorafleet_operator.jobs import owner_reference
from lorafleet_operator.rayservice import ray_pod_labels
from lorafleet_operator.settings import Settings

#: Ray's dashboard port (KubeRay's RayService controller talks to it).
RAY_DASHBOARD_PORT = 8265
#: Ray's metrics export port on KubeRay's Pods (the "metrics" container port).
RAY_METRICS_PORT = 8080


def network_policy_name(basemodel_name: str) -> str:
    """The NetworkPolicy of a BaseModel's Ray Pods: ``<name>-ray``."""
    return f"{basemodel_name}-ray"


def build_network_policy(body: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Build the NetworkPolicy of a BaseModel's Ray Pods (owned by the BaseModel).

    Args:
        body: The BaseModel object (name, namespace, uid for the owner reference).
        settings: Operator settings (Serve port, the KubeRay operator's namespace).

    Returns:
        A ``networking.k8s.io/v1`` NetworkPolicy selecting the BaseModel's Ray Pods
        (:func:`lorafleet_operator.rayservice.ray_pod_labels`; not its Job Pods), with three
        ingress rules: from those Pods (any port), from the KubeRay namespace (dashboard port),
        from anywhere (Serve port); and with ``settings.metrics_scraper_namespace`` a fourth,
        from that namespace (Ray's metrics port).
    """
    meta = body["metadata"]
    labels = ray_pod_labels(meta["name"])
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": dict(labels),
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "podSelector": {"matchLabels": dict(labels)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": dict(labels)}}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": settings.kuberay_namespace
                                }
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": RAY_DASHBOARD_PORT}],
                },
                {"ports": [{"protocol": "TCP", "port": settings.serve_port}]},
                *_scraper_rule(settings),
            ],
        },
    }


def _scraper_rule(settings: Settings) -> list[dict[str, Any]]:
    """The rule admitting Prometheus's namespace to Ray's metrics port, if one is named."""
    if not settings.metrics_scraper_namespace:
        return []
    namespace = {"kubernetes.io/metadata.name": settings.metrics_scraper_namespace}
    return [
        {
            "from": [{"namespaceSelector": {"matchLabels": namespace}}],
            "ports": [{"protocol": "TCP", "port": RAY_METRICS_PORT}],
        }
    ]
