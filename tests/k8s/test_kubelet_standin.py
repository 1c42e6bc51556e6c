"""The kubelet stand-in runs Job Pods created by the real Job controller and reports back."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

# The container writes its report where the installer does: the last line of the termination
# log; it reads a secret and a config value from its environment and writes onto the volume.
SCRIPT = r"""
import json, os, sys
assert os.environ.get("UNRELATED_HOST_VAR") is None, "host environment leaked into the Pod"
out = os.path.join(sys.argv[1], "ns", "model.txt")
os.makedirs(os.path.dirname(out), exist_ok=True)
open(out, "w").write(os.environ["TOKEN"] + "|" + os.environ["MODE"] + "|" + os.environ["POD"])
with open(os.environ["REPORT"], "w") as f:
    f.write("progress line\n")
    f.write(json.dumps({"ok": True, "reason": "Installed", "path": out}) + "\n")
print("done")
"""


def _job(
    name: str,
    command: list[str],
    *,
    backoff: int = 0,
    policy: str | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "install",
        "image": "lorafleet:test",
        "command": command,
        "env": env or [],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    if policy:
        container["terminationMessagePolicy"] = policy
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": "models-pvc"}}
                    ],
                }
            },
        },
    }


def test_job_runs_and_completes_with_termination_message(
    kube_api: Any,
    namespace: str,
    kubelet_standin: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNRELATED_HOST_VAR", "must-not-leak")
    core = client.CoreV1Api(kube_api)
    batch = client.BatchV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "hub"}, "data": {"token": base64.b64encode(b"s3cret").decode()}},
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"mode": "fast"}}
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "REPORT", "value": "/dev/termination-log"},
    ]
    batch.create_namespaced_job(
        namespace, _job("install", ["python", "-c", SCRIPT, "/models"], env=env)
    )
    standin = kubelet_standin({"models-pvc": tmp_path / "volume"})
    outcome = standin.run_job(namespace, "install", timeout=120)

    assert outcome.succeeded, outcome
    local = tmp_path / "volume" / "ns" / "model.txt"
    token, mode, pod_name = local.read_text().split("|")
    assert (token, mode) == ("s3cret", "fast")

    # Status written by the real Job controller from the Pod the stand-in ran.
    job = batch.read_namespaced_job("install", namespace)
    assert job.status.succeeded == 1
    assert job.status.start_time is not None and job.status.completion_time is not None
    assert {c.type for c in job.status.conditions if c.status == "True"} >= {"Complete"}

    # The termination message is readable through the API, as the operator reads it.
    pods = core.list_namespaced_pod(
        namespace, label_selector="batch.kubernetes.io/job-name=install"
    ).items
    assert [p.metadata.name for p in pods] == [pod_name]
    pod = pods[0]
    assert pod.status.phase == "Succeeded"
    assert pod.metadata.owner_references[0].kind == "Job"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"
    last_line = terminated.message.strip().splitlines()[-1]
    assert (
        last_line
        == '{"ok": true, "reason": "Installed", "path": "/models/ns/model.txt"}'.replace(
            "/models", str(tmp_path / "volume")
        )
    )


def test_failing_job_retries_then_fails_with_log_fallback(
    kube_api: Any, namespace: str, kubelet_standin: Any, tmp_path: Path
) -> None:
    batch = client.BatchV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    script = "import sys; print('cannot reach the hub: SourceNotFound'); sys.exit(3)"
    batch.create_namespaced_job(
        namespace,
        _job("broken", ["python", "-c", script], backoff=1, policy="FallbackToLogsOnError"),
    )
    standin = kubelet_standin({"models-pvc": tmp_path})
    started = time.monotonic()
    outcome = standin.run_job(namespace, "broken", timeout=150)
    assert not outcome.succeeded
    assert outcome.reason == "BackoffLimitExceeded"
    # backoffLimit 1: the Job controller made a second Pod after the first failed.
    assert [r.exit_code for r in outcome.runs] == [3, 3]
    assert time.monotonic() - started < 150
    job = batch.read_namespaced_job("broken", namespace)
    assert job.status.failed == 2
    pods = core.list_namespaced_pod(
        namespace, label_selector="batch.kubernetes.io/job-name=broken"
    ).items
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        term = pod.status.container_statuses[0].state.terminated
        assert term.exit_code == 3 and term.reason == "Error"
        assert "SourceNotFound" in term.message  # FallbackToLogsOnError: the log tail


def test_background_mode_runs_new_jobs(
    kube_api: Any, namespace: str, kubelet_standin: Any, tmp_path: Path
) -> None:
    batch = client.BatchV1Api(kube_api)
    standin = kubelet_standin({"models-pvc": tmp_path})
    standin.start([namespace])
    batch.create_namespaced_job(
        namespace,
        _job(
            "bg",
            ["sh", "-c", "echo -n hello > /models/hello && echo -n fine > /dev/termination-log"],
        ),
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job("bg", namespace)
        if job.status.succeeded == 1:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"Job bg not Complete in background mode: {job.status}, {standin.errors}")
    assert (tmp_path / "hello").read_text() == "hello"
    assert not standin.errors


def test_unmapped_claim_is_a_clear_error(
    kube_api: Any, namespace: str, kubelet_standin: Any
) -> None:
    from tests.support.kubelet_standin import StandInError

    client.BatchV1Api(kube_api).create_namespaced_job(namespace, _job("nomap", ["true"]))
    standin = kubelet_standin({})
    with pytest.raises(StandInError, match="models-pvc"):
        standin.run_job(namespace, "nomap", timeout=60)
