"""The chart on the real test control plane: server-side apply, helm install, and its RBAC.

``kubectl auth can-i --as=system:serviceaccount:<ns>:<sa>`` asks the API server's RBAC
authorizer what the operator's ServiceAccount may do; a TokenRequest token of that
ServiceAccount then makes real calls.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import operator_calls
from tests.chart.conftest import apply_crds
from tests.chart.helm import CHART, run_helm, template
from tests.chart.operator_identity import (
    FIELD_MANAGER,
    OperatorIdentity,
    install_operator_identity,
    operator_sa_kubeconfig,  # noqa: F401 (the fixture other suites import the same way)
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def as_can_i(permission: tuple[str, str, str]) -> tuple[str, ...]:
    """``(group, resource[/sub], verb)`` -> ``(verb, resource.group[, sub])`` for can-i."""
    group, resource, verb = permission
    plural, _, sub = resource.partition("/")
    qualified = f"{plural}.{group}" if group else plural
    return (verb, qualified, sub) if sub else (verb, qualified)


#: What the operator does in a namespace it watches, derived from its code.
NEEDED = sorted(
    as_can_i(p)
    for p in operator_calls.needed(clusterwide=True)
    if p[1].split("/")[0] not in ("customresourcedefinitions", "clusterkopfpeerings")
)
#: What it must never do anywhere.
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "secrets"),
    ("get", "configmaps"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "pods", "exec"),
    ("update", "jobs.batch"),
    ("patch", "jobs.batch"),
    ("delete", "persistentvolumeclaims"),
    ("delete", "basemodels.lorafleet.io"),
    ("create", "loraadapters.lorafleet.io"),
    ("create", "rayclusters.ray.io"),
    ("create", "rayjobs.ray.io"),
    ("create", "deployments.apps"),
    ("create", "services"),
    ("create", "serviceaccounts", "token"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("delete", "events"),
    ("update", "rayservices.ray.io", "status"),
]
#: Cluster-scoped: kopf reads CRDs in both modes; nothing else is granted cluster-wide.
CLUSTER_NEEDED = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
]
CLUSTER_FORBIDDEN = [
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "nodes"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("list", "persistentvolumes"),
    ("delete", "namespaces"),
    ("list", "namespaces"),
]


def can_i(cluster: Any, user: str, check: tuple[str, ...], namespace: str | None) -> bool:
    """``kubectl auth can-i VERB RESOURCE [--subresource S] --as USER [-n NS]``."""
    verb, resource, *sub = check
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    if sub:
        args.append(f"--subresource={sub[0]}")
    args += ["-n", namespace] if namespace else []
    proc = cluster.kubectl_run(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {args}: {proc.stdout} {proc.stderr}"
    return answer == "yes"


def denied(cluster: Any, user: str, checks: list, namespace: str | None) -> list:
    return [c for c in checks if not can_i(cluster, user, c, namespace)]


def allowed(cluster: Any, user: str, checks: list, namespace: str | None) -> list:
    return [c for c in checks if can_i(cluster, user, c, namespace)]


@pytest.fixture
def cluster_identity(kube_cluster: Any, namespace: str, tmp_path: Path):
    identity = install_operator_identity(kube_cluster, namespace, dest_dir=tmp_path)
    try:
        yield identity
    finally:
        identity.remove()


def test_rendered_chart_is_accepted_by_server_side_apply(
    kube_cluster: Any, namespace: str, other_namespace: str
) -> None:
    apply_crds(kube_cluster)
    fullname = f"lorafleet-{uuid.uuid4().hex[:8]}"
    for values in (
        {"fullnameOverride": f'"{fullname}"'},
        {
            "fullnameOverride": f'"{fullname}-ns"',
            "watchNamespaces": f'["{other_namespace}"]',
            "replicaCount": "2",
            "sharedVolume.create": "true",
            "metrics.serviceMonitor.enabled": "false",
        },
    ):
        objects = template(Path(kube_cluster.helm), namespace=namespace, sets=values)
        text = yaml.safe_dump_all(objects)
        try:
            # Server-side dry run first (every object validated, CRD schemas included) ...
            kube_cluster.kubectl_run(
                "apply", "--server-side", "--dry-run=server",
                f"--field-manager={FIELD_MANAGER}", "-f", "-", input=text,
            )  # fmt: skip
            # ... then for real, and read back.
            kube_cluster.kubectl_run(
                "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-", input=text
            )
            name = values["fullnameOverride"].strip('"')
            got = kube_cluster.kubectl_run(
                "get", "deployment", name, "-n", namespace, "-o", "yaml"
            ).stdout
            deploy = yaml.safe_load(got)
            container = deploy["spec"]["template"]["spec"]["containers"][0]
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["command"] == ["lorafleet", "operator"]
        finally:
            for obj in reversed(objects):
                meta = obj["metadata"]
                args = ["delete", obj["kind"].lower(), meta["name"], "--ignore-not-found"]
                args += ["-n", meta["namespace"]] if meta.get("namespace") else []
                kube_cluster.kubectl_run(*args, "--wait=false", check=False)


def test_helm_install_on_the_cluster(kube_cluster: Any, namespace: str) -> None:
    """A real ``helm install``: the cluster's own version and APIs pass the chart's checks."""
    release = f"lf-{uuid.uuid4().hex[:8]}"
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig)}
    helm = Path(kube_cluster.helm)
    try:
        out = run_helm(
            helm,
            ["install", release, str(CHART), "--namespace", namespace,
             "--set", f"fullnameOverride={release}", "--set", f"peering.name={release}"],
            env=env,
        )  # fmt: skip
        assert "STATUS: deployed" in out
        assert "Next step: apply a BaseModel" in out
        status = run_helm(helm, ["status", release, "--namespace", namespace], env=env)
        assert "STATUS: deployed" in status
        sa = kube_cluster.kubectl_run("get", "serviceaccount", release, "-n", namespace)
        assert release in sa.stdout
    finally:
        run_helm(helm, ["uninstall", release, "--namespace", namespace, "--wait"], env=env)
    gone = kube_cluster.kubectl_run("get", "clusterrole", release, check=False)
    assert gone.returncode != 0, "helm uninstall left the ClusterRole behind"


def test_cluster_wide_rbac_grants_exactly_what_the_operator_calls(
    kube_cluster: Any, cluster_identity: OperatorIdentity, other_namespace: str
) -> None:
    user = cluster_identity.username
    for ns in (cluster_identity.namespace, other_namespace):
        assert denied(kube_cluster, user, NEEDED, ns) == [], f"missing grants in {ns}"
        assert allowed(kube_cluster, user, FORBIDDEN, ns) == [], f"excess grants in {ns}"
    assert denied(kube_cluster, user, CLUSTER_NEEDED, None) == []
    assert denied(kube_cluster, user, [("patch", "clusterkopfpeerings.kopf.dev")], None) == []
    assert allowed(kube_cluster, user, CLUSTER_FORBIDDEN, None) == []


def test_namespaced_mode_grants_in_the_listed_namespace_only(
    kube_cluster: Any, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    identity = install_operator_identity(
        kube_cluster, namespace, watch_namespaces=[namespace], dest_dir=tmp_path
    )
    try:
        user = identity.username
        assert denied(kube_cluster, user, NEEDED, namespace) == []
        assert denied(kube_cluster, user, [("patch", "kopfpeerings.kopf.dev")], namespace) == []
        assert allowed(kube_cluster, user, FORBIDDEN, namespace) == []
        # Elsewhere: nothing at all.
        assert allowed(kube_cluster, user, NEEDED + FORBIDDEN, other_namespace) == []
        # Cluster-wide: only reading CRDs and namespace names (kopf's scans).
        cluster_needed = [*CLUSTER_NEEDED, ("list", "namespaces"), ("watch", "namespaces")]
        assert denied(kube_cluster, user, cluster_needed, None) == []
        cluster_forbidden = [c for c in CLUSTER_FORBIDDEN if c[1] != "namespaces" or c[0] != "list"]
        cluster_extra = [("patch", "clusterkopfpeerings.kopf.dev"), ("get", "namespaces")]
        assert allowed(kube_cluster, user, cluster_forbidden + cluster_extra, None) == []
        assert allowed(kube_cluster, user, [("list", "basemodels.lorafleet.io")], None) == []
    finally:
        identity.remove()


def test_token_of_the_service_account_makes_real_calls(
    kube_cluster: Any, cluster_identity: OperatorIdentity
) -> None:
    """The TokenRequest kubeconfig authenticates as the ServiceAccount: allowed calls succeed,
    Secrets are refused (403) by the API server."""
    apply_crds(kube_cluster)
    ns = cluster_identity.namespace
    kubectl = [kube_cluster.kubectl, "--kubeconfig", str(cluster_identity.kubeconfig), "-n", ns]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*kubectl, *args], capture_output=True, text=True, timeout=60, check=False
        )

    who = run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert who.returncode == 0 and who.stdout == cluster_identity.username, who.stderr
    listed = run("get", "basemodels.lorafleet.io,jobs.batch,rayservices.ray.io,pods")
    assert listed.returncode == 0, listed.stderr
    secrets = run("get", "secrets")
    assert secrets.returncode != 0 and "Forbidden" in secrets.stderr, secrets.stderr
    assert cluster_identity.username in secrets.stderr
    configmaps = run("get", "configmaps")
    assert configmaps.returncode != 0 and "Forbidden" in configmaps.stderr


def test_identity_removal_leaves_no_cluster_scoped_objects(
    kube_cluster: Any, namespace: str, tmp_path: Path
) -> None:
    identity = install_operator_identity(kube_cluster, namespace, dest_dir=tmp_path)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in identity.objects}
    assert ("ClusterRole", identity.service_account) in kinds
    identity.remove()
    gone = kube_cluster.kubectl_run(
        "get", "clusterrole", identity.service_account, "--ignore-not-found", "-o", "name"
    )
    assert gone.stdout.strip() == ""
    assert not identity.kubeconfig.exists()


def test_operator_sa_kubeconfig_fixture(
    kube_cluster: Any,
    namespace: str,
    operator_sa_kubeconfig: Path,  # noqa: F811 (the imported fixture)
) -> None:
    """The fixture the end-to-end test imports: a working kubeconfig for the chart's SA."""
    base = [kube_cluster.kubectl, "--kubeconfig", str(operator_sa_kubeconfig), "-n", namespace]
    who = subprocess.run(
        [*base, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert who.stdout.startswith(f"system:serviceaccount:{namespace}:lorafleet-"), who.stderr
    can = subprocess.run(
        [*base, "auth", "can-i", "create", "jobs.batch"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert can.stdout.strip() == "yes"
    secrets = subprocess.run(
        [*base, "get", "secrets"], capture_output=True, text=True, timeout=60, check=False
    )
    assert secrets.returncode != 0 and "forbidden" in secrets.stderr.lower()
