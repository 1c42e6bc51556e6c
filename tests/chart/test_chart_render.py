"""``helm lint`` and ``helm template`` of charts/lorafleet: defaults, every option, bad values.

These run the real helm (built from Go modules by scripts/cluster.sh) but need no cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lorafleet_operator.settings import settings_from_env

from tests.chart.helm import CHART, KUBE_VERSION, HelmError, by_kind, one, run_helm, template

HERE = Path(__file__).parent
FULL = HERE / "values-full.yaml"
#: Objects the default install renders, by kind (cluster-wide mode).
DEFAULT_KINDS = {
    "ServiceAccount": 1,
    "ClusterRole": 1,
    "ClusterRoleBinding": 1,
    "Deployment": 1,
    "Service": 1,
    "ClusterKopfPeering": 1,
}


def leaf_paths(tree: Any, prefix: str = "") -> set[str]:
    """Dotted paths of a values tree, stopping at maps the schema leaves open."""
    if (
        isinstance(tree, dict)
        and tree
        and not prefix.endswith(
            (
                "resources",
                "annotations",
                "labels",
                "Labels",
                "Annotations",
                "nodeSelector",
                "affinity",
            )
        )
    ):
        out: set[str] = set()
        for key, value in tree.items():
            out |= leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return out
    return {prefix}


def test_full_values_file_sets_every_value() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    full = yaml.safe_load(FULL.read_text())
    missing = leaf_paths(defaults) - leaf_paths(full)
    assert not missing, f"values-full.yaml does not set: {sorted(missing)}"


def test_every_value_is_described_and_typed_in_the_schema() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema.get("additionalProperties") is False
    for key in defaults:
        prop = schema["properties"].get(key)
        assert prop is not None, f"values.schema.json lacks top-level value {key!r}"
        assert "type" in prop or "$ref" in prop or "anyOf" in prop, f"{key} has no type"
        described = "description" in prop or "$ref" in prop
        assert described, f"values.schema.json: {key!r} has no description"


@pytest.mark.parametrize("values", [[], [FULL]], ids=["defaults", "full"])
def test_helm_lint_passes(helm_bin: Path, values: list[Path]) -> None:
    args = ["lint", "--strict", str(CHART), "--set", "kuberay.checkCRD=false"]
    args += ["--kube-version", KUBE_VERSION]
    for path in values:
        args += ["-f", str(path)]
    out = run_helm(helm_bin, args)
    assert "0 chart(s) failed" in out, out


def test_default_render(helm_bin: Path) -> None:
    objects = template(helm_bin)
    kinds: dict[str, int] = {}
    for obj in objects:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    assert kinds == DEFAULT_KINDS
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
            assert obj["metadata"]["namespace"] == "lorafleet-system", obj["metadata"]

    deploy = one(objects, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 1
    assert pod["serviceAccountName"] == "lorafleet"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/lorafleet/lorafleet:0.1.0"
    assert container["command"] == ["lorafleet", "operator"]
    assert "args" not in container
    env = env_of(objects)
    assert env["LORAFLEET_PEERING"] == "lorafleet"
    assert "LORAFLEET_NAMESPACES" not in env  # every namespace
    assert env["LORAFLEET_RUN_AS_USER"] == "10001"
    assert env["LORAFLEET_DEFAULT_CLAIM"] == "lorafleet-models"
    assert env["LORAFLEET_GPU_RESOURCE_NAME"] == "nvidia.com/gpu"
    assert env["LORAFLEET_REGISTRY_WRITE_INTERVAL_S"] == "4"
    assert env["LORAFLEET_LISTEN_HOST"] == "0.0.0.0"
    # Ray Pods get a NetworkPolicy admitting KubeRay from its usual namespace.
    assert env["LORAFLEET_NETWORK_POLICY"] == "true"
    assert env["LORAFLEET_KUBERAY_NAMESPACE"] == "kuberay-system"
    assert "LORAFLEET_METRICS_SCRAPER_NAMESPACE" not in env  # Prometheus not admitted
    assert env["LORAFLEET_SERVING_PROBE"] == "true"
    assert "LORAFLEET_INSTALLER_RESOURCES" not in env
    assert "LORAFLEET_IMAGE_PULL_SECRETS" not in env
    assert settings_from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["port"] == "healthz" and ports == {"healthz": 8080, "metrics": 9090}
    svc = one(objects, "Service")
    assert svc["spec"]["ports"][0]["port"] == 9090
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "lorafleet", "namespace": "lorafleet-system"}
    ]
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    peering = one(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "lorafleet"


def env_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_full_render_maps_every_option(helm_bin: Path) -> None:
    objects = template(helm_bin, values_files=[FULL])
    deploy = one(objects, "Deployment")
    assert deploy["metadata"]["name"] == "ml-lorafleet"
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.internal/ml/lorafleet:0.1.0-test"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert container["args"] == ["--verbose"]  # logLevel: debug
    assert container["livenessProbe"]["failureThreshold"] == 5
    assert {p["containerPort"] for p in container["ports"]} == {8081, 9191}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["serviceAccountName"] == "lorafleet-operator"
    assert deploy["spec"]["template"]["metadata"]["labels"]["team"] == "ml-platform"
    assert deploy["spec"]["template"]["metadata"]["annotations"] == {"example.com/audit": "true"}

    env = env_of(objects)
    assert env["LORAFLEET_NAMESPACES"] == "team-a,team-b"
    assert env["LORAFLEET_PEERING"] == "ml-lorafleet"
    assert env["LORAFLEET_LOG_FORMAT"] == "plain"
    assert env["LORAFLEET_HEALTH_PORT"] == "8081"
    assert env["LORAFLEET_METRICS_PORT"] == "9191"
    assert env["LORAFLEET_RUN_AS_USER"] == "20001"
    assert pod["securityContext"]["runAsUser"] == 20001
    assert env["LORAFLEET_READY_TIMEOUT_S"] == "600"
    assert env["LORAFLEET_POLL_INTERVAL_S"] == "5"
    assert env["LORAFLEET_DEBOUNCE_S"] == "0.5"
    assert env["LORAFLEET_SERVING_PROBE"] == "false"
    assert env["LORAFLEET_AWS_ENDPOINT_URL"] == "http://minio.ml.svc.cluster.local:9000"
    assert env["LORAFLEET_INSTALLER_IMAGE"] == (
        "registry.example.internal/ml/lorafleet-installer:0.1.0-slim"
    )
    assert env["LORAFLEET_SERVING_IMAGE"] == (
        "registry.example.internal/ml/lorafleet-cuda:0.1.0-cu124"
    )
    assert env["LORAFLEET_RAY_VERSION"] == "2.60.0"
    assert env["LORAFLEET_HF_ENDPOINT"] == "http://hf-mirror.ml.svc.cluster.local:8090"
    assert env["LORAFLEET_DEFAULT_CLAIM"] == "ml-models"
    assert env["LORAFLEET_JOB_BACKOFF_LIMIT"] == "5"
    assert env["LORAFLEET_JOB_DEADLINE_S"] == "7200"
    assert env["LORAFLEET_JOB_TTL_S"] == "3600"
    assert env["LORAFLEET_REGISTRY_WRITE_INTERVAL_S"] == "10"
    assert env["LORAFLEET_LISTEN_HOST"] == "::"
    assert env["LORAFLEET_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert env["LORAFLEET_NETWORK_POLICY"] == "false"
    assert env["LORAFLEET_KUBERAY_NAMESPACE"] == "ray-operators"
    assert env["LORAFLEET_METRICS_SCRAPER_NAMESPACE"] == "monitoring"
    assert env["LORAFLEET_IMAGE_PULL_SECRETS"] == "regcred,mirror-cred"
    # The operator reads the chart's env exactly as it will in the cluster.
    settings = settings_from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.installer_resources == {
        "requests": {"cpu": "500m", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "20Gi"},
    }
    assert settings.image_pull_secrets == ("regcred", "mirror-cred")
    assert settings.gpu_resource_name == "amd.com/gpu"
    assert settings.registry_write_interval_s == 10.0 and settings.listen_host == "::"

    # Namespaced mode: no ClusterRole beyond CRD reads, a Role + RoleBinding per namespace.
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "lorafleet-system"
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(objects, "ClusterKopfPeering")
    pvcs = by_kind(objects, "PersistentVolumeClaim")
    assert sorted(p["metadata"]["namespace"] for p in pvcs) == ["team-a", "team-b"]
    assert pvcs[0]["spec"]["storageClassName"] == "nfs-client"
    assert pvcs[0]["spec"]["resources"]["requests"]["storage"] == "500Gi"
    assert pvcs[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert one(objects, "ServiceAccount")["metadata"]["annotations"] == {
        "example.com/role": "lorafleet"
    }
    assert one(objects, "Service")["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}


def test_existing_claim_is_passed_and_no_claim_is_made(helm_bin: Path) -> None:
    objects = template(helm_bin, sets={"sharedVolume.existingClaim": '"shared-models"'})
    env = env_of(objects)
    assert env["LORAFLEET_DEFAULT_CLAIM"] == "shared-models"
    assert not by_kind(objects, "PersistentVolumeClaim")


def test_missing_kuberay_fails_early_with_a_clear_message(helm_bin: Path) -> None:
    with pytest.raises(HelmError) as err:
        template(helm_bin, api_versions=())
    assert "lorafleet needs KubeRay" in err.value.stderr
    assert "ray.io/v1 RayService" in err.value.stderr
    # ... and the check can be turned off where there is no cluster to ask.
    objects = template(helm_bin, api_versions=(), sets={"kuberay.checkCRD": "false"})
    assert one(objects, "Deployment")


BAD_VALUES = [
    ({"replicaCount": "-1"}, "replicaCount"),
    ({"replicaCount": '"two"'}, "replicaCount"),
    ({"logLevel": '"verbose"'}, "logLevel"),
    ({"image.pullPolicy": '"Sometimes"'}, "pullPolicy"),
    ({"watchNamespace": '["a"]'}, "watchNamespace"),  # a typo of watchNamespaces
    ({"watchNamespaces": '["Team_A"]'}, "watchNamespaces"),
    ({"sharedVolume.size": '"lots"'}, "size"),
    ({"sharedVolume.accessModes": '["ReadWriteSometimes"]'}, "accessModes"),
    ({"sharedVolume.create": "true", "sharedVolume.existingClaim": '"x"'}, "existingClaim"),
    ({"installer.job.backoffLimit": '"3"'}, "backoffLimit"),
    ({"installer.job.activeDeadlineSeconds": "0"}, "activeDeadlineSeconds"),
    ({"operator.resources.requests.cpu": '"a lot"'}, "cpu"),
    ({"logLevel": '"warning"'}, "logLevel"),
    ({"metrics.port": "70000"}, "port"),
    ({"serving.rayVersion": '"latest"'}, "rayVersion"),
    ({"hfEndpoint": '"hf-mirror:8080"'}, "hfEndpoint"),
    ({"tolerations": '[{"key": "a", "operator": "Maybe"}]'}, "operator"),
    ({"gpuResourceName": '"nvidia.com/gpu/x"'}, "gpuResourceName"),
    ({"installer.resources.limits.memory": '"8GB"'}, "memory"),
    ({"installer.resources.request": '{"cpu": "1"}'}, "request"),
    ({"imagePullSecrets": '[{"name": "Bad_Name"}]'}, "name"),
    ({"operator.registryWriteIntervalSeconds": "-1"}, "registryWriteIntervalSeconds"),
    ({"operator.listenHost": '""'}, "listenHost"),
    ({"monitoring.podMonitor.interval": '"30 seconds"'}, "interval"),
    ({"monitoring.podMonitor.enable": "true"}, "enable"),
    ({"monitoring.grafanaDashboard.label": '"grafana dashboard"'}, "label"),
    ({"monitoring.grafanaDashboard.labelValue": "1"}, "labelValue"),
    ({"monitoring.grafanaDashboard.namespace": '"Monitoring"'}, "namespace"),
]


@pytest.mark.parametrize(("sets", "named"), BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_bad_values_fail_with_the_schema_message(
    helm_bin: Path, sets: dict[str, str], named: str
) -> None:
    with pytest.raises(HelmError) as err:
        template(helm_bin, sets=sets)
    message = err.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    assert named in message, message


def test_service_monitor_needs_the_service(helm_bin: Path) -> None:
    with pytest.raises(HelmError) as err:
        template(
            helm_bin,
            sets={"metrics.serviceMonitor.enabled": "true", "metrics.service.enabled": "false"},
        )
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in err.value.stderr
