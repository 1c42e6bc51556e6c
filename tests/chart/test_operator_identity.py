"""The real operator runs as the chart's ServiceAccount (TokenRequest token), namespaced mode.

``lorafleet operator --namespace A --peering P`` starts in a subprocess with a kubeconfig whose
user is the ServiceAccount, bound only by the chart's Role in ``A`` (and the CRD-reading
ClusterRole). A BaseModel applied in ``A`` gets its claim, its install Job and a status
written by the operator; one applied in another namespace is left alone; the operator's log
shows no request refused by RBAC. The end-to-end test (tests/operator) takes the same identity
through the ``operator_sa_kubeconfig`` fixture of :mod:`tests.chart.operator_identity`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import apply_crds
from tests.chart.operator_identity import FIELD_MANAGER, install_operator_identity

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

#: How the API server words an RBAC refusal (``... is forbidden: User "..." cannot ...``).
RBAC_DENIAL = re.compile(r'forbidden: User "[^"]+" cannot')
#: Seconds allowed for the operator to create the Job and write a status.
RECONCILE_TIMEOUT_S = 60.0


def basemodel(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "lorafleet.io/v1alpha1",
        "kind": "BaseModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"uri": "hf://lorafleet-tests/tiny-llama", "revision": "main"},
            "task": "text-generation",
            "storage": {"size": "1Gi"},
        },
    }


def wait_for(what: str, probe: Callable[[], Any], timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; operator log tail:\n{log.read_text()[-3000:]}")


@pytest.fixture
def operator_as_service_account(
    kube_cluster: Any, namespace: str, tmp_path: Path
) -> Iterator[tuple[Any, Path]]:
    """Run ``lorafleet operator`` for ``namespace`` as the chart's ServiceAccount."""
    apply_crds(kube_cluster)
    identity = install_operator_identity(
        kube_cluster, namespace, watch_namespaces=[namespace], dest_dir=tmp_path
    )
    peering = f"lorafleet-{uuid.uuid4().hex[:6]}"
    kube_cluster.kubectl_run(
        "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
        input=yaml.safe_dump({
            "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
            "metadata": {"name": peering, "namespace": namespace},
        }),
    )  # fmt: skip
    log = tmp_path / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(identity.kubeconfig),
        "LORAFLEET_POLL_INTERVAL_S": "0.5",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lorafleet_operator", "operator", "--namespace", namespace,
             "--peering", peering, "--health-port", "0", "--metrics-port", "0",
             "--log-format", "plain", "--verbose"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        yield identity, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        identity.remove()


def test_operator_reconciles_as_its_service_account(
    kube_cluster: Any,
    kube_api: Any,
    namespace: str,
    other_namespace: str,
    operator_as_service_account: tuple[Any, Path],
) -> None:
    from kubernetes import client

    _identity, log = operator_as_service_account
    custom = client.CustomObjectsApi(kube_api)
    batch = client.BatchV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    for ns in (namespace, other_namespace):
        custom.create_namespaced_custom_object(
            "lorafleet.io", "v1alpha1", ns, "basemodels", basemodel("tiny", ns)
        )

    jobs = wait_for(
        "the install Job",
        lambda: batch.list_namespaced_job(namespace).items,
        RECONCILE_TIMEOUT_S,
        log,
    )
    assert jobs[0].spec.template.spec.containers[0].command[0] == "lorafleet-install"
    claims = core.list_namespaced_persistent_volume_claim(namespace).items
    assert [c.metadata.name for c in claims] == ["tiny-models"]
    status = wait_for(
        "a status written by the operator",
        lambda: (
            custom.get_namespaced_custom_object(
                "lorafleet.io", "v1alpha1", namespace, "basemodels", "tiny"
            )
            .get("status", {})
            .get("phase")
        ),
        RECONCILE_TIMEOUT_S,
        log,
    )
    assert status in ("Pending", "Installing"), status
    finalizers = custom.get_namespaced_custom_object(
        "lorafleet.io", "v1alpha1", namespace, "basemodels", "tiny"
    )["metadata"].get("finalizers", [])
    assert finalizers, "the operator did not add its finalizer"

    # Outside its namespace: untouched (no Job, no status, no finalizer).
    time.sleep(2)
    assert batch.list_namespaced_job(other_namespace).items == []
    other = custom.get_namespaced_custom_object(
        "lorafleet.io", "v1alpha1", other_namespace, "basemodels", "tiny"
    )
    assert "status" not in other and not other["metadata"].get("finalizers")

    # Deleting it goes through the operator's finalizer as the ServiceAccount too.
    custom.delete_namespaced_custom_object(
        "lorafleet.io", "v1alpha1", namespace, "basemodels", "tiny"
    )

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(
                "lorafleet.io", "v1alpha1", namespace, "basemodels", "tiny"
            )
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the BaseModel's deletion", gone, RECONCILE_TIMEOUT_S, log)
    denials = [line for line in log.read_text().splitlines() if RBAC_DENIAL.search(line)]
    assert denials == [], "requests refused by RBAC:\n" + "\n".join(denials)
