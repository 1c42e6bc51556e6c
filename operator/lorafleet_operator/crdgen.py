"""Generate the CustomResourceDefinitions of lorafleet from the pydantic models.

``lorafleet crds`` writes ``manifests/crds/<plural>.lorafleet.io.yaml``; ``lorafleet crds --check``
exits 1 when the checked-in files differ from what the models generate (CI and a unit test run
it). The pydantic JSON schema (draft 2020-12) is turned into a Kubernetes *structural* OpenAPI v3
schema (apiextensions.k8s.io/v1, "Specifying a structural schema" in the Kubernetes docs): ``$ref``
inlined, ``anyOf [X, null]`` collapsed to ``X``, ``anyOf [string, integer]`` turned into
``x-kubernetes-int-or-string``, ``const`` into ``enum``, numeric ``exclusiveMinimum`` into the
OpenAPI 3.0 boolean form, ``title`` and ``additionalProperties: false`` dropped, and defaults kept
only for scalars (the API server applies them).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from lorafleet_operator import models

#: Where ``lorafleet crds`` writes by default (relative to the current directory).
DEFAULT_OUTPUT_DIR = Path("manifests/crds")

_DROP_KEYS = {"title", "additionalProperties", "$defs", "discriminator"}
_SCALAR_TYPES = {"string", "integer", "number", "boolean"}


class SchemaConversionError(ValueError):
    """A pydantic schema construct has no structural OpenAPI v3 equivalent."""


def _resolve_ref(ref: str, defs: dict[str, Any]) -> dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaConversionError(f"cannot resolve $ref {ref!r}")
    resolved: dict[str, Any] = defs[ref[len(prefix) :]]
    return resolved


def to_structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert a pydantic JSON schema (fragment) into a structural OpenAPI v3 schema.

    Args:
        schema: A JSON schema as produced by ``model_json_schema(by_alias=True)``.
        defs: The ``$defs`` of the top-level schema (taken from ``schema`` when ``None``).

    Returns:
        A new dict usable as a CRD ``openAPIV3Schema`` fragment.

    Raises:
        SchemaConversionError: For unions other than ``X | None`` and ``str | int``, or an
            unresolvable ``$ref``.
    """
    if defs is None:
        defs = schema.get("$defs", {})
    node = dict(schema)
    # Inline references (siblings such as description override the referenced schema's).
    if "$ref" in node:
        target = _resolve_ref(node.pop("$ref"), defs)
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        target = node.pop("allOf")[0]
        node = {**to_structural(target, defs), **node}
    if "anyOf" in node:
        options = [opt for opt in node.pop("anyOf") if opt.get("type") != "null"]
        types = sorted(opt.get("type", "") for opt in options)
        if len(options) == 1:
            option = to_structural(options[0], defs)
            node = {**option, **{k: v for k, v in node.items() if k != "default"}}
            if "default" in schema and schema["default"] is not None:
                node["default"] = schema["default"]
        elif types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
        else:
            raise SchemaConversionError(f"unsupported union {options!r}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: to_structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = to_structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "default":
            if value is not None and node.get("type") in _SCALAR_TYPES:
                out[key] = value
        else:
            out[key] = copy.deepcopy(value)
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["additionalProperties"] = to_structural(additional, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _status_schema(kind: str) -> dict[str, Any]:
    status = to_structural(models.STATUS_MODELS[kind].model_json_schema(by_alias=True))
    status["properties"]["kopf"] = {
        "type": "object",
        "description": "Handler progress kept by kopf (only when status storage is configured).",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return status


_PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    models.BASEMODEL_KIND: [
        {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
        {"name": "Adapters", "type": "integer", "jsonPath": ".status.adapters"},
        {"name": "Replicas", "type": "string", "jsonPath": ".status.serving.replicas"},
        {"name": "Revision", "type": "string", "jsonPath": ".status.resolvedRevision"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    models.LORAADAPTER_KIND: [
        {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel"},
        {"name": "Rank", "type": "integer", "jsonPath": ".status.rank"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Resident", "type": "string", "jsonPath": ".status.serving.resident"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

_NAMES: dict[str, dict[str, Any]] = {
    models.BASEMODEL_KIND: {
        "plural": models.BASEMODEL_PLURAL,
        "singular": "basemodel",
        "shortNames": ["bm"],
        "description": (
            "A BaseModel installs model weights (from the Hugging Face Hub, S3, HTTPS or a "
            "volume) on a shared volume and serves them, with its LoraAdapters, through a "
            "KubeRay RayService running the lorafleet Ray Serve app."
        ),
    },
    models.LORAADAPTER_KIND: {
        "plural": models.LORAADAPTER_PLURAL,
        "singular": "loraadapter",
        "shortNames": ["lora"],
        "description": (
            "A LoraAdapter installs PEFT LoRA adapter files validated against its BaseModel and "
            "adds them to that model's serving registry; clients select it by its served name."
        ),
    },
}


def build_crd(kind: str) -> dict[str, Any]:
    """Build the CustomResourceDefinition of one kind.

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.

    Returns:
        The CRD as a dict (apiextensions.k8s.io/v1).

    Raises:
        KeyError: If ``kind`` is unknown.
    """
    names = _NAMES[kind]
    spec = to_structural(models.SPEC_MODELS[kind].model_json_schema(by_alias=True))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names['plural']}.{models.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lorafleet"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": names["plural"],
                "singular": names["singular"],
                "shortNames": names["shortNames"],
                "categories": ["lorafleet"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _PRINTER_COLUMNS[kind],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": names["description"],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": _status_schema(kind),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """Render every CRD as YAML text.

    Returns:
        Mapping of file name (``<plural>.lorafleet.io.yaml``) to its YAML text.
    """
    files: dict[str, str] = {}
    for kind in (models.BASEMODEL_KIND, models.LORAADAPTER_KIND):
        crd = build_crd(kind)
        header = "# Generated by `lorafleet crds` from lorafleet_operator.models: do not edit.\n"
        text = yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)
        files[f"{crd['metadata']['name']}.yaml"] = header + text
    return files


def write_crds(output_dir: Path) -> list[Path]:
    """Write the CRD files into ``output_dir`` (created if missing).

    Args:
        output_dir: Target folder.

    Returns:
        The paths written.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_crds().items():
        path = output_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check_crds(output_dir: Path) -> list[str]:
    """Compare checked-in CRD files with freshly generated ones.

    Args:
        output_dir: Folder holding the checked-in files.

    Returns:
        File names that are missing or differ (empty when up to date).
    """
    stale = []
    for name, text in render_crds().items():
        path = output_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def _run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    if args.check:
        stale = check_crds(out)
        if stale:
            print(
                f"CRDs in {out} are out of date: {', '.join(stale)}; run `lorafleet crds`",
                file=sys.stderr,
            )
            return 1
        print(f"CRDs in {out} are up to date")
        return 0
    for path in write_crds(out):
        print(f"wrote {path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``lorafleet crds [--check] [--output-dir DIR]``.

    Args:
        subparsers: The top-level parser's sub-parsers.
    """
    parser = subparsers.add_parser(
        "crds",
        help="generate the CRDs from the API models",
        description="Generate manifests/crds/*.yaml from lorafleet_operator.models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the files differ from the generated ones instead of writing them",
    )
    parser.add_argument(
        "--output-dir",
        default=str(DEFAULT_OUTPUT_DIR),
        help=f"folder of the CRD files (default {DEFAULT_OUTPUT_DIR})",
    )
    parser.set_defaults(func=_run)
