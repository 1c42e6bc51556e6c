"""Builder of the shared model volume (a ReadWriteMany PersistentVolumeClaim)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lorafleet_operator.jobs import MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL, owner_reference
from lorafleet_operator.models import BaseModelSpec
from lorafleet_operator.settings import Settings


def claim_name_for(name: str, spec: BaseModelSpec, settings: Settings) -> str:
    """The PersistentVolumeClaim a BaseModel (and its adapters) install into.

    Args:
        name: The BaseModel's name.
        spec: Its parsed spec.
        settings: Operator settings (the default claim).

    Returns:
        ``spec.storage.claimName``; ``<name>-models`` when the spec asks for a new claim
        (``storage.size``); otherwise the operator's default claim.
    """
    if spec.storage is None:
        return settings.default_claim
    if spec.storage.claim_name:
        return spec.storage.claim_name
    return f"{name}-models"


def build_claim(
    body: Mapping[str, Any], spec: BaseModelSpec, settings: Settings
) -> dict[str, Any] | None:
    """Build the PersistentVolumeClaim a BaseModel asks for with ``storage.size``.

    Args:
        body: The BaseModel object (owner of the claim).
        spec: Its parsed spec.
        settings: Operator settings.

    Returns:
        A ``v1`` PersistentVolumeClaim manifest (ReadWriteMany, owned by the BaseModel), or
        ``None`` when the BaseModel uses an existing claim.
    """
    if spec.storage is None or not spec.storage.size:
        return None
    meta = body["metadata"]
    claim: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name_for(meta["name"], spec, settings),
            "namespace": meta["namespace"],
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: meta["name"]},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    }
    if spec.storage.storage_class_name:
        claim["spec"]["storageClassName"] = spec.storage.storage_class_name
    return claim
