"""Helpers for tests that run real Pods on the test node: create, wait, read back.

Every wait names what it waited for and, on timeout, shows the Pod's status and events so a
failure on the node (image, mount, security context) says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

#: Pod phases after which nothing runs again (restartPolicy Never).
TERMINAL = ("Succeeded", "Failed")


def describe(core: client.CoreV1Api, namespace: str, name: str) -> str:
    """A short account of a Pod: phase, container states and the namespace's recent events.

    Args:
        core: A CoreV1Api.
        namespace: The Pod's namespace.
        name: The Pod's name.

    Returns:
        Text for an assertion message.
    """
    lines = []
    try:
        pod = core.read_namespaced_pod(name, namespace)
        lines.append(f"pod {namespace}/{name}: phase {pod.status.phase}, node {pod.spec.node_name}")
        for cs in (pod.status.container_statuses or []) + (
            pod.status.init_container_statuses or []
        ):
            lines.append(f"  container {cs.name}: {cs.state} restarts={cs.restart_count}")
        for cond in pod.status.conditions or []:
            lines.append(
                f"  condition {cond.type}={cond.status} {cond.reason or ''} {cond.message or ''}"
            )
    except ApiException as exc:
        lines.append(f"pod {namespace}/{name}: {exc.status} {exc.reason}")
    events = core.list_namespaced_event(namespace).items
    for ev in sorted(events, key=lambda e: str(e.last_timestamp or e.event_time or ""))[-15:]:
        lines.append(
            f"  event {ev.involved_object.kind}/{ev.involved_object.name}: {ev.reason}: {ev.message}"
        )
    return "\n".join(lines)


def wait_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    predicate: Callable[[client.V1Pod], bool],
    what: str,
    timeout: float = 180.0,
) -> client.V1Pod:
    """Poll a Pod until ``predicate(pod)`` holds.

    Args:
        core: A CoreV1Api.
        namespace: The Pod's namespace.
        name: The Pod's name.
        predicate: Called with the current Pod.
        what: What is awaited, for the failure message.
        timeout: Seconds.

    Returns:
        The Pod that satisfied the predicate.

    Raises:
        AssertionError: On timeout, with :func:`describe`'s account.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            pod = core.read_namespaced_pod(name, namespace)
            if predicate(pod):
                return pod
        except ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}\n"
                + describe(core, namespace, name)
            )
        time.sleep(0.5)


def run_pod(
    core: client.CoreV1Api, namespace: str, manifest: dict[str, Any], timeout: float = 180.0
) -> client.V1Pod:
    """Create a Pod (``restartPolicy: Never``) and wait until it has finished.

    Args:
        core: A CoreV1Api.
        namespace: Where to create it.
        manifest: The Pod manifest (``metadata.name`` required).
        timeout: Seconds until it must have succeeded or failed.

    Returns:
        The finished Pod.
    """
    manifest.setdefault("spec", {}).setdefault("restartPolicy", "Never")
    core.create_namespaced_pod(namespace, manifest)
    name = manifest["metadata"]["name"]
    return wait_pod(
        core,
        namespace,
        name,
        lambda p: p.status.phase in TERMINAL,
        f"Pod {name} to finish",
        timeout,
    )


def start_pod(
    core: client.CoreV1Api, namespace: str, manifest: dict[str, Any], timeout: float = 180.0
) -> client.V1Pod:
    """Create a Pod and wait until it is Ready (every container started and ready).

    Args:
        core: A CoreV1Api.
        namespace: Where to create it.
        manifest: The Pod manifest (``metadata.name`` required).
        timeout: Seconds.

    Returns:
        The ready Pod (``status.podIP`` set).
    """
    core.create_namespaced_pod(namespace, manifest)
    name = manifest["metadata"]["name"]

    def ready(pod: client.V1Pod) -> bool:
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    return wait_pod(core, namespace, name, ready, f"Pod {name} to be Ready", timeout)


def terminated(
    pod: client.V1Pod, container: str | None = None
) -> client.V1ContainerStateTerminated:
    """The terminated state of a Pod's (first or named) container.

    Args:
        pod: A finished Pod.
        container: The container's name; default the first.

    Returns:
        ``state.terminated`` (exit code, reason, message).

    Raises:
        AssertionError: The container has not terminated.
    """
    for cs in pod.status.container_statuses or []:
        if container in (None, cs.name):
            assert cs.state.terminated is not None, f"{cs.name} has not terminated: {cs.state}"
            return cs.state.terminated
    raise AssertionError(f"no container {container!r} in {pod.metadata.name}")
