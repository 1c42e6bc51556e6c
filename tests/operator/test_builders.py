"""Unit tests of the Job, PVC and RayService builders and the install report reader."""

from __future__ import annotations

import json

import pytest
import yaml
from lorafleet_operator import conditions as cond
from lorafleet_operator.jobs import (
    build_adapter_install_job,
    build_base_install_job,
    build_cleanup_job,
    deterministic_name,
    install_job_name,
)
from lorafleet_operator.models import BaseModelSpec, LoraAdapterSpec
from lorafleet_operator.rayservice import build_rayservice, rayservice_readiness, serve_endpoint
from lorafleet_operator.report import format_progress, parse_report
from lorafleet_operator.serveconfig import build_serve_config, dump_serve_config
from lorafleet_operator.settings import Settings
from lorafleet_operator.volumes import build_claim, claim_name_for

SETTINGS = Settings(installer_image="reg/lorafleet:1", hf_endpoint="http://127.0.0.1:9999")
BM_BODY = {
    "apiVersion": "lorafleet.io/v1alpha1",
    "kind": "BaseModel",
    "metadata": {"name": "minilm", "namespace": "ml", "uid": "uid-1"},
}
LORA_BODY = {
    "apiVersion": "lorafleet.io/v1alpha1",
    "kind": "LoraAdapter",
    "metadata": {"name": "sentiment", "namespace": "ml", "uid": "uid-2"},
}
BM_SPEC = BaseModelSpec.model_validate(
    {
        "source": {
            "uri": "hf://acme/gated",
            "revision": "v1",
            "secretRef": {"name": "hf-token"},
            "allowPatterns": ["*.safetensors", "*.json"],
        },
        "task": "text-classification",
        "numLabels": 2,
        "serving": {
            "gpus": 2,
            "cpu": "8",
            "memory": "32Gi",
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        },
    }
)


def test_job_names_are_deterministic_and_valid():
    a = install_job_name("BaseModel", BM_BODY, BM_SPEC)
    assert a == install_job_name("BaseModel", BM_BODY, BM_SPEC)
    changed = BM_SPEC.model_copy(
        update={"source": BM_SPEC.source.model_copy(update={"revision": "v2"})}
    )
    assert install_job_name("BaseModel", BM_BODY, changed) != a
    other_uid = {**BM_BODY, "metadata": {**BM_BODY["metadata"], "uid": "uid-9"}}
    assert install_job_name("BaseModel", other_uid, BM_SPEC) != a
    long = deterministic_name("install-lora", "x" * 300, 1)
    assert len(long) <= 63 and long.startswith("install-lora-xxx")


def test_base_install_job():
    job = build_base_install_job(BM_BODY, BM_SPEC, "shared", SETTINGS)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    spec = job["spec"]
    assert spec["backoffLimit"] == SETTINGS.job_backoff_limit
    assert spec["activeDeadlineSeconds"] == SETTINGS.job_deadline_s
    assert spec["ttlSecondsAfterFinished"] == SETTINGS.job_ttl_s
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert (
        pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    )
    (container,) = pod["containers"]
    assert container["image"] == "reg/lorafleet:1"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # Read-only root: HOME and TMPDIR are an emptyDir; the image's user by default.
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["volumeMounts"] == [
        {"name": "models", "mountPath": "/models"},
        {"name": "scratch", "mountPath": "/tmp"},
    ]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared"}
    assert pod["volumes"][1] == {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
    assert {e["name"]: e.get("value") for e in container["env"]}.items() >= {
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
    }.items()
    cmd = container["command"]
    assert cmd[:2] == ["lorafleet-install", "base"]

    def arg(flag):
        return cmd[cmd.index(flag) + 1]

    assert arg("--namespace") == "ml" and arg("--name") == "minilm"
    assert arg("--source") == "hf://acme/gated" and arg("--revision") == "v1"
    assert arg("--dest") == "/models" and arg("--task") == "text-classification"
    assert arg("--num-labels") == "2" and arg("--report-file") == "/dev/termination-log"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--allow-pattern"] == [
        "*.safetensors",
        "*.json",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_ENDPOINT"]["value"] == "http://127.0.0.1:9999"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hf-token",
        "key": "HF_TOKEN",
        "optional": True,
    }
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]


def test_default_uid_is_the_images_user():
    assert Settings().run_as_user == 10001
    pod = build_base_install_job(BM_BODY, BM_SPEC, "shared", Settings())["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_pvc_sources_are_mounted_read_only_where_the_installer_reads_them():
    spec = BaseModelSpec.model_validate(
        {
            "source": {"uri": "pvc://weights/minilm"},
            "checkpoint": {"uri": "pvc://ckpts/run1/last.ckpt"},
            "task": "text-classification",
        }
    )
    pod = build_base_install_job(BM_BODY, spec, "shared", SETTINGS)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for claim in ("weights", "ckpts"):
        mount = mounts[f"/mnt/pvc/{claim}"]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["persistentVolumeClaim"] == {
            "claimName": claim,
            "readOnly": True,
        }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LORAFLEET_PVC_ROOT"] == "/mnt/pvc"
    # Other schemes mount nothing more.
    plain = build_base_install_job(BM_BODY, BM_SPEC, "shared", SETTINGS)["spec"]["template"]
    assert len(plain["spec"]["volumes"]) == 2


def test_adapter_and_cleanup_jobs():
    spec = LoraAdapterSpec.model_validate({"baseModel": "minilm", "source": {"uri": "s3://b/lora"}})
    job = build_adapter_install_job(
        LORA_BODY,
        spec,
        claim_name="shared",
        base_path="/models/ml/basemodels/minilm/abc",
        base_source="hf://x/y",
        max_rank=16,
        settings=SETTINGS,
    )
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["lorafleet-install", "adapter"]
    assert cmd[cmd.index("--base-path") + 1] == "/models/ml/basemodels/minilm/abc"
    assert cmd[cmd.index("--max-rank") + 1] == "16"
    assert cmd[cmd.index("--base-source") + 1] == "hf://x/y"
    assert not [
        e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e
    ]
    other = build_adapter_install_job(
        LORA_BODY,
        spec,
        claim_name="shared",
        base_path="/models/ml/basemodels/minilm/def",
        base_source=None,
        max_rank=16,
        settings=SETTINGS,
    )
    assert other["metadata"]["name"] != job["metadata"]["name"]
    cleanup = build_cleanup_job(
        "LoraAdapter",
        LORA_BODY,
        path="/models/ml/adapters/sentiment/abc",
        claim_name="shared",
        settings=SETTINGS,
    )
    assert cleanup["spec"]["template"]["spec"]["containers"][0]["command"][:4] == [
        "lorafleet-install",
        "remove",
        "--path",
        "/models/ml/adapters/sentiment/abc",
    ]
    with pytest.raises(ValueError, match="not a folder inside the volume mount"):
        build_cleanup_job("LoraAdapter", LORA_BODY, path="/etc", claim_name="s", settings=SETTINGS)
    with pytest.raises(ValueError):
        build_cleanup_job(
            "LoraAdapter", LORA_BODY, path="/models/../etc", claim_name="s", settings=SETTINGS
        )


def test_claims():
    assert claim_name_for("minilm", BM_SPEC, SETTINGS) == SETTINGS.default_claim
    assert build_claim(BM_BODY, BM_SPEC, SETTINGS) is None
    sized = BaseModelSpec.model_validate(
        {**BM_SPEC.to_wire(), "storage": {"size": "20Gi", "storageClassName": "nfs"}}
    )
    claim = build_claim(BM_BODY, sized, SETTINGS)
    assert claim["metadata"]["name"] == "minilm-models"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "nfs"
    named = BaseModelSpec.model_validate({**BM_SPEC.to_wire(), "storage": {"claimName": "mine"}})
    assert claim_name_for("minilm", named, SETTINGS) == "mine"


def test_rayservice():
    text = dump_serve_config(build_serve_config("minilm", "/models/p", BM_SPEC, {}))
    rs = build_rayservice(
        BM_BODY, BM_SPEC, serve_config_yaml=text, claim_name="shared", settings=SETTINGS
    )
    assert rs["apiVersion"] == "ray.io/v1" and rs["kind"] == "RayService"
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "BaseModel"
    assert yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["name"] == "minilm"
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 3)
    pod = group["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert pod["containers"][0]["volumeMounts"][0]["readOnly"] is True
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared", "readOnly": True}
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # Ray is closed to the namespace: token auth, no API token, RuntimeDefault seccomp.
    assert cluster["authOptions"] == {"mode": "token"}
    for template in (cluster["headGroupSpec"]["template"], group["template"]):
        assert template["spec"]["automountServiceAccountToken"] is False
        assert template["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert serve_endpoint("minilm", "ml", SETTINGS) == "http://minilm-serve-svc.ml.svc:8000"


@pytest.mark.parametrize(
    ("status", "ready", "reason"),
    [
        (
            {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}
                ]
            },
            True,
            "NonZeroServeEndpoints",
        ),
        ({"serviceStatus": "Running"}, True, "Running"),
        (
            {"conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}]},
            False,
            "Initializing",
        ),
        (
            {
                "activeServiceStatus": {
                    "applicationStatuses": {"m": {"status": "DEPLOY_FAILED", "message": "boom"}}
                }
            },
            False,
            "ApplicationNotRunning",
        ),
        ({}, False, "Initializing"),
    ],
)
def test_rayservice_readiness(status, ready, reason):
    assert rayservice_readiness({"status": status})[:2] == (ready, reason)
    assert rayservice_readiness(None)[0] is False


def test_report_parsing():
    ok = {
        "ok": True,
        "reason": "Installed",
        "message": "done",
        "resolvedRevision": "abc",
        "sizeBytes": 5,
        "path": "/models/ml/adapters/a/abc",
        "rank": 8,
        "targetModules": ["query"],
    }
    report = parse_report("progress...\n" + json.dumps(ok) + "\n")
    assert report.ok and report.rank == 8 and report.resolved_revision == "abc"
    assert report.target_modules == ["query"]
    bad = parse_report(
        json.dumps({"ok": False, "reason": "SourceNotFound", "message": "no repo acme/x"})
    )
    assert not bad.ok and bad.reason == "SourceNotFound"
    crash = parse_report("Traceback (most recent call last):\n  File x\nMemoryError")
    assert not crash.ok and crash.reason == "InternalError" and "MemoryError" in crash.message
    assert parse_report("") is None
    assert format_progress({"bytesDone": 50, "bytesTotal": 200, "updatedAt": 1.0}) == "25%"
    assert format_progress({"bytesDone": 3 * 1024 * 1024, "bytesTotal": None}) == "3.0 MiB"
    assert format_progress({"bytesDone": "x"}) is None


def test_conditions_keep_transition_time_and_diff():
    first = cond.set_condition(None, "Ready", False, "Installing", "x", 1)
    first[0]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    same = cond.set_condition(first, "Ready", False, "Installing", "y", 2)
    assert same[0]["lastTransitionTime"] == "2000-01-01T00:00:00Z" and same[0]["message"] == "y"
    flipped = cond.set_condition(first, "Ready", True, "Ready", "ok", 2)
    assert flipped[0]["lastTransitionTime"] != "2000-01-01T00:00:00Z"
    assert cond.is_true(flipped, "Ready") and not cond.is_true(first, "Ready")
    assert (
        cond.status_changes(
            {"conditions": first},
            {"conditions": cond.set_condition(first, "Ready", False, "Installing", "x", 1)},
        )
        == {}
    )
    assert cond.status_changes({"phase": "Pending"}, {"phase": "Ready"}) == {"phase": "Ready"}


def test_pod_path_reroots_local_install_paths():
    from lorafleet_operator.report import pod_path

    assert (
        pod_path("/models/ml/adapters/a/r1", "/models", "ml", "LoraAdapter", "a")
        == "/models/ml/adapters/a/r1"
    )
    assert (
        pod_path("/tmp/x/volume/ml/adapters/a/r1/", "/models", "ml", "LoraAdapter", "a")
        == "/models/ml/adapters/a/r1"
    )
    assert (
        pod_path("/tmp/x/ml/basemodels/b/r", "/models/", "ml", "BaseModel", "b")
        == "/models/ml/basemodels/b/r"
    )
    assert pod_path("/elsewhere/file", "/models", "ml", "BaseModel", "b") == "/elsewhere/file"
    assert pod_path(None, "/models", "ml", "BaseModel", "b") is None


def test_default_builders_set_no_pull_secrets_or_installer_resources():
    job = build_base_install_job(BM_BODY, BM_SPEC, "shared", SETTINGS)
    pod = job["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in pod
    assert "resources" not in pod["containers"][0]
    text = dump_serve_config(build_serve_config("minilm", "/models/p", BM_SPEC, {}))
    rs = build_rayservice(
        BM_BODY, BM_SPEC, serve_config_yaml=text, claim_name="shared", settings=SETTINGS
    )
    assert (
        "imagePullSecrets"
        not in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    )


def test_pull_secrets_installer_resources_and_gpu_name_reach_jobs_and_ray_pods():
    settings = SETTINGS.with_overrides(
        image_pull_secrets=("regcred", "mirror-cred"),
        installer_resources={"requests": {"cpu": "500m"}, "limits": {"memory": "4Gi"}},
        gpu_resource_name="amd.com/gpu",
    )
    pull = [{"name": "regcred"}, {"name": "mirror-cred"}]
    install = build_base_install_job(BM_BODY, BM_SPEC, "shared", settings)
    pod = install["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == pull
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "500m"},
        "limits": {"memory": "4Gi"},
    }
    adapter = build_adapter_install_job(
        LORA_BODY,
        LoraAdapterSpec.model_validate({"baseModel": "minilm", "source": {"uri": "s3://b/l"}}),
        claim_name="shared",
        base_path="/models/ml/basemodels/minilm/abc",
        base_source=None,
        max_rank=16,
        settings=settings,
    )
    pod = adapter["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == pull
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "4Gi"}
    cleanup = build_cleanup_job(
        "LoraAdapter", LORA_BODY, path="/models/ml/x", claim_name="shared", settings=settings
    )
    pod = cleanup["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == pull
    # Removing a folder needs none of the install resources (they could block scheduling).
    assert "resources" not in pod["containers"][0]

    text = dump_serve_config(build_serve_config("minilm", "/models/p", BM_SPEC, {}))
    rs = build_rayservice(
        BM_BODY, BM_SPEC, serve_config_yaml=text, claim_name="shared", settings=settings
    )
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]
    assert head["imagePullSecrets"] == pull and worker["imagePullSecrets"] == pull
    res = worker["containers"][0]["resources"]
    assert res["requests"]["amd.com/gpu"] == "2" and res["limits"]["amd.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in res["requests"] and "nvidia.com/gpu" not in res["limits"]
    assert not any("gpu" in name for name in head["containers"][0]["resources"]["limits"])


def test_file_sources_and_bad_claims_are_refused_on_a_cluster_naming_the_field():
    from lorafleet_operator.jobs import cluster_source_error

    assert cluster_source_error(source_uri="hf://a/b", checkpoint_uri=None) is None
    assert cluster_source_error(source_uri="pvc://c.d-1/p", checkpoint_uri="s3://b/k") is None
    msg = cluster_source_error(source_uri="hf://a/b", checkpoint_uri="file:///tmp/x.ckpt")
    assert msg and msg.startswith("spec.checkpoint.uri: file://") and "pvc://" in msg
    msg = cluster_source_error(source_uri="file:///data/m")
    assert msg and msg.startswith("spec.source.uri: file://") and "local mode" in msg
    for claim in ("..", "A_B", "-x"):
        msg = cluster_source_error(source_uri=f"pvc://{claim}/m")
        assert msg and msg.startswith(f"spec.source.uri: {claim!r} is not a"), msg


def test_basemodel_names_kuberay_refuses_are_named_up_front():
    from lorafleet_operator.rayservice import rayservice_name_error

    assert rayservice_name_error("minilm") is None
    assert rayservice_name_error("a" * 47) is None
    assert "at most 47" in rayservice_name_error("a" * 48)
    for name in ("9lives", "my.model", "x-"):
        assert "start with a letter" in rayservice_name_error(name), name


def test_cleanup_never_targets_the_volume_root():
    for path in ("/models/", "/models/.", "/models//", "/models/./."):
        with pytest.raises(ValueError, match="not a folder inside the volume mount"):
            build_cleanup_job("BaseModel", BM_BODY, path=path, claim_name="c", settings=SETTINGS)


def test_network_policy_admits_only_the_ray_cluster_kuberay_and_serve_clients():
    from lorafleet_operator.networkpolicy import build_network_policy

    policy = build_network_policy(BM_BODY, SETTINGS)
    rs = build_rayservice(
        BM_BODY,
        BM_SPEC,
        serve_config_yaml=dump_serve_config(build_serve_config("minilm", "/p", BM_SPEC, {})),
        claim_name="shared",
        settings=SETTINGS,
    )
    cluster = rs["spec"]["rayClusterConfig"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    # It selects exactly the Pods of this BaseModel's Ray cluster (head and workers), not its
    # install and cleanup Job Pods, which handle untrusted downloads.
    job = build_base_install_job(BM_BODY, BM_SPEC, "shared", SETTINGS)
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()
    for template in (
        cluster["headGroupSpec"]["template"],
        cluster["workerGroupSpecs"][0]["template"],
    ):
        assert selector.items() <= template["metadata"]["labels"].items()
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "BaseModel"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    own, kuberay, serve = policy["spec"]["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": selector}}]} and "ports" not in own
    assert kuberay["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert kuberay["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kuberay-system"
    }
    assert serve == {"ports": [{"protocol": "TCP", "port": 8000}]}  # any client, Serve only


def test_ray_pod_problems_name_what_keeps_the_ray_pods_from_running():
    from lorafleet_operator.rayservice import ray_pod_problems

    never = {
        "metadata": {"name": "m-head-x"},
        "status": {
            "containerStatuses": [
                {
                    "name": "ray-head",
                    "state": {
                        "waiting": {
                            "reason": "ErrImageNeverPull",
                            "message": 'Container image "nope:1" is not present with pull '
                            "policy of Never",
                        }
                    },
                }
            ]
        },
    }
    pending = {
        "metadata": {"name": "m-worker-y"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                }
            ]
        },
    }
    starting = {
        "metadata": {"name": "m-worker-z"},
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
    }
    said = ray_pod_problems([never, pending, starting])
    assert said == (
        'pod m-head-x: ErrImageNeverPull: Container image "nope:1" is not present with pull'
        " policy of Never; pod m-worker-y: Unschedulable: 0/1 nodes are available: 1"
        " Insufficient nvidia.com/gpu."
    )
    assert ray_pod_problems([starting]) is None and ray_pod_problems([]) is None


@pytest.mark.parametrize(
    "source",
    [
        {"uri": "hf://acme/base", "revision": "v1", "allowPatterns": ["*.json", "*.safetensors"]},
        {"uri": "s3://bucket/base/", "ignorePatterns": ["*.bin"], "sha256": "a" * 64},
        {"uri": "pvc://weights/base"},
    ],
)
def test_install_job_and_local_mode_pass_the_installer_the_same_arguments(source: dict) -> None:
    """One builder for both: the same spec is installed with the same arguments on a cluster
    and in `lorafleet up` (they used to drift: local mode dropped an adapter's patterns and
    gave --num-labels from id2label, the Job did not)."""
    from pathlib import Path

    from lorafleet_operator.local.install import install_args
    from lorafleet_operator.local.manifests import LocalObject

    def cluster_args(job: dict) -> list[str]:
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[0] == "lorafleet-install"
        cut = command.index("--report-file")
        assert command[cut:cut + 2] == ["--report-file", "/dev/termination-log"]  # fmt: skip
        return command[1:cut]

    base = BaseModelSpec.model_validate(
        {
            "source": source,
            "task": "text-classification",
            "id2label": {"0": "neg", "1": "neu", "2": "pos"},
            "checkpoint": {"uri": "pvc://ckpt/model.safetensors", "strict": False},
            "serving": {"maxRank": 32},
        }
    )
    adapter = LoraAdapterSpec.model_validate({"baseModel": "minilm", "source": source})
    dest = SETTINGS.models_mount
    local_base = LocalObject("BaseModel", "minilm", "ml", base, Path("/m.yaml"))
    local_adapter = LocalObject("LoraAdapter", "sentiment", "ml", adapter, Path("/m.yaml"))
    on_cluster = cluster_args(build_base_install_job(BM_BODY, base, "models", SETTINGS))
    assert on_cluster == install_args(local_base, Path(dest))
    assert on_cluster[on_cluster.index("--num-labels") + 1] == "3"
    job = build_adapter_install_job(
        LORA_BODY,
        adapter,
        claim_name="models",
        base_path="/models/ml/basemodels/minilm/abc",
        base_source=source["uri"],
        max_rank=32,
        settings=SETTINGS,
    )
    on_cluster = cluster_args(job)
    assert on_cluster == install_args(
        local_adapter,
        Path(dest),
        base_path="/models/ml/basemodels/minilm/abc",
        base_source=source["uri"],
        max_rank=32,
    )
    for pattern in source.get("allowPatterns", []) + source.get("ignorePatterns", []):
        assert pattern in on_cluster


def test_network_policy_admits_a_named_prometheus_namespace_to_the_metrics_port_only():
    from lorafleet_operator.networkpolicy import build_network_policy

    policy = build_network_policy(
        BM_BODY, SETTINGS.with_overrides(metrics_scraper_namespace="monitoring")
    )
    *_, scraper = policy["spec"]["ingress"]
    assert scraper == {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"protocol": "TCP", "port": 8080}],
    }
    assert len(build_network_policy(BM_BODY, SETTINGS)["spec"]["ingress"]) == 3  # unset: none
