"""Spec and status of the ``lorafleet.io/v1alpha1`` resources ``BaseModel`` and ``LoraAdapter``.

These pydantic v2 models are the single source of truth for the API: the CRD OpenAPI schemas in
``manifests/crds/`` are generated from them (:mod:`lorafleet_operator.crdgen`), the kopf handlers
parse ``spec``/``status`` with them, and local mode validates manifest files with
:func:`lorafleet_operator.manifest.validate_manifest`. Field names are snake_case in Python and camelCase on the wire
(Kubernetes API conventions); ``Field(description=...)`` becomes ``kubectl explain`` text.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from lorafleet_operator.wire import StatusWire as _StatusWire
from lorafleet_operator.wire import Wire as _Wire

#: API group, version and ``apiVersion`` string of both resources.
GROUP = "lorafleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Kinds and their plural resource names (as used in URLs and RBAC rules).
BASEMODEL_KIND = "BaseModel"
LORAADAPTER_KIND = "LoraAdapter"
BASEMODEL_PLURAL = "basemodels"
LORAADAPTER_PLURAL = "loraadapters"

#: Source URI schemes the installer understands (``file://`` only makes sense in local mode).
SOURCE_URI_PATTERN = r"^(hf|s3|https|pvc|file)://[^\s]+$"
#: A Kubernetes object name (DNS-1123 subdomain, RFC 1123).
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1123 label: what ``metadata.name`` of a resource that names Services/Jobs must be.
DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: The name a client sends as ``"model"`` (OpenAI-style API): no slashes or whitespace.
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: A Kubernetes resource quantity such as ``500m``, ``2``, ``16Gi`` (apimachinery quantity grammar).
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class Task(StrEnum):
    """What the base model does; selects the model class and the HTTP routes."""

    TEXT_GENERATION = "text-generation"
    TEXT_CLASSIFICATION = "text-classification"


class DType(StrEnum):
    """The torch dtype the serving app loads weights in (``auto`` keeps the checkpoint's)."""

    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Phase(StrEnum):
    """Coarse lifecycle of a resource, shown by ``kubectl get`` (``status.phase``)."""

    PENDING = "Pending"
    INSTALLING = "Installing"
    INSTALLED = "Installed"
    DEPLOYING = "Deploying"
    READY = "Ready"
    FAILED = "Failed"
    DELETING = "Deleting"


class DeletionPolicy(StrEnum):
    """What happens to an adapter's files on the volume when the LoraAdapter is deleted."""

    DELETE = "Delete"
    RETAIN = "Retain"


class SecretRef(_Wire):
    """A Secret in the resource's namespace whose keys become the installer's environment."""

    name: str = Field(
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        max_length=253,
        description=(
            "Name of a Secret in the same namespace. Recognised keys (each optional): HF_TOKEN, "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, HTTPS_BEARER_TOKEN. "
            "They are passed to the install Job as environment variables and never copied "
            "into the resource, events or logs."
        ),
    )


class Source(_Wire):
    """Where the files come from."""

    uri: str = Field(
        pattern=SOURCE_URI_PATTERN,
        max_length=2048,
        description=(
            "Location of the files: hf://<repo_id> (Hugging Face Hub repository), "
            "s3://<bucket>/<prefix>, https://<url> (a single file or archive), "
            "pvc://<claim>/<path> (files already on a volume), or file://<path> (local mode only)."
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=255,
        description=(
            "Branch, tag or commit for hf:// sources (default: main). The installed commit is "
            "reported in status.resolvedRevision."
        ),
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="Secret holding the token or keys needed to read the source."
    )
    allow_patterns: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Glob patterns of files to fetch (default: all files of the source).",
    )
    ignore_patterns: list[str] | None = Field(
        default=None, max_length=64, description="Glob patterns of files to skip."
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description=(
            "Expected SHA-256 (lowercase hex) of a single-file source; the install fails with "
            "ChecksumMismatch when the fetched file differs."
        ),
    )


class Checkpoint(_Wire):
    """A full state_dict applied over the base model's architecture after download."""

    uri: str = Field(
        pattern=SOURCE_URI_PATTERN,
        max_length=2048,
        description=(
            "Location of a .pth/.ckpt/.bin/.safetensors state_dict (same schemes as "
            "source.uri). Pickles are loaded with weights_only=True only."
        ),
    )
    strict: bool = Field(
        default=True,
        description=(
            "Require the checkpoint's keys to match the architecture exactly (default true). "
            "With false, missing and unexpected keys are reported but allowed."
        ),
    )


class Storage(_Wire):
    """The shared (ReadWriteMany) volume the files are installed on."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.claimName) != has(self.size)",
                    "message": "set exactly one of claimName or size",
                },
                {
                    "rule": "!has(self.storageClassName) || has(self.size)",
                    "message": "storageClassName needs size (it applies to a new claim only)",
                },
            ]
        },
    )

    claim_name: str | None = Field(
        default=None,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        max_length=253,
        description="An existing ReadWriteMany PersistentVolumeClaim in the same namespace.",
    )
    size: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Size of a new claim the operator creates, e.g. 50Gi.",
    )
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="StorageClass of the new claim."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Storage:
        if (self.claim_name is None) == (self.size is None):
            raise ValueError("set exactly one of claimName or size")
        if self.storage_class_name is not None and self.size is None:
            raise ValueError("storageClassName needs size (it applies to a new claim only)")
        return self


class Autoscaling(_Wire):
    """Ray Serve autoscaling of the model deployment (one replica per GPU)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                }
            ]
        },
    )

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas (default 1).")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        description="Ongoing requests per replica Serve aims for (Ray Serve's default if unset).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class Toleration(_Wire):
    """A Kubernetes toleration for the Ray worker pods (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="Taint value matched with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match (empty: all effects)."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated, in seconds."
    )


class Serving(_Wire):
    """How the base model is served: Ray worker resources and Ray Serve settings."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.replicas) && has(self.autoscaling))",
                    "message": "set replicas or autoscaling, not both",
                }
            ]
        },
    )

    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Fixed number of model replicas (default 1 unless autoscaling is set).",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Ray Serve autoscaling instead of a fixed replica count."
    )
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per model replica (default 1).")
    cpu: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="CPU request/limit of each Ray worker pod, e.g. '4' (default: 2 per replica).",
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Memory request/limit of each Ray worker pod, e.g. 16Gi (default 8Gi).",
    )
    max_adapters_per_replica: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Adapters each replica keeps loaded (LRU) (default 8).",
    )
    max_batch_size: int = Field(
        default=16, ge=1, le=1024, description="Most requests run in one forward pass (default 16)."
    )
    batch_wait_timeout_ms: int = Field(
        default=5,
        ge=0,
        le=10000,
        description="How long a batch waits to fill, in milliseconds (default 5).",
    )
    max_tokens_limit: int = Field(
        default=2048,
        ge=1,
        le=1_000_000,
        description="Upper bound a request's max_tokens may ask for (default 2048).",
    )
    max_ongoing_requests: int = Field(
        default=64, ge=1, le=100_000, description="Ray Serve max_ongoing_requests per replica."
    )
    max_rank: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Largest LoRA rank r an adapter over this base may have (default 64).",
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the Ray worker pods must match."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Tolerations of the Ray worker pods."
    )
    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Container image of the Ray pods (default: the operator's serving image).",
    )
    ray_version: str | None = Field(
        default=None,
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        description="Ray version of the image (RayService rayVersion; default: the operator's).",
    )

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> Serving:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set replicas or autoscaling, not both")
        return self


class BaseModelSpec(_Wire):
    """Desired state of a BaseModel: the weights to install and how to serve them."""

    source: Source = Field(description="Where the base model's files come from.")
    checkpoint: Checkpoint | None = Field(
        default=None,
        description="Optional full state_dict applied over the architecture after download.",
    )
    task: Task = Field(
        default=Task.TEXT_GENERATION,
        description="text-generation (causal LM) or text-classification (default text-generation).",
    )
    num_labels: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Number of labels of a text-classification head.",
    )
    id2label: dict[str, str] | None = Field(
        default=None,
        alias="id2label",
        description='Label names of a text-classification head, e.g. {"0": "negative"}.',
    )
    dtype: DType = Field(default=DType.AUTO, description="Weights dtype when served.")
    storage: Storage | None = Field(
        default=None,
        description="Volume the files go to (default: the operator's default claim).",
    )
    serving: Serving = Field(
        default_factory=Serving, description="How the base model and its adapters are served."
    )

    @model_validator(mode="after")
    def _labels(self) -> BaseModelSpec:
        if self.id2label is not None:
            for key in self.id2label:
                if not key.isdigit():
                    raise ValueError(f"id2label key {key!r} is not a label id (digits)")
            if self.num_labels is not None and len(self.id2label) != self.num_labels:
                raise ValueError(
                    f"id2label has {len(self.id2label)} entries but numLabels is {self.num_labels}"
                )
        if self.task != Task.TEXT_CLASSIFICATION and (self.num_labels or self.id2label):
            raise ValueError("numLabels/id2label apply to task text-classification only")
        return self


class LoraAdapterSpec(_Wire):
    """Desired state of a LoraAdapter: adapter files served over a BaseModel."""

    base_model: str = Field(
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Name of the BaseModel (same namespace) this adapter applies to.",
    )
    source: Source = Field(description="Where the adapter's files (PEFT format) come from.")
    served_name: str | None = Field(
        default=None,
        pattern=SERVED_NAME_PATTERN,
        description='Name clients send as "model" (default: metadata.name).',
    )
    labels: dict[str, str] | None = Field(
        default=None,
        description='Label names of a classification adapter\'s own head, e.g. {"0": "neg"}.',
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.DELETE,
        description="Delete (default) removes the files on deletion; Retain keeps them.",
    )

    @model_validator(mode="after")
    def _label_ids(self) -> LoraAdapterSpec:
        for key in self.labels or {}:
            if not key.isdigit():
                raise ValueError(f"labels key {key!r} is not a label id (digits)")
        return self


class Condition(_StatusWire):
    """One condition of a resource (Kubernetes API conventions, metav1.Condition)."""

    type: str = Field(description="Installed, Serving, Ready, Degraded or Deleting.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        max_length=1024,
        description="CamelCase word naming why, e.g. SourceNotFound or BaseModelNotReady.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str | None = Field(
        default=None,
        description="When status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )


class _CommonStatus(_StatusWire):
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the status reflects."
    )
    phase: Phase | None = Field(
        default=None,
        description="Pending, Installing, Installed, Deploying, Ready, Failed or Deleting.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Latest observations (Installed, Serving, Ready, Degraded, Deleting).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    resolved_revision: str | None = Field(
        default=None, description="The installed commit or content digest."
    )
    size_bytes: int | None = Field(default=None, ge=0, description="Installed size in bytes.")
    progress: str | None = Field(
        default=None, description="Install progress, e.g. 42% (or bytes done when total unknown)."
    )
    path: str | None = Field(default=None, description="Install folder on the volume.")
    install_job: str | None = Field(
        default=None, description="Name of the Job installing the current revision."
    )
    message: str | None = Field(default=None, description="Summary of the latest problem, if any.")
    labels: dict[str, str] | None = Field(
        default=None, description="Label names (id -> name) of the installed classification head."
    )


class BaseModelServing(_StatusWire):
    """What the Serve application's replicas report (``status.serving`` of a BaseModel)."""

    replicas: str = Field(description="Replicas reporting / desired, e.g. 2/3 (kubectl REPLICAS).")
    ready_replicas: int = Field(ge=0, description="Model replicas reporting residency.")
    desired_replicas: int | None = Field(
        default=None, ge=0, description="spec.serving.replicas (unset when autoscaling)."
    )
    resident_by_replica: dict[str, list[str]] = Field(
        default_factory=dict, description="Replica id -> adapters resident on it."
    )
    requests_per_minute: int = Field(default=0, ge=0, description="Requests in the last minute.")


class AdapterServing(_StatusWire):
    """Where an adapter is resident and how it is used (``status.serving`` of a LoraAdapter)."""

    resident: str = Field(
        description="Replicas holding it / replicas, e.g. 2/3 (kubectl RESIDENT)."
    )
    replicas: list[str] = Field(default_factory=list, description="Replica ids holding it.")
    last_load_seconds: float | None = Field(
        default=None, ge=0, description="Seconds its latest load on a replica took."
    )
    requests_per_minute: int = Field(default=0, ge=0, description="Requests in the last minute.")
    load_failures: int = Field(
        default=0, ge=0, description="Failed loads on the replicas reporting (since they started)."
    )


class BaseModelStatus(_CommonStatus):
    """Observed state of a BaseModel."""

    endpoint: str | None = Field(
        default=None, description="Base URL of the OpenAI-style API serving this model."
    )
    adapters: int | None = Field(
        default=None, ge=0, description="Number of adapters in the serve config's registry."
    )
    architecture: str | None = Field(default=None, description="Model class reported on install.")
    served_revision: str | None = Field(
        default=None, description="Revision the RayService currently serves."
    )
    served_path: str | None = Field(
        default=None, description="Install folder the RayService currently serves."
    )
    ray_service: str | None = Field(default=None, description="Name of the owned RayService.")
    claim_name: str | None = Field(
        default=None, description="PersistentVolumeClaim holding the files (and its adapters')."
    )
    blocked_by: list[str] | None = Field(
        default=None, description="LoraAdapters that keep this BaseModel from being deleted."
    )
    serving: BaseModelServing | None = Field(
        default=None, description="Replicas and the adapters resident on each (while Ready)."
    )


class LoraAdapterStatus(_CommonStatus):
    """Observed state of a LoraAdapter."""

    rank: int | None = Field(default=None, ge=0, description="LoRA rank r.")
    lora_alpha: float | None = Field(default=None, description="LoRA lora_alpha.")
    target_modules: list[str] | None = Field(
        default=None, description="Base modules the adapter applies to."
    )
    modules_to_save: list[str] | None = Field(
        default=None, description="Modules the adapter replaces outright (e.g. classifier)."
    )
    compatible: bool | None = Field(
        default=None, description="Whether the installer found it compatible with its base."
    )
    served_name: str | None = Field(default=None, description='The "model" name clients send.')
    base_path: str | None = Field(
        default=None, description="Install folder of the base it was validated against."
    )
    serving: AdapterServing | None = Field(
        default=None, description="Replicas holding it, its last load time and request rate."
    )


#: The models per kind, used by the CRD generator and :mod:`lorafleet_operator.manifest`.
SPEC_MODELS: dict[str, type[_Wire]] = {
    BASEMODEL_KIND: BaseModelSpec,
    LORAADAPTER_KIND: LoraAdapterSpec,
}
STATUS_MODELS: dict[str, type[_StatusWire]] = {
    BASEMODEL_KIND: BaseModelStatus,
    LORAADAPTER_KIND: LoraAdapterStatus,
}


def status_patch(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``status`` patch of ``kind`` against its status model before it is sent.

    The API server prunes status fields its CRD schema does not declare without an error, so a
    misspelled field would vanish silently; this refuses it in the operator instead. ``None``
    values (a merge patch deleting the field) are allowed for every declared field.

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        fields: camelCase status fields and their new values.

    Returns:
        The same fields, as a new dict.

    Raises:
        ValueError: A field the status model does not declare (named, with the declared ones
            it may have meant), or a value of the wrong type (pydantic's message).
    """
    model = STATUS_MODELS[kind]
    known = {info.alias or name for name, info in model.model_fields.items()}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{kind} status has no field(s) {unknown}; declared: {sorted(known)}")
    try:
        model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise ValueError(f"{kind} status patch is invalid: {exc}") from exc
    return dict(fields)
