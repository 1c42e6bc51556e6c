"""Builder of a BaseModel's KubeRay ``RayService`` and readers of its status.

One RayService per BaseModel (same name, owned by it). Its ``serveConfigV2`` is the YAML of
:func:`lorafleet_operator.serveconfig.build_serve_config`; its Ray cluster has a head pod that
runs no model replicas (``num-cpus: 0``) and one worker group whose pods request the GPUs
(as ``Settings.gpu_resource_name``), CPU and memory of ``spec.serving`` (one model replica per
worker pod) and mount the model volume read-only. KubeRay v1 API: ``ray.io/v1`` (``ray-operator/apis/ray/v1/rayservice_types.go``).

Ray is not open to the namespace: ``authOptions.mode: token`` makes KubeRay (>= 1.5) generate a
per-cluster token Secret, give it to every Ray container (``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``)
and use it itself, so the dashboard (job submission), the Ray client and GCS refuse requests
without it; the Serve HTTP port stays open to clients. Ray Pods get no ServiceAccount token
(``automountServiceAccountToken: false``: Ray never calls the Kubernetes API) and the
RuntimeDefault seccomp profile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lorafleet_operator.jobs import (
    KIND_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    VOLUME_NAME,
    object_labels,
    owner_reference,
    restricted_pod_security,
)
from lorafleet_operator.models import BASEMODEL_KIND, BaseModelSpec
from lorafleet_operator.settings import Settings

#: KubeRay's limit on a RayService name (``MaxRayServiceNameLength``: its RayCluster's name
#: gets a 6-character suffix and must stay within 53), and its DNS-1035 label rule.
MAX_RAYSERVICE_NAME = 47
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

RAY_GROUP = "ray.io"
RAY_VERSION = "v1"
RAYSERVICE_PLURAL = "rayservices"
WORKER_GROUP = "models"
#: Resources of the head pod (GCS, dashboard, Serve controller and HTTP proxy).
HEAD_RESOURCES = {"cpu": "1", "memory": "4Gi"}
DEFAULT_WORKER_CPU = "2"
DEFAULT_WORKER_MEMORY = "8Gi"


def rayservice_name(basemodel_name: str) -> str:
    """The RayService of a BaseModel has the BaseModel's name."""
    return basemodel_name


def ray_pod_labels(basemodel_name: str) -> dict[str, str]:
    """Labels of a BaseModel's Ray Pods (head and workers), and only of them.

    ``lorafleet.io/role: ray`` tells them from the BaseModel's install and cleanup Job Pods,
    which carry the same kind and name labels with roles ``install``/``cleanup``.
    """
    return object_labels(BASEMODEL_KIND, basemodel_name, "ray")


def rayservice_name_error(basemodel_name: str) -> str | None:
    """Why KubeRay would refuse this BaseModel's RayService name, or None.

    KubeRay (``ValidateRayServiceMetadata``) wants a DNS-1035 label (lowercase letters, digits
    and '-', starting with a letter) of at most 47 characters; a BaseModel's name is its
    RayService's, so the BaseModel is refused up front rather than left waiting.

    Args:
        basemodel_name: ``metadata.name`` of the BaseModel.

    Returns:
        A message naming ``metadata.name`` and the rule it breaks, or None.
    """
    if len(basemodel_name) > MAX_RAYSERVICE_NAME:
        return (
            f"metadata.name: {basemodel_name!r} is {len(basemodel_name)} characters; a BaseModel"
            f" names its KubeRay RayService, which allows at most {MAX_RAYSERVICE_NAME}"
        )
    if not _DNS1035_LABEL.match(basemodel_name):
        return (
            f"metadata.name: {basemodel_name!r} must start with a letter and hold only lowercase"
            " letters, digits and '-' (a DNS-1035 label: it names the KubeRay RayService)"
        )
    return None


def serve_endpoint(basemodel_name: str, namespace: str, settings: Settings) -> str:
    """The in-cluster URL of the Serve service KubeRay creates (``<name>-serve-svc``).

    Args:
        basemodel_name: The BaseModel's name.
        namespace: Its namespace.
        settings: Operator settings (Serve HTTP port).

    Returns:
        ``http://<name>-serve-svc.<namespace>.svc:<port>``.
    """
    return (
        f"http://{rayservice_name(basemodel_name)}-serve-svc.{namespace}.svc:{settings.serve_port}"
    )


def probe_endpoint(basemodel_name: str, namespace: str, settings: Settings) -> str:
    """Where the operator asks the Serve application (``GET /stats``): the in-cluster Serve
    URL (:func:`serve_endpoint`), or ``settings.serving_probe_url`` with ``{service}``,
    ``{namespace}`` and ``{port}`` filled in, for an operator that cannot resolve cluster DNS
    (run outside the cluster, through a port-forward or an ingress).

    Raises:
        ValueError: The template names another placeholder.
    """
    template = settings.serving_probe_url
    if not template:
        return serve_endpoint(basemodel_name, namespace, settings)
    service = f"{rayservice_name(basemodel_name)}-serve-svc"
    try:
        return template.format(service=service, namespace=namespace, port=settings.serve_port)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"LORAFLEET_SERVING_PROBE_URL {template!r}: use only {{service}}, {{namespace}}, "
            f"{{port}} ({exc})"
        ) from exc


def _pod_template(
    *,
    container_name: str,
    image: str,
    resources: dict[str, Any],
    claim_name: str,
    settings: Settings,
    ports: list[dict[str, Any]],
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    labels: dict[str, str],
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(settings.run_as_user),
        "containers": [
            {
                "name": container_name,
                "image": image,
                "imagePullPolicy": settings.image_pull_policy,
                "resources": resources,
                "ports": ports,
                "volumeMounts": [
                    {"name": VOLUME_NAME, "mountPath": settings.models_mount, "readOnly": True}
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [
            {
                "name": VOLUME_NAME,
                "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True},
            }
        ],
    }
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = tolerations
    return {"metadata": {"labels": labels}, "spec": spec}


def build_rayservice(
    body: Mapping[str, Any],
    spec: BaseModelSpec,
    *,
    serve_config_yaml: str,
    claim_name: str,
    settings: Settings,
) -> dict[str, Any]:
    """Build the RayService of a BaseModel.

    Args:
        body: The BaseModel object (owner).
        spec: Its parsed spec (``serving``: replicas/autoscaling, gpus, cpu, memory,
            nodeSelector, tolerations, image, rayVersion).
        serve_config_yaml: ``serveConfigV2`` text (see :func:`serveconfig.dump_serve_config`).
        claim_name: The model volume's claim, mounted read-only at the models mount.
        settings: Operator settings (default image, Ray version, uid, GPU resource name,
            image pull secrets).

    Returns:
        A ``ray.io/v1`` RayService manifest.
    """
    meta = body["metadata"]
    serving = spec.serving
    image = serving.image or settings.ray_image
    labels = {MANAGED_BY_LABEL: MANAGED_BY, KIND_LABEL: "basemodel", NAME_LABEL: meta["name"]}
    pod_labels = ray_pod_labels(meta["name"])
    cpu = serving.cpu or DEFAULT_WORKER_CPU
    memory = serving.memory or DEFAULT_WORKER_MEMORY
    worker_resources: dict[str, Any] = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    if serving.gpus:
        worker_resources["requests"][settings.gpu_resource_name] = str(serving.gpus)
        worker_resources["limits"][settings.gpu_resource_name] = str(serving.gpus)
    if serving.autoscaling is not None:
        replicas = serving.autoscaling.min_replicas
        min_replicas, max_replicas = (
            serving.autoscaling.min_replicas,
            serving.autoscaling.max_replicas,
        )
    else:
        replicas = 1 if serving.replicas is None else serving.replicas
        min_replicas = max_replicas = replicas
    tolerations = [t.to_wire() for t in serving.tolerations or []]
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayService",
        "metadata": {
            "name": rayservice_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "serveConfigV2": serve_config_yaml,
            "rayClusterConfig": {
                "rayVersion": serving.ray_version or settings.ray_version,
                "authOptions": {"mode": "token"},
                "enableInTreeAutoscaling": serving.autoscaling is not None,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _pod_template(
                        container_name="ray-head",
                        image=image,
                        resources={"requests": HEAD_RESOURCES, "limits": HEAD_RESOURCES},
                        claim_name=claim_name,
                        settings=settings,
                        ports=[
                            {"containerPort": 6379, "name": "gcs-server"},
                            {"containerPort": 8265, "name": "dashboard"},
                            {"containerPort": 10001, "name": "client"},
                            {"containerPort": settings.serve_port, "name": "serve"},
                        ],
                        labels=pod_labels,
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": WORKER_GROUP,
                        "replicas": replicas,
                        "minReplicas": min_replicas,
                        "maxReplicas": max_replicas,
                        "rayStartParams": {},
                        "template": _pod_template(
                            container_name="ray-worker",
                            image=image,
                            resources=worker_resources,
                            claim_name=claim_name,
                            settings=settings,
                            ports=[{"containerPort": settings.serve_port, "name": "serve"}],
                            node_selector=serving.node_selector,
                            tolerations=tolerations,
                            labels=pod_labels,
                        ),
                    }
                ],
            },
        },
    }


def rayservice_readiness(rayservice: Mapping[str, Any] | None) -> tuple[bool, str, str]:
    """Read whether a RayService serves, from the status KubeRay writes.

    Args:
        rayservice: The RayService object, or ``None`` when it does not exist.

    Returns:
        ``(ready, reason, message)``: ready when the ``Ready`` condition is True (KubeRay >= 1.3)
        or, for older KubeRay, ``serviceStatus`` is ``Running``; otherwise the reason and message
        of the ``Ready`` condition or of the first application that is not ``RUNNING``.
    """
    if rayservice is None:
        return False, "RayServiceMissing", "the RayService does not exist yet"
    status = rayservice.get("status") or {}
    ready_cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready_cond is not None and ready_cond.get("status") == "True":
        return True, ready_cond.get("reason") or "Ready", ready_cond.get("message") or ""
    if ready_cond is None and status.get("serviceStatus") == "Running":
        return True, "Running", "RayService is running"
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    for name, app in apps.items():
        if app.get("status") not in ("RUNNING", None):
            message = app.get("message") or ""
            return (
                False,
                "ApplicationNotRunning",
                f"application {name}: {app.get('status')} {message}".strip(),
            )
    if ready_cond is not None:
        return False, ready_cond.get("reason") or "NotReady", ready_cond.get("message") or ""
    return False, "Initializing", "KubeRay has not reported the RayService's status yet"


#: Container waiting reasons that do not go away by themselves (the kubelet's, as in
#: ``kubectl get pods``): the Ray cluster will not start until the spec or the cluster changes.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def ray_pod_problems(pods: Sequence[Mapping[str, Any]], limit: int = 3) -> str | None:
    """Why a BaseModel's Ray Pods do not run, as a user would read it in ``kubectl describe``.

    KubeRay's RayService status says only that it is not ready; the reason (an image that
    cannot be pulled, a crash loop, no node with enough CPU/memory/GPUs) is on the Pods.

    Args:
        pods: The Ray Pods (``ray_pod_labels``) as plain dicts (the API's JSON).
        limit: At most this many problems are named.

    Returns:
        ``"pod <name>: <Reason>: <message>; ..."`` for Pods the scheduler cannot place
        (``PodScheduled`` False) and containers waiting for a :data:`STUCK_REASONS` reason, or
        None when there is none.
    """
    problems: list[str] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                problems.append(
                    f"pod {name}: {c.get('reason') or 'Unschedulable'}: "
                    f"{c.get('message') or ''}".strip()
                )
        for cs in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                problems.append(
                    f"pod {name}: {waiting['reason']}: {waiting.get('message') or ''}".strip()
                )
    if not problems:
        return None
    return "; ".join(p[:300] for p in problems[:limit])
