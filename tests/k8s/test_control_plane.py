"""The Go-built control plane behaves like a real cluster where the operator depends on it.

Needs the binaries of ``scripts/cluster.sh build`` (Go); one control plane per session.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.kube import KubeCluster

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

MERGE_PATCH = "application/merge-patch+json"


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate()`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def test_readyz_and_real_server_version(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.kubectl_run("get", "--raw", "/readyz").stdout.strip() == "ok"
    out = json.loads(kube_cluster.kubectl_run("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == kube_cluster.version
    assert out["serverVersion"]["minor"] == kube_cluster.version.split(".")[1]
    # kubectl supports one minor version of skew either way.
    client_minor = int(out["clientVersion"]["minor"].rstrip("+"))
    assert abs(client_minor - int(out["serverVersion"]["minor"])) <= 1


def test_api_server_only_on_the_node_bridge_and_rbac(
    kube_cluster: KubeCluster, kube_api: Any
) -> None:
    # The API server listens on the node's bridge address only (Pods reach it there; nothing
    # outside this machine does), never on all interfaces.
    assert kube_cluster.server.startswith(f"https://{kube_cluster.node_ip}:")
    port = kube_cluster.server.rsplit(":", 1)[1]
    listening = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    local = [word for word in listening if word.endswith(f":{port}")]
    assert local == [f"{kube_cluster.node_ip}:{port}"], listening
    # RBAC is on: an identity without bindings is refused.
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review(
        {
            "spec": {
                "user": "someone-unbound",
                "resourceAttributes": {
                    "verb": "list",
                    "resource": "secrets",
                    "namespace": "default",
                },
            }
        }
    )
    assert review.status.allowed is False


def test_helm_runs(kube_cluster: KubeCluster) -> None:
    out = subprocess.run(
        [kube_cluster.helm, "version", "--short"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("v3.")
    # helm reaches the cluster through the kubeconfig and sees its real version.
    listed = subprocess.run(
        [kube_cluster.helm, "list", "--all-namespaces", "--output", "json"],
        capture_output=True,
        text=True,
        env=kube_cluster.env,
        check=True,
    )
    assert json.loads(listed.stdout) == []


@pytest.fixture(scope="module")
def widget_crd(kube_api: Any) -> Iterator[dict[str, str]]:
    """A namespaced CRD with a status subresource and a structural schema."""
    group = f"t{uuid.uuid4().hex[:6]}.lorafleet.test"
    plural = "widgets"
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "phase": {"type": "string"},
                                        "observedGeneration": {"type": "integer"},
                                    },
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    ext = client.ApiextensionsV1Api(kube_api)
    ext.create_custom_resource_definition(body)
    try:

        def established() -> bool:
            crd = ext.read_custom_resource_definition(f"{plural}.{group}")
            return any(
                c.type == "Established" and c.status == "True"
                for c in (crd.status.conditions or [])
            )

        wait_until(established, 30, "the Widget CRD to be Established")
        yield {"group": group, "version": "v1", "plural": plural, "kind": "Widget"}
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def _create_widget(api: client.CustomObjectsApi, crd: dict[str, str], ns: str, name: str) -> Any:
    return api.create_namespaced_custom_object(
        crd["group"],
        crd["version"],
        ns,
        crd["plural"],
        {
            "apiVersion": f"{crd['group']}/{crd['version']}",
            "kind": crd["kind"],
            "metadata": {"name": name},
            "spec": {"size": 3},
            "status": {"phase": "IgnoredOnCreate"},
        },
    )


def test_crd_status_subresource_accepts_status_patch(
    kube_api: Any, namespace: str, widget_crd: dict[str, str]
) -> None:
    api = client.CustomObjectsApi(kube_api)
    g, v, p = widget_crd["group"], widget_crd["version"], widget_crd["plural"]
    created = _create_widget(api, widget_crd, namespace, "w1")
    # With a status subresource the main endpoint ignores status ...
    assert "status" not in created or not created["status"]
    patched = api.patch_namespaced_custom_object_status(
        g,
        v,
        namespace,
        p,
        "w1",
        {"status": {"phase": "Ready", "observedGeneration": 1, "unknownField": "pruned"}},
        _content_type=MERGE_PATCH,
    )
    assert patched["status"] == {"phase": "Ready", "observedGeneration": 1}  # pruned
    # ... the status endpoint does not change spec, and generation counts spec changes only.
    gen = patched["metadata"]["generation"]
    api.patch_namespaced_custom_object_status(
        g, v, namespace, p, "w1", {"spec": {"size": 99}}, _content_type=MERGE_PATCH
    )
    again = api.get_namespaced_custom_object(g, v, namespace, p, "w1")
    assert again["spec"]["size"] == 3
    assert again["metadata"]["generation"] == gen
    assert again["status"]["phase"] == "Ready"
    # The schema is enforced.
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(
            g, v, namespace, p, "w1", {"spec": {"size": 0}}, _content_type=MERGE_PATCH
        )
    assert err.value.status == 422


def test_job_owned_by_custom_object_is_garbage_collected(
    kube_api: Any, namespace: str, widget_crd: dict[str, str]
) -> None:
    api = client.CustomObjectsApi(kube_api)
    batch = client.BatchV1Api(kube_api)
    owner = _create_widget(api, widget_crd, namespace, "owner")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "owned-job",
            "ownerReferences": [
                {
                    "apiVersion": f"{widget_crd['group']}/{widget_crd['version']}",
                    "kind": widget_crd["kind"],
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "suspend": True,  # nothing to run here: this test is about ownership only
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                }
            },
        },
    }
    batch.create_namespaced_job(namespace, job)
    api.delete_namespaced_custom_object(
        widget_crd["group"], widget_crd["version"], namespace, widget_crd["plural"], "owner"
    )

    def job_gone() -> bool:
        try:
            batch.read_namespaced_job("owned-job", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until(job_gone, 90, "the garbage collector to delete the Job owned by the Widget")


def test_namespace_deletion_finishes(kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    name = f"del-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, {"metadata": {"name": "x"}, "data": {"a": "b"}})
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until(gone, 90, f"namespace {name} to be deleted by the namespace controller")


def _rayservice(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serveConfigV2": "applications:\n- name: app\n  import_path: m:app\n  route_prefix: /\n",
        "rayClusterConfig": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0"},
                "template": {
                    "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}
                },
            },
        },
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_kuberay_crds_are_installed(kube_cluster: KubeCluster) -> None:
    out = kube_cluster.kubectl_run("get", "crd", "-o", "name").stdout.split()
    for crd in ("rayservices.ray.io", "rayclusters.ray.io", "rayjobs.ray.io"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd}" in out


def test_rayservice_schema_rejects_invalid_and_accepts_valid(kube_api: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube_api)

    def create(body: dict[str, Any]) -> Any:
        return api.create_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", body)

    invalid = [
        # serveConfigV2 must be a YAML string, not an object
        _rayservice("bad-type", serveConfigV2={"applications": []}),
        # rayClusterConfig is required
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": {"name": "bad-missing"},
            "spec": {"serveConfigV2": "applications: []"},
        },
        # headGroupSpec.template is required
        _rayservice("bad-head", rayClusterConfig={"headGroupSpec": {"rayStartParams": {}}}),
    ]
    for body in invalid:
        with pytest.raises(ApiException) as err:
            create(body)
        assert err.value.status == 422, body["metadata"]["name"]
        assert "RayService.ray.io" in err.value.body
    created = create(_rayservice("good"))
    assert created["metadata"]["uid"]
    assert created["spec"]["serveConfigV2"].startswith("applications:")


def test_service_account_token_request_and_rbac(
    kube_cluster: KubeCluster, kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "installer"}})
    token = core.create_namespaced_service_account_token(
        "installer", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    assert token.count(".") == 2  # a signed JWT from the TokenRequest API

    cfg = client.Configuration()
    cfg.host = kube_cluster.server
    cfg.ssl_ca_cert = str(kube_cluster.run_dir / "pki" / "ca.crt")
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(cfg) as sa_api:
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review({})
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:installer"
        # No RoleBinding: RBAC refuses it.
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
        assert err.value.status == 403
