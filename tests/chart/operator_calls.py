"""Derive the Kubernetes permissions the operator needs from its source code.

Read, not guessed: every ``kubernetes`` client method the operator references
(``<CoreV1Api|BatchV1Api|CustomObjectsApi>.<verb>_namespaced_<resource>``), every kopf
handler decorator (``@kopf.on.event/index/daemon/delete/...`` on a resource), every kopf event
helper (``kopf.event/info/warn/exception``), ownerReferences with ``blockOwnerDeletion``, and
what kopf itself does (CRD scanning, peering). The chart's rules are compared with the result.

A permission is ``(apiGroup, resource, verb)``, with subresources as ``resource/sub``.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Permission = tuple[str, str, str]

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "lorafleet_operator"

#: HTTP verbs of the Python client's method prefixes (RBAC verb names).
CLIENT_VERBS = {
    "read": "get",
    "get": "get",  # CustomObjectsApi
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}
#: Python client resource names (snake_case) -> (apiGroup, plural), by API class attribute.
CLIENT_RESOURCES = {
    "job": ("batch", "jobs"),
    "pod": ("", "pods"),
    "pod_log": ("", "pods/log"),
    "persistent_volume_claim": ("", "persistentvolumeclaims"),
    "event": ("", "events"),
    "config_map": ("", "configmaps"),
    "secret": ("", "secrets"),
    "service": ("", "services"),
    "service_account": ("", "serviceaccounts"),
    "network_policy": ("networking.k8s.io", "networkpolicies"),
}
#: kopf handler decorators that change the object (finalizers, progress annotations).
KOPF_MUTATING = {"create", "update", "delete", "resume", "field", "daemon", "timer"}
KOPF_EVENT_HELPERS = {"event", "info", "warn", "exception"}
_METHOD = re.compile(
    r"^(?P<verb>read|get|list|create|patch|replace|delete)_namespaced_(?P<res>\w+?)"
    r"(?P<status>_status)?$"
)


@dataclass
class Found:
    """A permission and where in the operator's source it comes from."""

    permission: Permission
    where: str


class UnknownCall(AssertionError):
    """A client call this module cannot map to a permission (extend CLIENT_RESOURCES)."""


def _modules() -> Iterable[tuple[str, ast.Module]]:
    for path in sorted(OPERATOR.rglob("*.py")):
        rel = path.relative_to(OPERATOR.parent).with_suffix("")
        yield ".".join(rel.parts), ast.parse(path.read_text(), filename=str(path))


def _resolve(module: Any, node: ast.expr) -> Any:
    """The value of a constant or module-level name argument, or None when dynamic."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(module, node.id, None)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner = getattr(module, node.value.id, None)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _custom_args(tree: ast.Module, attr: ast.Attribute) -> list[ast.expr] | None:
    """Arguments (group, version, namespace, plural, ...) of a CustomObjectsApi method use.

    The method is either called directly or passed as the first argument of a helper
    (``_call(api.get_namespaced_custom_object, group, version, ns, plural, name)``).
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if node.func is attr:
                return list(node.args)
            if node.args and node.args[0] is attr:
                return list(node.args[1:])
    return None


def client_permissions() -> list[Found]:
    """Permissions of every ``kubernetes`` client method the operator references.

    Raises:
        UnknownCall: a method or resource this module cannot map.
    """
    out: list[Found] = []
    lorafleet_plurals = ("basemodels", "loraadapters")
    for name, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            match = _METHOD.match(node.attr)
            if match is None:
                continue
            where = f"{name}:{node.lineno} {node.attr}"
            verb = CLIENT_VERBS[match["verb"]]
            res = match["res"]
            if res == "custom_object":
                module = importlib.import_module(name)  # only modules that call the API
                args = _custom_args(tree, node)
                if args is None or len(args) < 4:
                    raise UnknownCall(f"{where}: cannot read its group/plural arguments")
                group, plural = _resolve(module, args[0]), _resolve(module, args[3])
                if group is None:
                    raise UnknownCall(f"{where}: group is not a constant")
                plurals = (plural,) if plural else lorafleet_plurals  # e.g. self.plural
                if plural is None and group != "lorafleet.io":
                    raise UnknownCall(f"{where}: plural of {group} is not a constant")
                for p in plurals:
                    resource = f"{p}/status" if match["status"] else p
                    out.append(Found((group, resource, verb), where))
                continue
            if res not in CLIENT_RESOURCES:
                raise UnknownCall(f"{where}: no RBAC mapping for client resource {res!r}")
            group, plural = CLIENT_RESOURCES[res]
            resource = f"{plural}/status" if match["status"] else plural
            out.append(Found((group, resource, verb), where))
    return out


def kopf_permissions() -> list[Found]:
    """Permissions kopf needs for the operator's handlers and event helpers."""
    out: list[Found] = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                func = node.func
                chain = []
                value: ast.expr = func
                while isinstance(value, ast.Attribute):
                    chain.append(value.attr)
                    value = value.value
                if not (isinstance(value, ast.Name) and value.id == "kopf"):
                    continue
                chain.reverse()  # e.g. ["on", "event"], ["daemon"], ["warn"]
                where = f"{name}:{node.lineno} kopf.{'.'.join(chain)}"
                if chain in (["event"], ["info"], ["warn"], ["exception"]):
                    out.append(Found(("", "events", "create"), where))
                    continue
                kind = chain[-1]
                is_handler = chain[0] in ("on", "index", "daemon", "timer")
                if not is_handler or kind in ("startup", "cleanup", "login", "probe"):
                    continue
                module = importlib.import_module(name)  # only modules with kopf handlers
                group = _resolve(module, node.args[0]) if node.args else None
                plural = _resolve(module, node.args[-1]) if len(node.args) >= 3 else None
                if group is None or plural is None:
                    raise UnknownCall(f"{where}: resource is not given as constants")
                group = "" if group == "v1" else group
                out += [Found((group, plural, v), where) for v in ("list", "watch")]
                if kind in KOPF_MUTATING:
                    out.append(Found((group, plural, "patch"), where))
    return out


def owner_permissions() -> list[Found]:
    """``update`` on owners' ``finalizers`` when ownerReferences set ``blockOwnerDeletion``
    (required by the OwnerReferencesPermissionEnforcement admission plugin)."""
    from lorafleet_operator import jobs

    ref = jobs.owner_reference(
        {"apiVersion": "lorafleet.io/v1alpha1", "kind": "BaseModel",
         "metadata": {"name": "x", "uid": "u"}}
    )  # fmt: skip
    if not ref.get("blockOwnerDeletion"):
        return []
    where = "lorafleet_operator.jobs.owner_reference blockOwnerDeletion"
    return [
        Found(("lorafleet.io", f"{p}/finalizers", "update"), where)
        for p in ("basemodels", "loraadapters")
    ]


def framework_permissions(clusterwide: bool) -> list[Found]:
    """What kopf does by itself: scan CRDs, peer through its kopf.dev objects, and (only when
    given namespaces) list and watch namespaces to match them
    (kopf._core.reactor.observation.namespace_observer)."""
    peering = "clusterkopfpeerings" if clusterwide else "kopfpeerings"
    found = [
        Found(("apiextensions.k8s.io", "customresourcedefinitions", v), "kopf CRD scanning")
        for v in ("list", "watch")
    ] + [Found(("kopf.dev", peering, v), "kopf peering") for v in ("list", "watch", "patch")]
    if not clusterwide:
        found += [Found(("", "namespaces", v), "kopf namespace scan") for v in ("list", "watch")]
    return found


def needed(clusterwide: bool) -> dict[Permission, list[str]]:
    """Every permission the operator needs, with where each comes from."""
    out: dict[Permission, list[str]] = {}
    for found in (
        client_permissions()
        + kopf_permissions()
        + owner_permissions()
        + framework_permissions(clusterwide)
    ):
        out.setdefault(found.permission, []).append(found.where)
    return out


def granted(rules: Iterable[dict[str, Any]]) -> set[Permission]:
    """Expand RBAC rules into ``(apiGroup, resource, verb)`` triples."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }
