"""The chart grants exactly the permissions the operator's code needs, in both modes.

The needed set is derived from the operator's source (tests/chart/operator_calls.py): its
``kubernetes`` client calls, its kopf handlers and event helpers, its ownerReferences, and
kopf's own CRD scanning and peering. A new API call in the operator without a chart rule
fails here; so does a chart rule no code uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.chart import operator_calls
from tests.chart.helm import ROOT, by_kind, template

INSTALL = ROOT / "manifests" / "install" / "10-lorafleet.yaml"
#: Cluster-scoped resources: granted cluster-wide even in namespaced mode (read-only).
CLUSTER_SCOPED = {"customresourcedefinitions", "clusterkopfpeerings", "namespaces"}


def explain(perms: set, where: dict[operator_calls.Permission, list[str]]) -> str:
    return "\n".join(f"  {p}: {', '.join(where.get(p, ['(chart only)']))}" for p in sorted(perms))


def test_needed_permissions_are_found_in_the_code() -> None:
    needed = operator_calls.needed(clusterwide=True)
    # A few anchors, so a broken derivation (finding nothing) cannot pass silently.
    for anchor in [
        ("batch", "jobs", "create"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
        ("ray.io", "rayservices", "patch"),
        ("lorafleet.io", "basemodels/status", "patch"),
        ("lorafleet.io", "loraadapters", "watch"),
        ("", "events", "create"),
    ]:
        assert anchor in needed, f"derivation lost {anchor}"
    assert not any(resource == "secrets" for _, resource, _ in needed), (
        "the operator's code reads Secrets: it must pass them to Jobs by secretKeyRef instead"
    )


def test_cluster_wide_rules_are_exactly_what_the_code_needs() -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    (role,) = by_kind(docs, "ClusterRole")
    have = operator_calls.granted(role["rules"])
    where = operator_calls.needed(clusterwide=True)
    need = set(where)
    assert not need - have, "the chart misses permissions the operator uses:\n" + explain(
        need - have, where
    )
    assert not have - need, "the chart grants permissions no code uses:\n" + explain(
        have - need, where
    )


def test_namespaced_rules_are_exactly_what_the_code_needs(helm_bin: Path) -> None:
    objects: list[dict[str, Any]] = template(
        helm_bin, sets={"watchNamespaces": '["team-a", "team-b"]'}
    )
    where = operator_calls.needed(clusterwide=False)
    need_ns = {p for p in where if p[1] not in CLUSTER_SCOPED}
    need_cluster = {p for p in where if p[1] in CLUSTER_SCOPED}
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        have = operator_calls.granted(role["rules"])
        assert have == need_ns, (
            f"Role in {role['metadata']['namespace']}:\nmissing:\n{explain(need_ns - have, where)}"
            f"\nexcess:\n{explain(have - need_ns, where)}"
        )
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert operator_calls.granted(cluster_role["rules"]) == need_cluster
