"""The operator's access to the Kubernetes API: one ``ApiClient``, blocking calls in threads.

The ``kubernetes`` client is synchronous; every call here runs in a worker thread
(:func:`asyncio.to_thread`) so kopf's event loop keeps serving other objects. Only the calls
the operator makes are wrapped, each with the HTTP statuses it treats as an answer rather
than an error (404 on reads and deletes, 409 on creates). The chart's RBAC rules are derived
from these calls (tests/chart/test_rbac_rules.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from lorafleet_operator.models import GROUP, VERSION
from lorafleet_operator.rayservice import RAY_GROUP, RAY_VERSION, RAYSERVICE_PLURAL

#: Connections kept open to the API server (daemons of many objects call at once).
CONNECTION_POOL = 32


def api_error_message(exc: ApiException) -> str:
    """The API server's own explanation of a failed call (``Status.message``).

    Args:
        exc: The failed call's exception.

    Returns:
        ``Status.message`` (e.g. which field of a Job the server rejected with 422); the
        HTTP reason when the body holds none.
    """
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or "")


class KubeApi:
    """Async wrappers of the Kubernetes calls the operator makes.

    Args:
        api_client: The configured client (one per operator process).
    """

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.networking = client.NetworkingV1Api(api_client)

    @classmethod
    def connect(cls) -> KubeApi:
        """Load the in-cluster config, else the kubeconfig named by ``KUBECONFIG`` now.

        Raises:
            kubernetes.config.ConfigException: Neither is available.
        """
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            # The client reads KUBECONFIG when imported; read it again now.
            kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = CONNECTION_POOL
        return cls(client.ApiClient(configuration))

    # ------------------------------------------------------------------------- generic

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one blocking client call in a worker thread and return its result."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def get_or_none(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a read; ``None`` when the object does not exist (404).

        Raises:
            ApiException: Any other failure.
        """
        try:
            return await self.call(fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create_ignoring_conflict(
        self, fn: Callable[..., Any], namespace: str, body: Mapping[str, Any]
    ) -> bool:
        """Create an object; ``False`` when it already exists (adopted, not duplicated).

        Raises:
            ApiException: Any failure but 409 Conflict.
        """
        try:
            await self.call(fn, namespace, body)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def plain(self, obj: Any) -> dict[str, Any]:
        """A client model object as the JSON dict the API server sent (camelCase keys)."""
        if isinstance(obj, dict):
            return obj
        return dict(self.api_client.sanitize_for_serialization(obj))

    # ------------------------------------------------------------------ custom objects

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> bool:
        """Merge-patch a lorafleet object's ``status``; ``False`` when it is gone (404)."""
        try:
            await self.call(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                {"status": dict(status)},
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The RayService, or ``None`` when it does not exist."""
        found: dict[str, Any] | None = await self.get_or_none(
            self.custom.get_namespaced_custom_object,
            RAY_GROUP,
            RAY_VERSION,
            namespace,
            RAYSERVICE_PLURAL,
            name,
        )
        return found

    async def create_rayservice(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a RayService; returns it as the API server stored it (pruned fields gone)."""
        return dict(
            await self.call(
                self.custom.create_namespaced_custom_object,
                RAY_GROUP,
                RAY_VERSION,
                namespace,
                RAYSERVICE_PLURAL,
                body,
            )
        )

    async def patch_rayservice(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch a RayService; returns the patched object."""
        return dict(
            await self.call(
                self.custom.patch_namespaced_custom_object,
                RAY_GROUP,
                RAY_VERSION,
                namespace,
                RAYSERVICE_PLURAL,
                name,
                patch,
            )
        )

    async def delete_rayservice(self, namespace: str, name: str) -> None:
        """Delete a RayService (already gone is fine)."""
        try:
            await self.call(
                self.custom.delete_namespaced_custom_object,
                RAY_GROUP,
                RAY_VERSION,
                namespace,
                RAYSERVICE_PLURAL,
                name,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ------------------------------------------------------------------- core objects

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector, as plain dicts."""
        pods = await self.call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        return [self.plain(p) for p in pods.items]

    async def read_pod_log(
        self, namespace: str, name: str, container: str, lines: int, limit_bytes: int
    ) -> str:
        """The last ``lines`` lines (at most ``limit_bytes`` bytes) of a container's log."""
        text = await self.call(
            self.core.read_namespaced_pod_log,
            name,
            namespace,
            container=container,
            tail_lines=lines,
            limit_bytes=limit_bytes,
        )
        return str(text or "")

    async def claim_exists(self, namespace: str, name: str) -> bool:
        """Whether a PersistentVolumeClaim exists."""
        found = await self.get_or_none(
            self.core.read_namespaced_persistent_volume_claim, name, namespace
        )
        return found is not None

    async def create_claim(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a PersistentVolumeClaim; ``False`` when it exists already."""
        return await self.create_ignoring_conflict(
            self.core.create_namespaced_persistent_volume_claim, namespace, body
        )

    async def apply_network_policy(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a NetworkPolicy, or set an existing one's ``spec`` to ``body``'s (a policy made
        by an older operator or other settings gets today's rules).

        Returns:
            True if it was created, False if it existed (and was patched).

        Raises:
            ApiException: The create (but for 409) or the patch failed.
        """
        if await self.create_ignoring_conflict(
            self.networking.create_namespaced_network_policy, namespace, body
        ):
            return True
        await self.call(
            self.networking.patch_namespaced_network_policy,
            body["metadata"]["name"],
            namespace,
            {"spec": body["spec"]},
        )
        return False

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Job as a plain dict, or ``None`` when it does not exist."""
        job = await self.get_or_none(self.batch.read_namespaced_job, name, namespace)
        return None if job is None else self.plain(job)

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a Job; ``False`` when one of that name exists already."""
        return await self.create_ignoring_conflict(
            self.batch.create_namespaced_job, namespace, body
        )

    async def delete_jobs(self, namespace: str, selector: str) -> None:
        """Delete the Jobs matching a label selector, and their Pods (background)."""
        jobs = await self.call(self.batch.list_namespaced_job, namespace, label_selector=selector)
        for job in jobs.items:
            try:
                await self.call(
                    self.batch.delete_namespaced_job,
                    job.metadata.name,
                    namespace,
                    propagation_policy="Background",
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
