"""Fixtures for tests whose Pods use servers and storage on this machine.

Pods reach the host only at the test node's bridge address (``KubeCluster.node_ip``), so the
servers here listen there — never on all interfaces — and volumes are hostPath-backed
PersistentVolumes the test provisions, bound to a named claim.

Fixtures:
    ``pod_hub`` (session): an offline olah Hub mirror (:class:`tests.support.hub.OlahHub`) on
        the node's address; ``HF_ENDPOINT`` for install Jobs is its ``endpoint``.
    ``pod_s3`` (session): moto's S3 API on the node's address.
    ``host_volume`` (function): factory ``(namespace, claim, folder=None, *, uid=10001) ->
        Path``: a PersistentVolume backed by a host folder (made, owned by ``uid``) and a
        PersistentVolumeClaim ``claim`` in ``namespace`` bound to it. The PVs are deleted after
        the test.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hub import OlahHub, S3Server, free_port, run_olah_hub
from tests.support.kube import KubeCluster

#: The storage class of the test's hostPath volumes (no provisioner: bound by claimRef).
STORAGE_CLASS = "lorafleet-test-hostpath"
#: The image's user (Dockerfile), owner of the volumes' folders.
IMAGE_UID = 10001


@pytest.fixture(scope="session")
def pod_hub(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OlahHub]:
    """olah on the node's bridge address, reachable from Pods (see the module docstring)."""
    with run_olah_hub(tmp_path_factory.mktemp("pod-olah"), host=kube_cluster.node_ip) as hub:
        yield hub


@pytest.fixture(scope="session")
def pod_s3(kube_cluster: KubeCluster) -> Iterator[S3Server]:
    """moto's S3 API on the node's bridge address, reachable from Pods."""
    from moto.server import ThreadedMotoServer

    port = free_port(kube_cluster.node_ip)
    server = ThreadedMotoServer(ip_address=kube_cluster.node_ip, port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://{kube_cluster.node_ip}:{port}")
    finally:
        server.stop()


def _chown_tree(folder: Path, uid: int) -> None:
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(folder, uid, uid)


@pytest.fixture
def host_volume(kube_api: Any, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Factory of hostPath-backed PV + PVC pairs (see the module docstring)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube_api)
    made: list[str] = []

    def make(
        namespace: str, claim: str, folder: Path | None = None, *, uid: int = IMAGE_UID
    ) -> Path:
        folder = folder or tmp_path / f"pv-{claim}"
        folder.mkdir(parents=True, exist_ok=True)
        _chown_tree(folder, uid)
        pv_name = f"{claim}-{uuid.uuid4().hex[:8]}"
        core.create_persistent_volume(
            {
                "metadata": {"name": pv_name, "labels": {"lorafleet.io/test": "true"}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": str(folder), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        made.append(pv_name)
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": STORAGE_CLASS,
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        return folder

    try:
        yield make
    finally:
        for name in made:
            with contextlib.suppress(ApiException):
                core.delete_persistent_volume(name)
