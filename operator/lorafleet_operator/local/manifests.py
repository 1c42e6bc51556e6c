"""Read the BaseModel and LoraAdapter manifests of a folder for local mode.

Every ``*.yaml``/``*.yml`` file directly in the folder is read; a file may hold several YAML
documents (``---``). Documents of other API groups (a Secret, a ConfigMap, ...) are skipped and
listed; documents of ``lorafleet.io`` are validated with the operator's own spec models
(:func:`lorafleet_operator.manifest.validate_manifest`), so an error names the file, the object and
the field exactly as it would on a cluster. References are checked too: a LoraAdapter's
``spec.baseModel`` must name a BaseModel of the same namespace in the folder, and two objects of
one kind may not share a namespace/name or a served name.

``file://`` URIs are made absolute relative to the manifest file that holds them
(``file://weights/minilm`` next to ``manifests/base.yaml`` means ``manifests/weights/minilm``;
``file:///abs/path`` is kept).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from lorafleet_operator.manifest import ManifestError, validate_manifest
from lorafleet_operator.models import (
    BASEMODEL_KIND,
    GROUP,
    LORAADAPTER_KIND,
    BaseModelSpec,
    LoraAdapterSpec,
)

#: Namespace of objects whose manifest gives none (as ``kubectl apply`` would use).
DEFAULT_NAMESPACE = "default"
#: File name patterns read from the folder.
MANIFEST_SUFFIXES = (".yaml", ".yml")


class ManifestsInvalid(ValueError):
    """One or more manifests of the folder are invalid; nothing should be installed.

    Attributes:
        errors: One message per problem, each naming the file, the object and the field.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__(
            f"{len(errors)} invalid manifest(s):\n" + "\n".join(f"  - {e}" for e in errors)
        )


@dataclass
class LocalObject:
    """One validated BaseModel or LoraAdapter read from a manifest file.

    Attributes:
        kind: ``BaseModel`` or ``LoraAdapter``.
        name: ``metadata.name``.
        namespace: ``metadata.namespace`` or :data:`DEFAULT_NAMESPACE`.
        spec: The parsed spec, with ``file://`` URIs made absolute.
        file: The manifest file it came from (absolute path).
        document: Index of the YAML document in that file (0-based).
        source_stamp: Sizes and modification times of a ``file://`` source's files (empty for
            remote sources); part of :attr:`fingerprint`, so editing local weights re-installs.
    """

    kind: str
    name: str
    namespace: str
    spec: BaseModelSpec | LoraAdapterSpec
    file: Path
    document: int = 0
    source_stamp: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``Kind/namespace/name``: the object's identity in local state."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def served_name(self) -> str:
        """The ``"model"`` name clients send (a LoraAdapter's ``servedName`` or its name)."""
        if isinstance(self.spec, LoraAdapterSpec) and self.spec.served_name:
            return self.spec.served_name
        return self.name

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the spec and the local source files' sizes/mtimes.

        Two ``up`` runs that see the same fingerprint for an installed object reuse the
        install instead of running the installer again.
        """
        payload = {"kind": self.kind, "spec": self.spec.to_wire(), "files": self.source_stamp}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def display_uri(uri: str) -> str:
    """A URI safe to print or store: user info and query string (tokens, signatures) removed.

    Args:
        uri: A source URI such as ``https://user:token@host/file?X-Amz-Signature=...``.

    Returns:
        The URI without ``user:password@`` and without ``?query``/``#fragment``
        (``https://host/file``).
    """
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_file_uri(uri: str, manifest_file: Path) -> str:
    """Make a ``file://`` URI absolute relative to the folder of ``manifest_file``.

    Args:
        uri: A source URI; other schemes are returned unchanged.
        manifest_file: The manifest that holds it.

    Returns:
        ``file:///absolute/path`` for ``file://`` URIs, otherwise ``uri``.
    """
    if not uri.startswith("file://"):
        return uri
    raw = uri[len("file://") :]
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute():
        path = manifest_file.parent / path
    return "file://" + str(path.resolve())


def _file_stamp(uri: str) -> list[tuple[str, int, int]]:
    """Relative path, size (bytes) and mtime (ns) of every file of a local source."""
    if not uri.startswith("file://"):
        return []
    root = Path(uri[len("file://") :])
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    stamp = []
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                st = path.stat()
                stamp.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    return stamp


def _check_local_source(obj: LocalObject, where: str, field_path: str, uri: str) -> str | None:
    if uri.startswith("file://"):
        path = Path(uri[len("file://") :])
        if not path.exists():
            return f"{where}, field {field_path}: local path {path} does not exist"
    if uri.startswith("pvc://"):
        return (
            f"{where}, field {field_path}: pvc:// sources need a cluster; "
            "in local mode use file:// (a path relative to the manifest) instead"
        )
    return None


def _resolve_uris(spec: BaseModelSpec | LoraAdapterSpec, manifest_file: Path) -> None:
    spec.source.uri = resolve_file_uri(spec.source.uri, manifest_file)
    if isinstance(spec, BaseModelSpec) and spec.checkpoint is not None:
        spec.checkpoint.uri = resolve_file_uri(spec.checkpoint.uri, manifest_file)


def manifest_files(directory: Path) -> list[Path]:
    """The manifest files of a folder, sorted by name.

    Args:
        directory: The folder given to ``lorafleet up -f``.

    Returns:
        Absolute paths of the ``*.yaml``/``*.yml`` files directly in it (hidden files skipped).

    Raises:
        NotADirectoryError: If ``directory`` is not a folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"manifest folder {directory} does not exist or is not a folder")
    return sorted(
        p.resolve()
        for p in directory.iterdir()
        if p.is_file() and p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".")
    )


def load_manifests(directory: Path) -> tuple[list[LocalObject], list[str]]:
    """Read and validate every lorafleet manifest of a folder.

    Args:
        directory: The folder given to ``lorafleet up -f``.

    Returns:
        ``(objects, skipped)``: the validated objects (BaseModels first, then LoraAdapters, each
        sorted by namespace/name) and one note per skipped non-lorafleet document.

    Raises:
        NotADirectoryError: If ``directory`` is not a folder.
        ManifestsInvalid: If any manifest is invalid (YAML syntax, schema, references); the
            message lists every problem, each naming the file, the object and the field.
    """
    errors: list[str] = []
    skipped: list[str] = []
    objects: list[LocalObject] = []
    for path in manifest_files(directory):
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            errors.append(f"file {path}: not valid YAML: {exc}")
            continue
        except UnicodeDecodeError as exc:
            errors.append(f"file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        except OSError as exc:
            errors.append(f"file {path}: cannot be read: {exc.strerror or exc}")
            continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            origin = f"{path}" if len(docs) == 1 else f"{path} (document {index + 1})"
            if isinstance(doc, dict) and not _is_lorafleet(doc):
                skipped.append(
                    f"{origin}: skipped {doc.get('kind', '?')} {doc.get('apiVersion', '?')} "
                    "(not a lorafleet.io resource)"
                )
                continue
            try:
                manifest = validate_manifest(doc, origin=origin)
            except ManifestError as exc:
                errors.append(str(exc))
                continue
            spec = manifest.spec
            _resolve_uris(spec, path)
            obj = LocalObject(
                kind=manifest.kind,
                name=manifest.name,
                namespace=manifest.namespace or DEFAULT_NAMESPACE,
                spec=spec,
                file=path,
                document=index,
            )
            where = f"file {origin}, object {obj.kind}/{obj.namespace}/{obj.name}"
            problem = _check_local_source(obj, where, "spec.source.uri", spec.source.uri)
            if problem is None and isinstance(spec, BaseModelSpec) and spec.checkpoint:
                problem = _check_local_source(
                    obj, where, "spec.checkpoint.uri", spec.checkpoint.uri
                )
            if problem is not None:
                errors.append(problem)
                continue
            obj.source_stamp = _file_stamp(spec.source.uri)
            if isinstance(spec, BaseModelSpec) and spec.checkpoint:
                obj.source_stamp += _file_stamp(spec.checkpoint.uri)
            objects.append(obj)
    errors.extend(_check_references(objects))
    if errors:
        raise ManifestsInvalid(errors)
    objects.sort(key=lambda o: (o.kind != BASEMODEL_KIND, o.namespace, o.name))
    return objects, skipped


def _is_lorafleet(doc: dict[str, Any]) -> bool:
    api_version = str(doc.get("apiVersion") or "")
    return api_version.split("/")[0] == GROUP or doc.get("kind") in (
        BASEMODEL_KIND,
        LORAADAPTER_KIND,
    )


def _where(obj: LocalObject) -> str:
    doc = f" (document {obj.document + 1})" if obj.document else ""
    return f"file {obj.file}{doc}, object {obj.kind}/{obj.namespace}/{obj.name}"


def _check_references(objects: list[LocalObject]) -> list[str]:
    errors: list[str] = []
    seen: dict[str, LocalObject] = {}
    for obj in objects:
        if obj.key in seen:
            errors.append(
                f"{_where(obj)}, field metadata.name: duplicate of the object in "
                f"{seen[obj.key].file}"
            )
        seen[obj.key] = obj
    bases = {(o.namespace, o.name): o for o in objects if o.kind == BASEMODEL_KIND}
    for obj in objects:
        if obj.kind != LORAADAPTER_KIND:
            continue
        assert isinstance(obj.spec, LoraAdapterSpec)
        base = bases.get((obj.namespace, obj.spec.base_model))
        if base is None:
            known = sorted(n for ns, n in bases if ns == obj.namespace)
            errors.append(
                f"{_where(obj)}, field spec.baseModel: no BaseModel {obj.spec.base_model!r} in "
                f"namespace {obj.namespace!r} among the manifests (known: {known or 'none'})"
            )
            continue
        clash = [
            o
            for o in objects
            if o is not obj
            and o.namespace == obj.namespace
            and o.served_name == obj.served_name
            and (
                o is base
                or (
                    o.kind == LORAADAPTER_KIND
                    and isinstance(o.spec, LoraAdapterSpec)
                    and o.spec.base_model == obj.spec.base_model
                )
            )
        ]
        if clash:
            errors.append(
                f"{_where(obj)}, field spec.servedName: served name {obj.served_name!r} is "
                f"already used by {clash[0].kind}/{clash[0].name} ({clash[0].file})"
            )
    return errors
