"""The KubeRay stand-in deploys a RayService's serveConfigV2 to a real local Ray Serve."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]


def _serve_config(adapters: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "applications": [
                {
                    "name": "echo",
                    "import_path": "tests.k8s.echo_app:build",
                    "route_prefix": "/",
                    # The image would hold the app; here the workers find it in the checkout.
                    "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}},
                    "args": {"base_path": "/models/ml/basemodels/echo/abc"},
                    "deployments": [{"name": "Echo", "user_config": {"adapters": adapters}}],
                }
            ]
        }
    )


def _rayservice(name: str, serve_config: str) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": serve_config,
            "rayClusterConfig": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {
                        "spec": {"containers": [{"name": "ray-head", "image": "lorafleet:test"}]}
                    },
                }
            },
        },
    }


def _get(url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = requests.get(url, timeout=10)
            if resp.status_code == 200:
                return resp.json()
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no 200 from {url} within {timeout:.0f} s")
        time.sleep(0.5)


def test_rayservice_is_deployed_and_becomes_ready(
    kube_api: Any, namespace: str, kuberay_standin: Any, ray_cluster: Any, tmp_path: Path
) -> None:
    api = client.CustomObjectsApi(kube_api)
    api.create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayservices", _rayservice("echo", _serve_config({"a": 1}))
    )
    standin = kuberay_standin(
        ray_cluster.dashboard_url,
        path_map={"/models": str(tmp_path)},
        headers=ray_cluster.auth_headers,
    )
    status = standin.wait_ready(namespace, "echo", timeout=240)
    assert status["serviceStatus"] == "Running"

    obj = api.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "echo")
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["Ready"]["reason"] == "NonZeroServeEndpoints"
    assert obj["status"]["activeServiceStatus"]["applicationStatuses"]["echo"]["status"] == (
        "RUNNING"
    )
    reply = _get(ray_cluster.http_url + "/")
    assert reply["args"]["base_path"] == f"{tmp_path}/ml/basemodels/echo/abc"
    assert reply["user_config"] == {"adapters": {"a": 1}}

    # A user_config-only change is re-sent and reaches the replicas in place.
    obj["spec"]["serveConfigV2"] = _serve_config({"a": 1, "b": 2})
    api.patch_namespaced_custom_object(
        "ray.io",
        "v1",
        namespace,
        "rayservices",
        "echo",
        {"spec": {"serveConfigV2": obj["spec"]["serveConfigV2"]}},
        _content_type="application/merge-patch+json",
    )
    standin.wait_ready(namespace, "echo", timeout=120)
    deadline = time.monotonic() + 60
    while _get(ray_cluster.http_url + "/")["user_config"] != {"adapters": {"a": 1, "b": 2}}:
        if time.monotonic() > deadline:
            pytest.fail("user_config change did not reach the replica")
        time.sleep(0.5)


def test_watcher_mode_deploys_and_removes_with_the_rayservice(
    kube_api: Any, namespace: str, kuberay_standin: Any, ray_cluster: Any, tmp_path: Path
) -> None:
    api = client.CustomObjectsApi(kube_api)
    standin = kuberay_standin(
        ray_cluster.dashboard_url,
        path_map={"/models": str(tmp_path)},
        headers=ray_cluster.auth_headers,
    )
    standin.start([namespace], interval=0.5)
    api.create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayservices", _rayservice("watched", _serve_config({}))
    )
    deadline = time.monotonic() + 240
    while True:
        obj = api.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "watched")
        if (obj.get("status") or {}).get("serviceStatus") == "Running":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"RayService not Running: {obj.get('status')}, errors {standin.errors}")
        time.sleep(0.5)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert _get(ray_cluster.http_url + "/")["user_config"] == {"adapters": {}}

    api.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "watched")
    deadline = time.monotonic() + 120
    while "echo" in (
        requests.get(
            ray_cluster.dashboard_url + "/api/serve/applications/",
            headers=ray_cluster.auth_headers,
            timeout=10,
        )
        .json()
        .get("applications")
        or {}
    ):
        if time.monotonic() > deadline:
            pytest.fail("the application stayed on Ray after its RayService was deleted")
        time.sleep(0.5)
    assert not standin.errors
