"""Fixtures of the operator's integration tests: CRDs installed, kopf operator in-process."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "lorafleet.io", "v1alpha1"
CLAIM = "models"
#: The claim ``pvc://`` sources are read from (:func:`pvc_sources`).
SOURCES_CLAIM = "sources"


@pytest.fixture(scope="session")
def lorafleet_crds(kube_api: Any) -> None:
    """Install (or update) the generated lorafleet CRDs once per session; wait Established."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(kube_api)
    for path in sorted((REPO / "manifests" / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(crd["metadata"]["name"])
            crd["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(crd["metadata"]["name"], crd)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = ext.read_custom_resource_definition(crd["metadata"]["name"])
            if any(
                c.type == "Established" and c.status == "True"
                for c in (got.status.conditions or [])
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"CRD {crd['metadata']['name']} not Established within 30 s")


@pytest.fixture
def custom(kube_api: Any) -> Any:
    """A ``CustomObjectsApi`` on the test cluster."""
    from kubernetes import client

    return client.CustomObjectsApi(kube_api)


@pytest.fixture
def model_volume(host_volume: Callable[..., Path], namespace: str) -> Path:
    """The claim ``models`` in the test namespace, bound to a hostPath PersistentVolume on the
    test node; returns the host folder behind it (what Pods see under ``/models``)."""
    return host_volume(namespace, CLAIM)


@pytest.fixture
def pvc_sources(
    host_volume: Callable[..., Path], namespace: str, tmp_path: Path
) -> Callable[..., dict[str, str]]:
    """Factory: ``pvc_sources(name=folder, ...)`` copies each folder into a claim ``sources``
    (a second hostPath PersistentVolume) and returns ``{name: "pvc://sources/<name>"}`` — the
    source URIs install Jobs read from that claim, mounted read-only. Call it once per test.
    """

    def make(**folders: Path) -> dict[str, str]:
        root = tmp_path / "pvc-sources"
        root.mkdir()
        for name, folder in folders.items():
            shutil.copytree(folder, root / name)
        host_volume(namespace, SOURCES_CLAIM, root)
        return {name: f"pvc://{SOURCES_CLAIM}/{name}" for name in folders}

    return make


@pytest.fixture
def run_operator(
    lorafleet_crds: None,
    kube_cluster: Any,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Any]]:
    """Factory: ``run_operator(**env)`` -> a context manager running the kopf operator.

    The operator runs in this process (``kopf.testing.KopfRunner``), watches only the test
    namespace, standalone (no peering); its install and cleanup Jobs run on the test node from
    the project's image (already in the node's containerd: pull policy ``Never``). Keyword
    arguments set ``LORAFLEET_<NAME>`` variables.
    """
    from kopf.testing import KopfRunner

    defaults = {
        "INSTALLER_IMAGE": kube_cluster.image,
        "IMAGE_PULL_POLICY": "Never",
        "DEFAULT_CLAIM": CLAIM,
        "POLL_INTERVAL_S": "0.5",
        "DEBOUNCE_S": "0.5",
        "JOB_BACKOFF_LIMIT": "0",
        "JOB_TTL_S": "600",
        "READY_TIMEOUT_S": "120",
        "METRICS_PORT": "0",
        "HEALTH_PORT": "0",
        "LOG_FORMAT": "plain",
        # The RayServices here are made Ready by stand-ins (ReadinessWriter, the KubeRay
        # stand-in) and this process cannot resolve the in-cluster Serve Service names; the
        # probe runs on the real path (tests/k8s/test_kuberay_e2e.py, the chart's operator Pod)
        # and against live servers in test_serveprobe.py.
        "SERVING_PROBE": "false",
    }

    @contextlib.contextmanager
    def start(**env: str) -> Iterator[Any]:
        for key, value in {**defaults, **env}.items():
            monkeypatch.setenv(f"LORAFLEET_{key}", str(value))
        args = [
            "run",
            "--standalone",
            "--namespace",
            namespace,
            "-m",
            "lorafleet_operator.handlers",
        ]
        with KopfRunner(args, timeout=60) as runner:
            yield runner
        if runner.exception is not None and not isinstance(runner.exception, SystemExit):
            raise runner.exception

    yield start
    # The operator is gone: drop finalizers so the namespace fixture can delete everything.
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi()
    for plural in ("loraadapters", "basemodels"):
        for obj in api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]:
            with contextlib.suppress(ApiException):
                api.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    obj["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.3) -> Any:
    """Poll ``fn`` until it returns a truthy value; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
