"""``helm template`` of the chart's monitoring objects: the Ray PodMonitor, the operator's
ServiceMonitor and the Grafana dashboard ConfigMap (all off by default)."""

from __future__ import annotations

import json
from pathlib import Path

from lorafleet_operator.jobs import NAME_LABEL, object_labels
from lorafleet_operator.models import BASEMODEL_KIND
from lorafleet_operator.rayservice import ray_pod_labels

from tests.chart.helm import CHART, by_kind, one, template

FULL = Path(__file__).parent / "values-full.yaml"
DASHBOARD = CHART / "dashboards" / "lorafleet.json"


def test_nothing_for_monitoring_renders_by_default(helm_bin: Path) -> None:
    objects = template(helm_bin)
    for kind in ("PodMonitor", "ServiceMonitor", "ConfigMap"):
        assert not by_kind(objects, kind), kind


def test_dashboard_configmap_carries_the_sidecar_label_and_the_json(helm_bin: Path) -> None:
    objects = template(helm_bin, sets={"monitoring.grafanaDashboard.enabled": "true"})
    config_map = one(objects, "ConfigMap")
    meta = config_map["metadata"]
    assert meta["name"] == "lorafleet-dashboard"
    assert meta["namespace"] == "lorafleet-system"
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["app.kubernetes.io/part-of"] == "lorafleet"
    assert "annotations" not in meta
    (key,) = config_map["data"]
    assert key.endswith(".json")
    rendered = json.loads(config_map["data"][key])
    assert rendered == json.loads(DASHBOARD.read_text())
    assert rendered["uid"] == "lorafleet"
    assert not by_kind(objects, "PodMonitor")


def test_full_values_render_every_monitor(helm_bin: Path) -> None:
    objects = template(helm_bin, values_files=[FULL])
    meta = one(objects, "ConfigMap")["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["example.com/dashboard"] == "lorafleet"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["annotations"] == {"grafana_folder": "LoRA serving"}

    monitor = one(objects, "PodMonitor")
    assert monitor["metadata"]["name"] == "ml-lorafleet-ray"
    assert monitor["metadata"]["namespace"] == "lorafleet-system"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Watching some namespaces: the Ray Pods are only there.
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["interval"] == "20s" and endpoint["scrapeTimeout"] == "8s"


def test_pod_monitor_selects_the_ray_pods_on_kuberays_metrics_port(helm_bin: Path) -> None:
    objects = template(helm_bin, sets={"monitoring.podMonitor.enabled": "true"})
    monitor = one(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "lorafleet-system"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}  # the operator watches every namespace
    selector = spec["selector"]["matchLabels"]
    # Every BaseModel's Ray Pods (the operator's labels, without the BaseModel's name) ...
    for basemodel in ("minilm", "llama-3-8b"):
        assert selector.items() <= ray_pod_labels(basemodel).items()
    assert NAME_LABEL not in selector
    # ... and not its install or cleanup Job Pods.
    for role in ("install", "cleanup"):
        assert not selector.items() <= object_labels(BASEMODEL_KIND, "minilm", role).items()
    (endpoint,) = spec["podMetricsEndpoints"]
    # KubeRay gives each Ray container a "metrics" port (Ray's --metrics-export-port, 8080).
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s" and endpoint["scrapeTimeout"] == "10s"
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets == {
        "ray_io_cluster": ["__meta_kubernetes_pod_label_ray_io_cluster"],
        "basemodel": ["__meta_kubernetes_pod_label_lorafleet_io_name"],
    }
    assert NAME_LABEL == "lorafleet.io/name"  # the relabeling's source, sanitised


def test_operator_service_monitor_keeps_the_metrics_own_namespace_label(helm_bin: Path) -> None:
    objects = template(helm_bin, sets={"metrics.serviceMonitor.enabled": "true"})
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    # lorafleet_adapters_served and lorafleet_serve_config_writes_total carry `namespace`.
    assert endpoint["honorLabels"] is True
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9090} in [
        {k: p[k] for k in ("name", "containerPort")} for p in container["ports"]
    ]
