"""Fixtures of the chart tests: the Go-built helm binary, a second namespace, the CRDs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import CHART, find_helm
from tests.chart.operator_identity import FIELD_MANAGER


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The helm binary built by ``scripts/cluster.sh build`` (or ``$HELM``)."""
    helm = find_helm()
    if helm is None:
        msg = "no helm: Go is not installed, so scripts/cluster.sh cannot build it"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI machines have Go: a missing helm is a broken build, not a skip
        pytest.skip(msg)
    return helm


@pytest.fixture
def other_namespace(kube_api: Any) -> Iterator[str]:
    """A second fresh namespace, deleted after the test."""
    from kubernetes import client

    name = f"elsewhere-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name, "labels": {"lorafleet.io/test": "true"}}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def apply_crds(kube_cluster: Any) -> None:
    """Server-side apply the chart's CRDs (lorafleet.io and kopf.dev) and wait until served."""
    kube_cluster.kubectl_run(
        "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
        "-f", str(CHART / "crds"),
    )  # fmt: skip
    kube_cluster.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/basemodels.lorafleet.io", "crd/loraadapters.lorafleet.io",
        "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev",
    )  # fmt: skip
