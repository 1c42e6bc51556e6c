"""`scripts/cluster.sh down` leaves this machine as the node found it.

Runs last in a session (marker ``node_teardown``, ordered by tests/conftest.py): it takes the
session's cluster down — after every other test ran real Pods on it — and compares the host
with the reading taken before ``up --node``: no kubelet, containerd, shim, runc, CoreDNS or
pause process, no bridge, veth or network namespace, no iptables rule or chain the node added
(IPv4 and IPv6, every table), no mount, no cgroup, every sysctl back to its earlier value.
"""

from __future__ import annotations

import time

import pytest

from tests.support.kube import KubeCluster, stop_cluster
from tests.support.node_host import host_state, leftovers

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.node_teardown]


def test_down_removes_everything_the_node_added(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.host_before, "the session fixture read the host before the node started"
    during = host_state()
    # Sanity: the reading sees the node while it runs (otherwise the comparison proves nothing).
    seen = leftovers(kube_cluster.host_before, during)
    assert any(p.startswith("kubelet ") for p in seen.get("processes", [])), seen
    assert any(p.startswith("containerd-shim-runc-v2 ") for p in seen.get("processes", [])), seen
    assert any("LORAFLEET-ISOLATION" in r for r in seen.get("iptables", [])), seen
    assert any("KUBE-SERVICES" in r for r in seen.get("iptables", [])), seen
    assert (
        "net.ipv4.ip_forward" in seen.get("sysctls", {})
        or kube_cluster.host_before["sysctls"].get("net.ipv4.ip_forward") == "1"
    )

    down = stop_cluster(kube_cluster)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30  # processes reaped, lazy unmounts settled
    while True:
        left = leftovers(kube_cluster.host_before, host_state())
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert left == {}, f"left behind by `scripts/cluster.sh down`: {left}\n{down.stderr}"
