"""The test cluster's real node: Pods from the project's image run as a real cluster runs them.

kubelet, containerd + runc, CNI bridge, kube-proxy, kube-scheduler and CoreDNS are the real
ones (``scripts/cluster.sh up --node``); the Pods run the image built from the project's own
Dockerfile (``scripts/image.sh build``). Nothing here is a stand-in.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client
from lorafleet_operator.jobs import build_base_install_job
from lorafleet_operator.models import BaseModelSpec
from lorafleet_operator.settings import Settings

from tests.support.kube import KubeCluster
from tests.support.pods import run_pod, start_pod, terminated, wait_pod

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _install_job_pod_security(image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Pod and container security contexts the operator's install Job builder writes."""
    body = {
        "apiVersion": "lorafleet.io/v1alpha1",
        "kind": "BaseModel",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
    }
    spec = BaseModelSpec.model_validate({"source": {"uri": "hf://a/b"}})
    job = build_base_install_job(body, spec, "models", Settings(installer_image=image))
    pod = job["spec"]["template"]["spec"]
    return pod["securityContext"], pod["containers"][0]["securityContext"]


def test_node_is_ready_and_named_like_a_real_one(kube_cluster: KubeCluster, kube_api: Any) -> None:
    node = client.CoreV1Api(kube_api).read_node(kube_cluster.node_name)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True", node.status.conditions
    labels = node.metadata.labels
    assert labels["kubernetes.io/hostname"] == kube_cluster.node_name
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/arch"] == "amd64"
    info = node.status.node_info
    assert info.kubelet_version == kube_cluster.version
    assert info.kube_proxy_version in ("", kube_cluster.version)
    assert info.container_runtime_version.startswith("containerd://2.")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == kube_cluster.node_ip
    assert int(node.status.allocatable["pods"]) > 0
    # The project's image is on the node (imported, never pulled).
    assert any(kube_cluster.image in (img.names or []) for img in node.status.images)


def test_image_runs_with_the_install_jobs_security_context(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    pod_security, container_security = _install_job_pod_security(kube_cluster.image)
    assert container_security["readOnlyRootFilesystem"] is True
    script = "; ".join(
        [
            "set -u",
            "echo uid=$(id -u) gid=$(id -g)",
            "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
            "lorafleet-install --help > /dev/null && echo installer-ok",
            "python -c 'import torch, ray, lorafleet_serving; print(\"imports-ok\", torch.__version__)'",
            "touch /rootfs-write 2>/dev/null && echo rootfs-writable || echo rootfs-read-only",
            "touch /ro/x 2>/dev/null && echo ro-mount-writable || echo ro-mount-refused",
            "touch /tmp/x && echo scratch-writable",
        ]
    )
    pod = run_pod(
        core,
        namespace,
        {
            "metadata": {"name": "secctx"},
            "spec": {
                "securityContext": pod_security,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "main",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        "command": ["bash", "-c", script],
                        "securityContext": container_security,
                        "env": [{"name": "HOME", "value": "/tmp"}],
                        "volumeMounts": [
                            {"name": "ro", "mountPath": "/ro", "readOnly": True},
                            {"name": "scratch", "mountPath": "/tmp"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "ro", "emptyDir": {}},
                    {"name": "scratch", "emptyDir": {}},
                ],
            },
        },
        timeout=300,
    )
    logs = core.read_namespaced_pod_log("secctx", namespace)
    assert pod.status.phase == "Succeeded", logs
    lines = logs.splitlines()
    assert "uid=10001 gid=10001" in lines
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    assert status["CapEff"].strip() == "0000000000000000"  # every capability dropped
    assert status["NoNewPrivs"].strip() == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"].strip() == "2"  # a seccomp filter (RuntimeDefault) is on
    assert "installer-ok" in lines
    assert any(line.startswith("imports-ok ") for line in lines), logs
    assert "rootfs-read-only" in lines
    assert "ro-mount-refused" in lines
    assert "scratch-writable" in lines


def test_memory_limit_is_enforced_and_reported_as_oomkilled(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    pod = run_pod(
        core,
        namespace,
        {
            "metadata": {"name": "hog"},
            "spec": {
                "containers": [
                    {
                        "name": "hog",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        # 512 MiB of touched memory under a 64 MiB limit.
                        "command": ["python", "-c", "b = bytearray(512 << 20); print(len(b))"],
                        "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                    }
                ]
            },
        },
    )
    state = terminated(pod)
    assert pod.status.phase == "Failed"
    assert state.reason == "OOMKilled", state
    assert state.exit_code == 137


def test_service_cluster_ip_and_dns_name_answer_from_another_pod(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    start_pod(
        core,
        namespace,
        {
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        "command": [
                            "bash",
                            "-c",
                            "cd /tmp && echo hello-from-web > index.html && exec python -m http.server 8080",
                        ],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }
                ]
            },
        },
    )
    svc = core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cluster_ip = svc.spec.cluster_ip
    assert cluster_ip.startswith("10.0.0.")
    start_pod(
        core,
        namespace,
        {
            "metadata": {"name": "client"},
            "spec": {
                "containers": [
                    {
                        "name": "client",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "infinity"],
                    }
                ]
            },
        },
    )
    fqdn = f"web.{namespace}.svc.cluster.local"

    def in_client(*argv: str) -> str:
        # kubectl exec: the API server streams from the kubelet, which streams from containerd.
        return kube_cluster.kubectl_run("-n", namespace, "exec", "client", "--", *argv).stdout

    for target in (cluster_ip, fqdn, "web"):
        got = in_client("wget", "-q", "-T", "5", "-t", "3", "-O-", f"http://{target}/index.html")
        assert got.strip() == "hello-from-web", target
    resolved = in_client("python", "-c", f"import socket; print(socket.gethostbyname({fqdn!r}))")
    assert resolved.strip() == cluster_ip
    # The API server, through the `kubernetes` Service, by its DNS name (CA from the token).
    version = in_client(
        "wget", "-q", "-T", "5", "-O-",
        "--ca-certificate=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        "https://kubernetes.default.svc.cluster.local/version",
    )  # fmt: skip
    assert json.loads(version)["gitVersion"] == kube_cluster.version
    logs = kube_cluster.kubectl_run("-n", namespace, "logs", "web")
    assert "GET /index.html" in logs.stdout + logs.stderr


def test_termination_message_is_readable_through_the_api(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    report = json.dumps({"ok": True, "reason": "Installed", "id": uuid.uuid4().hex})
    pod = run_pod(
        core,
        namespace,
        {
            "metadata": {"name": "reporter"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        "command": [
                            "bash",
                            "-c",
                            f"echo progress; echo '{report}' > /dev/termination-log",
                        ],
                    }
                ]
            },
        },
    )
    state = terminated(pod)
    assert state.exit_code == 0
    assert state.message.strip() == report


def test_failing_job_is_retried_as_real_pods_up_to_its_backoff_limit(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    batch = client.BatchV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "fails"},
            "spec": {
                "backoffLimit": 1,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": kube_cluster.image,
                                "imagePullPolicy": "Never",
                                "command": ["bash", "-c", "echo attempt $HOSTNAME >&2; exit 3"],
                                "terminationMessagePolicy": "FallbackToLogsOnError",
                            }
                        ],
                    }
                },
            },
        },
    )

    import time

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job("fails", namespace)
        conditions = {c.type: c for c in job.status.conditions or []}
        if "Failed" in conditions and conditions["Failed"].status == "True":
            break
        time.sleep(1)
    else:
        pytest.fail(f"Job did not fail within 240 s: {job.status}")
    assert conditions["Failed"].reason == "BackoffLimitExceeded"
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=fails").items
    assert len(pods) == 2  # the first run and one retry, each a real Pod on the node
    for pod in pods:
        assert pod.spec.node_name == kube_cluster.node_name
        state = terminated(pod)
        assert state.exit_code == 3
        # FallbackToLogsOnError: the log tail became the termination message.
        assert state.message.strip() == f"attempt {pod.metadata.name}"


def test_pod_cannot_reach_outside_this_machine(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    """Pod traffic to an address beyond the node is dropped (never routed or masqueraded)."""
    core = client.CoreV1Api(kube_api)
    import subprocess

    route = subprocess.run(
        ["ip", "-4", "route", "show", "default"], capture_output=True, text=True, check=True
    ).stdout.split()
    gateway = route[route.index("via") + 1] if "via" in route else "192.0.2.1"
    pod = run_pod(
        core,
        namespace,
        {
            "metadata": {"name": "escape"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        "command": [
                            "python",
                            "-c",
                            "import socket, sys\n"
                            "for addr in sys.argv[1:]:\n"
                            "    s = socket.socket(); s.settimeout(3)\n"
                            "    try:\n"
                            "        s.connect((addr, 80)); print('reached', addr)\n"
                            "    except OSError as e:\n"
                            "        print('blocked', addr, type(e).__name__)\n",
                            gateway,
                            "1.1.1.1",
                        ],
                    }
                ]
            },
        },
    )
    logs = core.read_namespaced_pod_log("escape", namespace)
    assert pod.status.phase == "Succeeded", logs
    assert "reached" not in logs, logs
    assert logs.count("blocked") == 2, logs


def test_pods_are_scheduled_by_the_scheduler(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "too-big"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        "command": ["true"],
                        "resources": {"requests": {"cpu": "64"}},
                    }
                ]
            },
        },
    )
    pod = wait_pod(
        core,
        namespace,
        "too-big",
        lambda p: any(c.type == "PodScheduled" for c in p.status.conditions or []),
        "the scheduler's verdict",
        timeout=60,
    )
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert scheduled.status == "False" and scheduled.reason == "Unschedulable"
    assert "Insufficient cpu" in scheduled.message
