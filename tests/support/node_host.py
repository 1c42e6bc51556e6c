"""What the test node changes on this machine, read from the host (for the teardown test).

:func:`host_state` reads everything ``scripts/cluster.sh up --node`` adds and ``down`` must
remove: processes of the node's parts, network links and namespaces, iptables rules and
chains (IPv4 and IPv6, every table), mounts, the node's cgroups and the sysctls the node or
the kubelet sets. :func:`leftovers` compares two readings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: Processes of the node (matched against the executable's name).
NODE_PROCESSES = (
    "kubelet",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "kube-proxy",
    "kube-scheduler",
    "coredns",
    "pause",
)
#: The sysctls scripts/cluster-node.sh saves and restores.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
_TABLES = ("filter", "nat", "mangle", "raw")
_COUNTERS = re.compile(r" \[\d+:\d+\]$")


def _run(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return proc.stdout


def _iptables(cmd: str) -> list[str]:
    rules: list[str] = []
    for table in _TABLES:
        for line in _run(f"{cmd}-save", "-t", table).splitlines():
            if line.startswith(("#", "COMMIT")):
                continue
            # Chain declarations carry packet counters: keep the name and policy only.
            rules.append(table + " " + _COUNTERS.sub("", line))
    return sorted(rules)


def _node_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = Path((proc / "cmdline").read_bytes().split(b"\0")[0].decode()).name
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if exe in NODE_PROCESSES:
            found.append(f"{exe} (pid {proc.name})")
    return sorted(found)


def _sysctls() -> dict[str, str]:
    values = {}
    for key in SYSCTLS:
        path = Path("/proc/sys") / key.replace(".", "/")
        if path.exists():
            values[key] = " ".join(path.read_text().split())
    return values


def host_state() -> dict[str, Any]:
    """Read what the test node may change on this machine.

    Returns:
        A dict of sorted lists / dicts: ``processes``, ``links``, ``netns``, ``iptables``,
        ``ip6tables``, ``mounts``, ``cgroups``, ``sysctls``.
    """
    links = sorted(
        line.split(":")[1].strip().split("@")[0]
        for line in _run("ip", "-o", "link", "show").splitlines()
        if ":" in line
    )
    return {
        "processes": _node_processes(),
        "links": links,
        "netns": sorted(_run("ip", "netns", "list").split()),
        "iptables": _iptables("iptables"),
        "ip6tables": _iptables("ip6tables"),
        "mounts": sorted(_run("findmnt", "-rn", "-o", "TARGET").splitlines()),
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/lorafleet")),
        "sysctls": _sysctls(),
    }


def leftovers(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What ``after`` has that ``before`` had not (and sysctls whose value changed).

    Args:
        before: A :func:`host_state` reading taken before the node started.
        after: A reading taken after ``down``.

    Returns:
        Only the non-empty differences, by key; ``{}`` when the machine is as it was.
    """
    diff: dict[str, Any] = {}
    for key, now in after.items():
        if key == "sysctls":
            changed = {
                k: f"{before.get(key, {}).get(k)} -> {v}"
                for k, v in now.items()
                if before.get(key, {}).get(k) != v
            }
            if changed:
                diff[key] = changed
            continue
        added = sorted(set(now) - set(before.get(key, [])))
        if added:
            diff[key] = added
    return diff
