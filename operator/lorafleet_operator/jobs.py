"""Builders of the install and cleanup Jobs (pure functions: dicts in, manifests out).

The Job runs the installer's command line (docs/interfaces.md section 1). Its name is
derived from a hash of the owner's uid and everything that determines the install result, so
an operator that restarts finds the Job it created before instead of creating a second one.
Secrets reach the installer only as ``secretKeyRef`` environment variables; their values never
appear in the Job, the custom resource, events or logs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from lorafleet_operator.installer_args import adapter_install_args, base_install_args
from lorafleet_operator.models import (
    API_VERSION,
    BASEMODEL_KIND,
    DNS1123_SUBDOMAIN_PATTERN,
    LORAADAPTER_KIND,
    BaseModelSpec,
    LoraAdapterSpec,
    Source,
)
from lorafleet_operator.settings import Settings

#: Environment variables the installer reads secrets from (each optional in the Secret).
SECRET_ENV_KEYS: tuple[str, ...] = (
    "HF_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HTTPS_BEARER_TOKEN",
)
#: Labels on every object the operator creates.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "lorafleet"
KIND_LABEL = "lorafleet.io/kind"
NAME_LABEL = "lorafleet.io/name"
ROLE_LABEL = "lorafleet.io/role"
#: Where the kubelet writes the container's termination message.
TERMINATION_LOG = "/dev/termination-log"
VOLUME_NAME = "models"
CONTAINER_NAME = "installer"
#: The root filesystem is read-only; HOME and TMPDIR are this emptyDir.
SCRATCH_VOLUME = "scratch"
SCRATCH_MOUNT = "/tmp"
#: Where ``pvc://<claim>/<path>`` sources are mounted (read-only): the installer reads them at
#: ``$LORAFLEET_PVC_ROOT/<claim>/<path>`` (docs/interfaces.md section 1).
PVC_ROOT = "/mnt/pvc"
_MAX_NAME = 63


def owner_reference(body: Mapping[str, Any], *, controller: bool = True) -> dict[str, Any]:
    """Return an ownerReference to a custom object.

    Args:
        body: The owner object (needs ``apiVersion``, ``kind``, ``metadata.name/uid``).
        controller: Whether the owner is the managing controller.

    Returns:
        A ``metav1.OwnerReference`` dict with ``blockOwnerDeletion`` set.
    """
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def restricted_pod_security(uid: int) -> dict[str, Any]:
    """The pod ``securityContext`` of every Pod lorafleet makes (Pod Security "restricted").

    Args:
        uid: User and group id the containers run as (the image's non-root user).

    Returns:
        ``runAsNonRoot``, the uid/gid, ``fsGroup`` (the volume is writable by it) and the
        ``RuntimeDefault`` seccomp profile.
    """
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _short_kind(kind: str) -> str:
    return {BASEMODEL_KIND: "bm", LORAADAPTER_KIND: "lora"}.get(kind, kind.lower()[:4])


def deterministic_name(prefix: str, name: str, *parts: Any) -> str:
    """Build a DNS-1123 label ``<prefix>-<name>-<hash>`` of at most 63 characters.

    Args:
        prefix: Short prefix, e.g. ``install-bm``.
        name: The owner's name (truncated to fit).
        *parts: JSON-serialisable values hashed (sha256, 10 hex digits) into the suffix.

    Returns:
        The name; equal inputs give equal names.
    """
    digest = hashlib.sha256(
        json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    ).hexdigest()[:10]
    room = _MAX_NAME - len(prefix) - len(digest) - 2
    stem = re.sub(r"[^a-z0-9-]", "-", name.lower())[:room].strip("-")
    return f"{prefix}-{stem}-{digest}" if stem else f"{prefix}-{digest}"


def install_job_name(
    kind: str,
    body: Mapping[str, Any],
    spec: BaseModelSpec | LoraAdapterSpec,
    base_path: str | None = None,
) -> str:
    """The install Job's name for an object's current source and revision.

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        body: The object (for ``metadata.name`` and ``metadata.uid``).
        spec: Its parsed spec; the source (and for a base, checkpoint/task/labels) is hashed.
        base_path: For an adapter: the install folder of the base it is validated against.

    Returns:
        A deterministic DNS-1123 name.
    """
    meta = body["metadata"]
    if isinstance(spec, BaseModelSpec):
        inputs: dict[str, Any] = {
            "source": spec.source.to_wire(),
            "checkpoint": spec.checkpoint.to_wire() if spec.checkpoint else None,
            "task": str(spec.task),
            "numLabels": spec.num_labels,
            "maxRank": spec.serving.max_rank,
        }
    else:
        inputs = {"source": spec.source.to_wire(), "basePath": base_path}
    return deterministic_name(f"install-{_short_kind(kind)}", meta["name"], meta["uid"], inputs)


def cleanup_job_name(kind: str, body: Mapping[str, Any], path: str) -> str:
    """The cleanup Job's name for removing ``path`` of an object.

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        body: The object (for ``metadata.name``/``uid``).
        path: The folder removed.

    Returns:
        A deterministic DNS-1123 name.
    """
    meta = body["metadata"]
    return deterministic_name(f"remove-{_short_kind(kind)}", meta["name"], meta["uid"], path)


def progress_file(settings: Settings, namespace: str, kind: str, name: str) -> str:
    """Path (inside the Job's mount) of the installer's progress file for one object.

    Args:
        settings: Operator settings (for the mount path).
        namespace: The object's namespace.
        kind: ``BaseModel`` or ``LoraAdapter``.
        name: The object's name.

    Returns:
        ``<mount>/.progress/<namespace>/<kind plural>/<name>.json``.
    """
    plural = "basemodels" if kind == BASEMODEL_KIND else "adapters"
    return f"{settings.models_mount}/.progress/{namespace}/{plural}/{name}.json"


def object_labels(kind: str, name: str, role: str) -> dict[str, str]:
    """Labels of what lorafleet makes for one object: managed-by, kind, name and role
    (``install``, ``cleanup``, ``ray``), so selectors can tell Job Pods from Ray Pods."""
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        KIND_LABEL: kind.lower(),
        NAME_LABEL: name,
        ROLE_LABEL: role,
    }


def _secret_env(source: Source) -> list[dict[str, Any]]:
    if source.secret_ref is None:
        return []
    return [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {"name": source.secret_ref.name, "key": key, "optional": True}
            },
        }
        for key in SECRET_ENV_KEYS
    ]


def source_claims(*uris: str | None) -> list[str]:
    """The claims named by ``pvc://<claim>/<path>`` URIs, in order, without repeats.

    Args:
        *uris: Source or checkpoint URIs (``None`` and other schemes are skipped).

    Returns:
        Claim names.
    """
    claims: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            if claim and claim not in claims:
                claims.append(claim)
    return claims


def cluster_source_error(**uris: str | None) -> str | None:
    """Why a spec's sources cannot be installed on a cluster, or None when they can.

    ``file://`` sources name a path on the machine that runs ``lorafleet up`` (local mode); an
    install Job's Pod runs elsewhere, from an image, and would not see it. The same manifests
    work in local mode, which reads them itself, so the CRD schema allows the scheme and the
    operator refuses it. A ``pvc://<claim>/<path>`` must name a claim by a valid object name
    (a DNS-1123 subdomain), as the Job mounts it.

    Args:
        **uris: Spec field path (``source_uri``, ``checkpoint_uri``) -> URI or None.

    Returns:
        A message naming the field and what is wrong, or None.
    """
    for field_name, uri in uris.items():
        where = "spec." + field_name.replace("_uri", ".uri")
        if uri and uri.startswith("file://"):
            return (
                f"{where}: file:// is read from the machine running `lorafleet up` (local mode"
                " only); on a cluster use pvc://<claim>/<path>, hf://, s3:// or https://"
            )
        if uri and uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            if len(claim) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN_PATTERN, claim):
                return (
                    f"{where}: {claim!r} is not a PersistentVolumeClaim name (lowercase letters,"
                    " digits, '-' and '.'); the form is pvc://<claim>/<path>"
                )
    return None


def _source_volumes(claims: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read-only volumes and mounts for the claims of ``pvc://`` sources."""
    volumes, mounts = [], []
    for i, claim in enumerate(claims):
        volume = f"source-{i}"
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def _job(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    owner: dict[str, Any],
    command: list[str],
    env: list[dict[str, Any]],
    claim_name: str,
    settings: Settings,
    backoff_limit: int,
    resources: Mapping[str, Mapping[str, str]] | None = None,
    source_claims: list[str] | None = None,
) -> dict[str, Any]:
    uid = settings.run_as_user
    extra_volumes, extra_mounts = _source_volumes(source_claims or [])
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.installer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [
            # The root filesystem is read-only: every cache and temporary file goes to the
            # scratch emptyDir.
            {"name": "HOME", "value": SCRATCH_MOUNT},
            {"name": "TMPDIR", "value": SCRATCH_MOUNT},
            {"name": "LORAFLEET_PVC_ROOT", "value": PVC_ROOT},
            *env,
        ],
        "volumeMounts": [
            {"name": VOLUME_NAME, "mountPath": settings.models_mount},
            {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT},
            *extra_mounts,
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if resources:
        container["resources"] = {part: dict(amounts) for part, amounts in resources.items()}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(uid),
        "containers": [container],
        "volumes": [
            {"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": claim_name}},
            {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}},
            *extra_volumes,
        ],
    }
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": settings.job_deadline_s,
            "ttlSecondsAfterFinished": settings.job_ttl_s,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _common_env(settings: Settings, source: Source) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if settings.hf_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": settings.hf_endpoint})
    if settings.aws_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.aws_endpoint_url})
    env.append({"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"})
    return env + _secret_env(source)


def _install_job(
    kind: str,
    body: Mapping[str, Any],
    source: Source,
    job_name: str,
    installer_args: list[str],
    *,
    claim_name: str,
    settings: Settings,
    checkpoint_uri: str | None = None,
) -> dict[str, Any]:
    """An install Job running ``lorafleet-install base|adapter`` (docs/interfaces.md section 1).

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        body: The object that owns the Job.
        source: Its ``spec.source`` (secret environment, ``pvc://`` claims).
        job_name: The Job's deterministic name.
        installer_args: From :mod:`lorafleet_operator.installer_args` (subcommand onwards);
            the report goes to the termination log, progress beside the files.
        claim_name: The PersistentVolumeClaim the files go to.
        settings: Operator settings.
        checkpoint_uri: A BaseModel's ``spec.checkpoint.uri`` (its claim is mounted too when it
            is a ``pvc://`` URI).

    Returns:
        A ``batch/v1`` Job manifest; the claims of ``pvc://`` source and checkpoint URIs are
        mounted read-only under ``/mnt/pvc/<claim>``.
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    command = [
        "lorafleet-install",
        *installer_args,
        "--report-file",
        TERMINATION_LOG,
        "--progress-file",
        progress_file(settings, namespace, kind, name),
        "--timeout",
        str(settings.job_deadline_s),
    ]
    return _job(
        name=job_name,
        namespace=namespace,
        labels=object_labels(kind, name, "install"),
        owner=owner_reference(body),
        command=command,
        env=_common_env(settings, source),
        claim_name=claim_name,
        settings=settings,
        backoff_limit=settings.job_backoff_limit,
        resources=settings.installer_resources,
        source_claims=source_claims(source.uri, checkpoint_uri),
    )


def build_base_install_job(
    body: Mapping[str, Any], spec: BaseModelSpec, claim_name: str, settings: Settings
) -> dict[str, Any]:
    """Build the install Job of a BaseModel.

    Args:
        body: The BaseModel object (``metadata.name/namespace/uid``).
        spec: Its parsed spec.
        claim_name: The PersistentVolumeClaim the files go to.
        settings: Operator settings (image, pull secrets, mount, backoff, deadline, TTL, uid,
            installer container resources).

    Returns:
        A ``batch/v1`` Job manifest running ``lorafleet-install base ...``.
    """
    meta = body["metadata"]
    args = base_install_args(meta["namespace"], meta["name"], spec, dest=settings.models_mount)
    return _install_job(
        BASEMODEL_KIND,
        body,
        spec.source,
        install_job_name(BASEMODEL_KIND, body, spec),
        args,
        claim_name=claim_name,
        settings=settings,
        checkpoint_uri=spec.checkpoint.uri if spec.checkpoint else None,
    )


def build_adapter_install_job(
    body: Mapping[str, Any],
    spec: LoraAdapterSpec,
    *,
    claim_name: str,
    base_path: str,
    base_source: str | None,
    max_rank: int,
    settings: Settings,
) -> dict[str, Any]:
    """Build the install Job of a LoraAdapter, validated against its installed base.

    Args:
        body: The LoraAdapter object.
        spec: Its parsed spec.
        claim_name: The base model's PersistentVolumeClaim (adapters live beside the base).
        base_path: Install folder of the base (``status.path`` of the BaseModel).
        base_source: The base's ``source.uri`` (the installer compares the adapter's base).
        max_rank: ``spec.serving.maxRank`` of the base.
        settings: Operator settings.

    Returns:
        A ``batch/v1`` Job manifest running ``lorafleet-install adapter ...``.
    """
    meta = body["metadata"]
    args = adapter_install_args(
        meta["namespace"],
        meta["name"],
        spec,
        dest=settings.models_mount,
        base_path=base_path,
        base_source=base_source,
        max_rank=max_rank,
    )
    return _install_job(
        LORAADAPTER_KIND,
        body,
        spec.source,
        install_job_name(LORAADAPTER_KIND, body, spec, base_path),
        args,
        claim_name=claim_name,
        settings=settings,
    )


def build_cleanup_job(
    kind: str,
    body: Mapping[str, Any],
    *,
    path: str,
    claim_name: str,
    settings: Settings,
) -> dict[str, Any]:
    """Build the Job that removes an installed folder (``lorafleet-install remove``).

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        body: The object whose files are removed (it owns the Job).
        path: The folder to remove, as seen inside the Job (under the mount).
        claim_name: The PersistentVolumeClaim holding it.
        settings: Operator settings.

    Returns:
        A ``batch/v1`` Job manifest.

    Raises:
        ValueError: If ``path`` is not inside the volume mount.
    """
    mount = settings.models_mount.rstrip("/") + "/"
    inner = [part for part in path.removeprefix(mount).split("/") if part not in ("", ".")]
    if not path.startswith(mount) or ".." in path.split("/") or not inner:
        raise ValueError(
            f"refusing to remove {path!r}: not a folder inside the volume mount {mount}"
        )
    meta = body["metadata"]
    return _job(
        name=cleanup_job_name(kind, body, path),
        namespace=meta["namespace"],
        labels=object_labels(kind, meta["name"], "cleanup"),
        owner=owner_reference(body),
        command=["lorafleet-install", "remove", "--path", path, "--report-file", TERMINATION_LOG],
        env=[],
        claim_name=claim_name,
        settings=settings,
        backoff_limit=min(settings.job_backoff_limit, 2),
    )
