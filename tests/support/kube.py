"""Fixtures for the Go-built Kubernetes control plane (``scripts/cluster.sh``).

Fixtures:
    ``kube_cluster`` (session): etcd + kube-apiserver + kube-controller-manager and a real
        node (kube-scheduler, containerd + runc, CNI bridge, kubelet, kube-proxy, CoreDNS),
        started once per test session by ``scripts/cluster.sh up --node`` in a per-session run
        folder and stopped by ``scripts/cluster.sh down`` at the end; the project's image
        (``scripts/image.sh build``, cached) is imported into the node's containerd, and the
        KubeRay CRDs (RayService, RayCluster, RayJob) are installed. ``KUBECONFIG`` is exported
        for the ``kubernetes`` client and kopf, and the client's default configuration is
        loaded from it. Yields a :class:`KubeCluster`. Skips with a clear message when Go is
        not installed or this is not root (on CI, where ``CI`` is set, it fails instead).
    ``kube_api`` (session): a ``kubernetes.client.ApiClient`` for the cluster (admin).
    ``namespace`` (function): a fresh namespace per test, deleted after it.
    ``kuberay_standin`` (function): a factory ``(dashboard_url, path_map=None, **kw) ->
        KubeRayStandIn``; stopped (its applications removed from Ray) after the test.

The KubeRay stand-in lives in ``tests/support/kuberay_standin.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.kuberay_standin import KubeRayStandIn
from tests.support.node_host import host_state

__all__ = [
    "KubeCluster",
    "KubeRayStandIn",
    "build_image",
    "find_go",
    "kube_api",
    "kube_cluster",
    "kuberay_standin",
    "namespace",
]

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "scripts" / "cluster.sh"
IMAGE_SH = REPO / "scripts" / "image.sh"
#: Seconds allowed for `cluster.sh up` (a cold build of the binaries is much longer; run
#: `scripts/cluster.sh build` first, as scripts/test.sh does).
UP_TIMEOUT_S = float(os.environ.get("LORAFLEET_CLUSTER_UP_TIMEOUT", "3600"))


def find_go() -> str | None:
    """Return the path of the ``go`` command (PATH, then /usr/local/go/bin), or None."""
    found = shutil.which("go")
    if found:
        return found
    default = Path("/usr/local/go/bin/go")
    return str(default) if default.exists() else None


@dataclass
class KubeCluster:
    """A running test control plane.

    Attributes:
        kubeconfig: path of the admin kubeconfig (client certificate in group
            ``system:masters``).
        server: the kube-apiserver URL, ``https://127.0.0.1:<port>``.
        kubectl: path of a kubectl of the server's minor version.
        helm: path of the helm v3 binary built with the control plane.
        bin_dir: folder of the built binaries (kube-apiserver, kube-controller-manager, etcd,
            helm).
        run_dir: folder with certificates, etcd data, logs and pids of this run.
        version: the Kubernetes version, e.g. ``v1.37.2``.
        env: environment for subprocesses (``KUBECONFIG`` set, cluster tools on PATH).
        node_name: the node's name (``lorafleet-node``).
        node_ip: the node's address on its bridge; Pods reach servers the tests run on the
            host only at this address.
        image: the project's image reference, present in the node's containerd
            (``imagePullPolicy: IfNotPresent`` or ``Never`` finds it).
        host_before: the host's network state read before the node started
            (:func:`tests.support.node_host.host_state`), for the teardown test.
    """

    kubeconfig: Path
    server: str
    kubectl: str
    helm: str
    bin_dir: Path
    run_dir: Path
    version: str
    env: dict[str, str]
    node_name: str = ""
    node_ip: str = ""
    image: str = ""
    host_before: dict[str, Any] = field(default_factory=dict)

    def api_client(self) -> Any:
        """Return a new ``kubernetes.client.ApiClient`` for this cluster (admin identity)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl_run(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig ... ARGS`` and return the completed process (text).

        Args:
            args: kubectl arguments.
            check: raise when kubectl exits non-zero (the message carries its stderr).
            input: text for kubectl's standard input (e.g. a manifest for ``apply -f -``).
            timeout: seconds.

        Raises:
            AssertionError: ``check`` and kubectl failed.
        """
        proc = subprocess.run(
            [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def logs(self, component: str, lines: int = 50) -> str:
        """Return the last ``lines`` lines of a component's log (for failure messages)."""
        path = self.run_dir / f"{component}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _script(
    cmd: str, env: dict[str, str], timeout: float, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), cmd, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def _script_env(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LORAFLEET_CLUSTER_DIR"] = str(run_dir)
    # If this session dies without teardown, the script's reaper stops the control plane.
    env["LORAFLEET_CLUSTER_OWNER_PID"] = str(os.getpid())
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if "KUBECTL" not in env and venv_kubectl.exists():
        env["KUBECTL"] = str(venv_kubectl)
    go = find_go()
    if go:
        env["PATH"] = os.pathsep.join([str(Path(go).parent), env.get("PATH", "")])
    return env


def build_image(*args: str, timeout: float = UP_TIMEOUT_S) -> dict[str, str]:
    """Run ``scripts/image.sh ARGS`` (cached builds) and return its ``KEY=VALUE`` lines.

    Args:
        args: ``build`` for the project's image, or ``scratch NAME BINARY`` for a one-binary
            image.
        timeout: Seconds (a cold build of the project's image takes minutes).

    Returns:
        At least ``IMAGE`` (the reference) and ``ARCHIVE`` (the image archive's path).

    Raises:
        AssertionError: The script failed (its stderr tail is in the message).
    """
    proc = subprocess.run(
        ["bash", str(IMAGE_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"scripts/image.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def _need(condition: bool, msg: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """The session's Kubernetes cluster with its node (see the module docstring)."""
    _need(
        find_go() is not None,
        "Go is not installed: the test Kubernetes cluster is built from Go modules "
        "(scripts/cluster.sh build needs Go >= 1.26 on PATH or in /usr/local/go/bin)",
    )
    _need(
        os.geteuid() == 0,
        "the test node needs root (network namespaces, cgroups, iptables, mounts)",
    )
    image = build_image("build")
    run_dir = tmp_path_factory.mktemp("kube") / "run"
    env = _script_env(run_dir)
    env["LORAFLEET_NODE_IMAGES"] = f"{image['IMAGE']}={image['ARCHIVE']}"
    before = host_state()
    proc = _script("up", env, UP_TIMEOUT_S, "--node")
    if proc.returncode != 0:
        _script("down", env, 300)
        pytest.fail(f"scripts/cluster.sh up failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    try:
        paths = dict(
            line.split("=", 1)
            for line in _script("paths", env, 600).stdout.splitlines()
            if "=" in line
        )
        kubeconfig = Path(paths["KUBECONFIG"])
        cluster_env = dict(os.environ)
        cluster_env["KUBECONFIG"] = str(kubeconfig)
        cluster_env["PATH"] = os.pathsep.join(
            [paths["BIN_DIR"], str(Path(paths["KUBECTL"]).parent), cluster_env.get("PATH", "")]
        )
        cluster = KubeCluster(
            kubeconfig=kubeconfig,
            server=paths["SERVER"],
            kubectl=paths["KUBECTL"],
            helm=paths["HELM"],
            bin_dir=Path(paths["BIN_DIR"]),
            run_dir=Path(paths["RUN_DIR"]),
            version=paths["K8S_VERSION"],
            env=cluster_env,
            node_name=paths.get("NODE_NAME", ""),
            node_ip=paths.get("NODE_IP", ""),
            image=image["IMAGE"],
            host_before=before,
        )
        old_kubeconfig = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(kubeconfig)
        from kubernetes import config

        config.load_kube_config(config_file=str(kubeconfig))
        try:
            yield cluster
        finally:
            if old_kubeconfig is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old_kubeconfig
    finally:
        _stop_cluster(env, run_dir)


def stop_cluster(cluster: KubeCluster) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/cluster.sh down`` for a session cluster (idempotent).

    Args:
        cluster: The cluster.

    Returns:
        The completed ``down`` (its stderr says what was stopped and removed).
    """
    return _script("down", _script_env(cluster.run_dir), 300)


def _stop_cluster(env: dict[str, str], run_dir: Path) -> None:
    """``scripts/cluster.sh down``; if it fails or hangs, kill the recorded process ids."""
    try:
        down = _script("down", env, 300)
        if down.returncode == 0:
            return
        print(f"scripts/cluster.sh down failed: {down.stderr}", file=sys.stderr)
    except subprocess.TimeoutExpired:
        print("scripts/cluster.sh down timed out: killing recorded pids", file=sys.stderr)
    for pid_file in run_dir.glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


@pytest.fixture(scope="session")
def kube_api(kube_cluster: KubeCluster) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` for the session's cluster."""
    api = kube_cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (asynchronously, by the namespace controller)
    after it."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 't'}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name, "labels": {"lorafleet.io/test": "true"}}})
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def kuberay_standin(kube_api: Any) -> Iterator[Callable[..., KubeRayStandIn]]:
    """Factory ``(dashboard_url, path_map=None, **kw) -> KubeRayStandIn``; each one made is
    stopped after the test and its applications removed from Ray."""
    made: list[KubeRayStandIn] = []

    def make(dashboard_url: str, path_map: dict[str, Any] | None = None, **kwargs: Any):
        standin = KubeRayStandIn(kube_api, dashboard_url, path_map=path_map, **kwargs)
        made.append(standin)
        return standin

    try:
        yield make
    finally:
        for standin in made:
            standin.stop()
