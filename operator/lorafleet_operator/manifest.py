"""Manifests read from files (local mode, ``lorafleet validate``): identity plus parsed spec.

:func:`validate_manifest` turns a YAML document into a :class:`Manifest` or a
:class:`ManifestError` naming the file, the object and the field, with the models of
:mod:`lorafleet_operator.models`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel as PydanticModel
from pydantic import ConfigDict, ValidationError

from lorafleet_operator.models import (
    API_VERSION,
    DNS1123_LABEL_PATTERN,
    SPEC_MODELS,
    BaseModelSpec,
    LoraAdapterSpec,
)


class ManifestError(ValueError):
    """A manifest is not a valid lorafleet resource.

    Attributes:
        origin: Where the manifest came from (a file path), or ``None``.
        object_ref: ``Kind/namespace/name`` as far as known.
        field: Dotted path of the offending field (``spec.source.uri``), or ``None``.
        problem: What is wrong with it.
    """

    def __init__(
        self, problem: str, *, origin: str | None, object_ref: str, field: str | None
    ) -> None:
        self.origin = origin
        self.object_ref = object_ref
        self.field = field
        self.problem = problem
        parts = []
        if origin:
            parts.append(f"file {origin}")
        parts.append(f"object {object_ref}")
        if field:
            parts.append(f"field {field}")
        super().__init__(", ".join(parts) + f": {problem}")


class Manifest(PydanticModel):
    """A validated manifest: identity plus parsed spec.

    Attributes:
        kind: ``BaseModel`` or ``LoraAdapter``.
        name: ``metadata.name``.
        namespace: ``metadata.namespace`` or ``None`` when not given.
        spec: The parsed :class:`BaseModelSpec` or :class:`LoraAdapterSpec`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    name: str
    namespace: str | None
    spec: BaseModelSpec | LoraAdapterSpec


def _loc_to_path(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}"
    return path


def parse_spec(kind: str, spec: Mapping[str, Any] | None) -> BaseModelSpec | LoraAdapterSpec:
    """Parse a ``spec`` mapping of the given kind.

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        spec: The ``spec`` mapping (camelCase keys).

    Returns:
        The parsed spec model.

    Raises:
        KeyError: If ``kind`` is not a lorafleet kind.
        pydantic.ValidationError: If the spec is invalid.
    """
    model = SPEC_MODELS[kind]
    return model.model_validate(dict(spec or {}))  # type: ignore[return-value]


def validate_manifest(manifest: Mapping[str, Any], *, origin: str | None = None) -> Manifest:
    """Validate one manifest dict (as loaded from YAML) of a lorafleet resource.

    Args:
        manifest: The object: ``apiVersion``, ``kind``, ``metadata``, ``spec``.
        origin: Where it came from (a file path), named in errors.

    Returns:
        The validated :class:`Manifest`.

    Raises:
        ManifestError: naming the file, the object and the field that is wrong, e.g.
            ``file a.yaml, object LoraAdapter/ml/x, field spec.source.uri: ...``.
    """
    if not isinstance(manifest, Mapping):
        raise ManifestError(
            f"expected a mapping, got {type(manifest).__name__}",
            origin=origin,
            object_ref="?",
            field=None,
        )
    kind = manifest.get("kind")
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    ref = (
        f"{kind if isinstance(kind, str) and kind else '?'}/"
        f"{namespace + '/' if isinstance(namespace, str) and namespace else ''}"
        f"{name if isinstance(name, str) and name else '?'}"
    )

    def fail(problem: str, field: str | None) -> ManifestError:
        return ManifestError(problem, origin=origin, object_ref=ref, field=field)

    if manifest.get("apiVersion") != API_VERSION:
        raise fail(
            f"apiVersion must be {API_VERSION!r}, got {manifest.get('apiVersion')!r}", "apiVersion"
        )
    if not isinstance(kind, str) or kind not in SPEC_MODELS:
        raise fail(f"kind must be one of {sorted(SPEC_MODELS)}, got {kind!r}", "kind")
    if not isinstance(metadata, Mapping):
        raise fail("metadata must be a mapping with a name", "metadata")
    if not isinstance(name, str) or not re.match(DNS1123_LABEL_PATTERN, name) or len(name) > 63:
        raise fail(
            f"{name!r} is not a valid name (lowercase letters, digits and '-', at most 63)",
            "metadata.name",
        )
    if namespace is not None and (
        not isinstance(namespace, str) or not re.match(DNS1123_LABEL_PATTERN, namespace)
    ):
        raise fail(f"{namespace!r} is not a valid namespace name", "metadata.namespace")
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise fail("spec is missing or not a mapping", "spec")
    try:
        parsed = parse_spec(kind, spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = first["msg"].removeprefix("Value error, ")
        if len(exc.errors()) > 1:
            problem += f" (and {len(exc.errors()) - 1} more problem(s))"
        raise fail(problem, _loc_to_path("spec", tuple(first["loc"]))) from exc
    return Manifest(kind=kind, name=name, namespace=namespace, spec=parsed)
