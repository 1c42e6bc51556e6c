"""The operator's own identity on the test control plane: the chart's ServiceAccount and RBAC.

Tests that run the operator (the end-to-end test above all) can run it as the chart's
ServiceAccount instead of the admin, which proves the chart's RBAC suffices:

    from tests.chart.operator_identity import (  # noqa: F401 (a fixture)
        kubeconfig_in_process, operator_sa_kubeconfig,
    )

    @pytest.fixture
    def run_operator(run_operator, operator_sa_kubeconfig):  # noqa: F811 (wraps conftest's)
        # operator_sa_kubeconfig: a kubeconfig Path whose user is a TokenRequest token of the
        # chart's ServiceAccount, bound by the chart's Role in `namespace` (namespaced mode).
        @contextlib.contextmanager
        def start(**env):
            with kubeconfig_in_process(operator_sa_kubeconfig), run_operator(**env) as runner:
                yield runner

        return start

:func:`kubeconfig_in_process` is needed in-process because the ``kubernetes`` package reads
``KUBECONFIG`` once, at import; on exit it also restores the package's default client
configuration, which the operator's startup handler replaces. An operator run as a
subprocess just gets ``KUBECONFIG`` in its environment (tests/chart/test_operator_identity.py
does that). Seen working: tests/operator/test_operator_e2e.py passes with its ``run_operator``
wrapped as above (the in-process kopf operator then holds only the chart's Role).

Only the ServiceAccount and its RBAC are applied: no CRDs and no peering object (apply those,
or run the operator ``--standalone``). The fixture grants namespaced mode, a Role in
``namespace``; for cluster-wide mode (or several namespaces) call
:func:`install_operator_identity` and :meth:`OperatorIdentity.remove` when done.

The RBAC objects are rendered by the real helm from ``charts/lorafleet`` (templates
``serviceaccount.yaml`` and ``rbac.yaml`` only) and applied with server-side apply; the token
comes from the TokenRequest API (``serviceaccounts/token``), as a kubelet gets one for a Pod.
The token is written only into the kubeconfig file (mode 0600), never logged.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, KUBE_VERSION, RAYSERVICE_API, run_helm

#: Field manager of the server-side applies made here.
FIELD_MANAGER = "lorafleet-chart-tests"
#: Lifetime of the TokenRequest token (seconds); the API server's minimum is 600.
TOKEN_SECONDS = 3600


@dataclass
class OperatorIdentity:
    """The chart's ServiceAccount and RBAC, applied to a cluster, and a kubeconfig for it.

    Attributes:
        namespace: Namespace of the ServiceAccount (the release namespace).
        service_account: The ServiceAccount's name.
        username: Its RBAC user name, ``system:serviceaccount:<namespace>:<name>``.
        kubeconfig: A kubeconfig whose user is a TokenRequest token of the ServiceAccount.
        objects: The applied objects (apiVersion, kind, metadata), for removal.
    """

    namespace: str
    service_account: str
    username: str
    kubeconfig: Path
    objects: list[dict[str, Any]] = field(default_factory=list)
    _cluster: Any = None

    def remove(self) -> None:
        """Delete the applied objects (cluster-scoped ones included); missing ones are fine."""
        for obj in reversed(self.objects):
            meta = obj["metadata"]
            args = [
                "delete",
                obj["kind"].lower(),
                meta["name"],
                "--ignore-not-found",
                "--wait=false",
            ]
            if meta.get("namespace"):
                args += ["-n", meta["namespace"]]
            self._cluster.kubectl_run(*args, check=False)
        self.kubeconfig.unlink(missing_ok=True)


def render_rbac(
    helm: str | Path,
    *,
    namespace: str,
    fullname: str,
    watch_namespaces: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Render the chart's ServiceAccount and RBAC objects.

    Args:
        helm: Path of the helm binary.
        namespace: Release namespace (where the ServiceAccount lives).
        fullname: ``fullnameOverride``: the name of the ServiceAccount, (Cluster)Roles and
            bindings, unique per call so parallel installs do not collide.
        watch_namespaces: Empty for cluster-wide mode, else the namespaced-mode list.

    Returns:
        The objects, in the chart's order.
    """
    args = [
        "template", "lorafleet", str(CHART), "--namespace", namespace,
        "--kube-version", KUBE_VERSION, "--api-versions", RAYSERVICE_API,
        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
        "--set-json", f'fullnameOverride="{fullname}"',
        "--set-json", f"watchNamespaces={list(watch_namespaces)!r}".replace("'", '"'),
    ]  # fmt: skip
    return [doc for doc in yaml.safe_load_all(run_helm(Path(helm), args)) if doc]


def request_token(api: Any, namespace: str, service_account: str, seconds: int) -> str:
    """Return a token of a ServiceAccount from the TokenRequest API.

    Args:
        api: A ``kubernetes.client.ApiClient`` allowed to create ``serviceaccounts/token``.
        namespace: The ServiceAccount's namespace.
        service_account: Its name.
        seconds: Requested lifetime in seconds (at least 600).

    Returns:
        The bearer token (a JWT). Never log it.
    """
    from kubernetes import client

    review = client.CoreV1Api(api).create_namespaced_service_account_token(
        service_account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
        ),
    )
    return review.status.token


def token_kubeconfig(admin_kubeconfig: Path, token: str, user: str, dest: Path) -> Path:
    """Write a kubeconfig with the admin kubeconfig's cluster and a bearer token user.

    Args:
        admin_kubeconfig: The cluster's admin kubeconfig (server and CA are taken from it).
        token: The bearer token.
        user: A name for the kubeconfig's user entry.
        dest: Where to write (mode 0600).

    Returns:
        ``dest``.
    """
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == current["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user}}],
        "current-context": user,
    }
    dest.touch(mode=0o600)
    dest.write_text(yaml.safe_dump(config))
    return dest


def install_operator_identity(
    kube_cluster: Any,
    namespace: str,
    *,
    watch_namespaces: Sequence[str] = (),
    dest_dir: Path | None = None,
) -> OperatorIdentity:
    """Apply the chart's ServiceAccount and RBAC and make a kubeconfig for that identity.

    Args:
        kube_cluster: The ``kube_cluster`` fixture's value (``helm``, ``kubeconfig``,
            ``kubectl_run``, ``api_client``).
        namespace: Release namespace: where the ServiceAccount is created (must exist).
        watch_namespaces: Empty for cluster-wide RBAC (ClusterRole), else Roles in these.
        dest_dir: Folder of the kubeconfig file (default: the run folder of the cluster).

    Returns:
        The identity; call :meth:`OperatorIdentity.remove` when done.

    Raises:
        AssertionError: the server rejected the objects (kubectl's message included).
    """
    fullname = f"lorafleet-{uuid.uuid4().hex[:8]}"
    objects = render_rbac(
        kube_cluster.helm, namespace=namespace, fullname=fullname, watch_namespaces=watch_namespaces
    )
    identity = OperatorIdentity(
        namespace=namespace,
        service_account=fullname,
        username=f"system:serviceaccount:{namespace}:{fullname}",
        kubeconfig=Path(dest_dir or kube_cluster.run_dir) / f"{fullname}.kubeconfig",
        objects=[
            {"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": o["metadata"]}
            for o in objects
        ],
        _cluster=kube_cluster,
    )
    try:
        kube_cluster.kubectl_run(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
            input=yaml.safe_dump_all(objects),
        )  # fmt: skip
        api = kube_cluster.api_client()
        try:
            token = request_token(api, namespace, fullname, TOKEN_SECONDS)
        finally:
            api.close()
        token_kubeconfig(kube_cluster.kubeconfig, token, fullname, identity.kubeconfig)
    except BaseException:
        identity.remove()
        raise
    return identity


@contextlib.contextmanager
def kubeconfig_in_process(path: Path) -> Iterator[Path]:
    """Make ``path`` the kubeconfig that kopf and ``kubernetes.config.load_kube_config()`` use
    in this process; on exit restore the previous one and the ``kubernetes`` package's default
    client configuration (which an operator started inside replaces with ``path``'s).

    Args:
        path: A kubeconfig file.

    Yields:
        ``path``.
    """
    from kubernetes import client
    from kubernetes.config import kube_config

    old_env = os.environ.get("KUBECONFIG")
    old_default = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    old_configuration = client.Configuration.get_default_copy()
    os.environ["KUBECONFIG"] = str(path)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    try:
        yield path
    finally:
        client.Configuration.set_default(old_configuration)
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old_default
        if old_env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_env


@pytest.fixture
def operator_sa_kubeconfig(kube_cluster: Any, namespace: str) -> Iterator[Path]:
    """A kubeconfig for the chart's operator ServiceAccount, authenticated with a TokenRequest
    token, with the chart's namespaced-mode RBAC for ``namespace`` (``watchNamespaces:
    [namespace]``): run the operator with ``--namespace <namespace>``. Removed afterwards."""
    identity = install_operator_identity(kube_cluster, namespace, watch_namespaces=[namespace])
    try:
        yield identity.kubeconfig
    finally:
        identity.remove()
