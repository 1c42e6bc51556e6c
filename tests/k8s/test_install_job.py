"""An install Job from the operator's own builder, run by the real node with the real installer.

The Job (``lorafleet_operator.jobs``) runs the project's image in a real container: it fetches a
base model from the Hub mirror (olah on the node's address) into a hostPath-backed
PersistentVolume, and the operator reads its report from the termination message — the path
a cluster takes, with no stand-in.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from lorafleet_operator.jobs import build_base_install_job
from lorafleet_operator.models import BaseModelSpec
from lorafleet_operator.report import parse_report
from lorafleet_operator.settings import Settings

from tests.support.kube import KubeCluster
from tests.support.pods import describe, terminated

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _wait_job(batch: client.BatchV1Api, core: client.CoreV1Api, ns: str, name: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job(name, ns)
        conditions = {c.type: c.status for c in job.status.conditions or []}
        if conditions.get("Complete") == "True" or conditions.get("Failed") == "True":
            return job
        time.sleep(1)
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
    detail = "\n".join(describe(core, ns, p.metadata.name) for p in pods)
    pytest.fail(f"install Job {name} did not finish within {timeout:.0f} s\n{detail}")


def _run_install(
    kube_api: Any,
    namespace: str,
    spec: BaseModelSpec,
    settings: Settings,
    timeout: float = 300,
    name: str = "minilm",
) -> tuple[client.V1Job, client.V1Pod]:
    core = client.CoreV1Api(kube_api)
    batch = client.BatchV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": f"owner-{name}"}})
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "uid": owner.metadata.uid},
    }
    job = build_base_install_job(body, spec, "models", settings)
    job["metadata"]["ownerReferences"][0]["name"] = f"owner-{name}"
    batch.create_namespaced_job(namespace, job)
    name = job["metadata"]["name"]
    finished = _wait_job(batch, core, namespace, name, timeout)
    (pod,) = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    return finished, pod


def test_install_job_installs_a_base_from_the_hub_into_a_persistent_volume(
    kube_cluster: KubeCluster,
    kube_api: Any,
    namespace: str,
    pod_hub: Any,
    host_volume: Any,
    tiny_classifier: Path,
) -> None:
    repo = f"lorafleet/node-bert-{namespace[-6:]}"
    commit = pod_hub.create_repo(repo, tiny_classifier)
    volume = host_volume(namespace, "models")
    settings = Settings(
        installer_image=kube_cluster.image,
        image_pull_policy="Never",
        hf_endpoint=pod_hub.endpoint,
        job_backoff_limit=0,
    )
    spec = BaseModelSpec.model_validate(
        {"source": {"uri": f"hf://{repo}"}, "task": "text-classification", "numLabels": 2}
    )
    job, pod = _run_install(kube_api, namespace, spec, settings)
    state = terminated(pod)
    report = parse_report(state.message)
    assert report is not None and report.ok, (
        state.message,
        describe(client.CoreV1Api(kube_api), namespace, pod.metadata.name),
    )
    assert job.status.succeeded == 1
    assert report.resolved_revision == commit
    assert report.path == f"/models/{namespace}/basemodels/minilm/{commit}"
    # The files are on the PersistentVolume, written by the image's user, with the manifest.
    installed = volume / report.path.removeprefix("/models/")
    manifest = json.loads((installed / "lorafleet.json").read_text())
    assert manifest["source"]["revision"] == commit or commit in json.dumps(manifest)
    assert (installed / "config.json").exists()
    assert installed.stat().st_uid == 10001
    assert pod.spec.node_name == kube_cluster.node_name
    # The report line fits Kubernetes' 4096-byte termination message.
    assert len(state.message.encode()) < 4096


def test_install_job_reads_a_pvc_source_mounted_read_only(
    kube_cluster: KubeCluster,
    kube_api: Any,
    namespace: str,
    host_volume: Any,
    tiny_classifier: Path,
    tmp_path: Path,
) -> None:
    import shutil

    volume = host_volume(namespace, "models")
    source = tmp_path / "weights"
    shutil.copytree(tiny_classifier, source / "bert")
    weights = host_volume(namespace, "weights", source)  # owned by the image's user
    settings = Settings(
        installer_image=kube_cluster.image, image_pull_policy="Never", job_backoff_limit=0
    )
    spec = BaseModelSpec.model_validate(
        {"source": {"uri": "pvc://weights/bert"}, "task": "text-classification", "numLabels": 2}
    )
    _, pod = _run_install(kube_api, namespace, spec, settings)
    report = parse_report(terminated(pod).message)
    assert report is not None and report.ok, terminated(pod).message
    assert (volume / report.path.removeprefix("/models/") / "config.json").exists()
    # The source claim was mounted read-only: the installer copied, never moved or changed.
    assert (weights / "bert" / "config.json").exists()
    mounts = {m.mount_path: m for m in pod.spec.containers[0].volume_mounts}
    assert mounts["/mnt/pvc/weights"].read_only is True
    # A folder the image's user may not read is Unauthorized naming it, not "no files".
    locked = weights / "locked"
    shutil.copytree(tiny_classifier, locked)
    os.chown(locked, 0, 0)
    locked.chmod(0o700)
    spec = BaseModelSpec.model_validate(
        {"source": {"uri": "pvc://weights/locked"}, "task": "text-classification", "numLabels": 2}
    )
    _, pod = _run_install(kube_api, namespace, spec, settings, name="locked")
    report = parse_report(terminated(pod).message)
    assert report is not None and report.reason == "Unauthorized", terminated(pod).message
    assert "cannot read /mnt/pvc/weights/locked" in report.message
    assert "uid 10001" in report.message
