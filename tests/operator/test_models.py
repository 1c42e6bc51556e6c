"""Unit tests of the API models and manifest validation."""

from __future__ import annotations

import copy

import pytest
from lorafleet_operator.manifest import ManifestError, parse_spec, validate_manifest
from lorafleet_operator.models import (
    BaseModelStatus,
    Condition,
    LoraAdapterSpec,
)

BASE = {
    "apiVersion": "lorafleet.io/v1alpha1",
    "kind": "BaseModel",
    "metadata": {"name": "minilm", "namespace": "ml"},
    "spec": {
        "source": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2", "revision": "main"},
        "task": "text-classification",
        "numLabels": 2,
        "id2label": {"0": "negative", "1": "positive"},
        "storage": {"size": "10Gi", "storageClassName": "nfs"},
        "serving": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}, "gpus": 0},
    },
}
ADAPTER = {
    "apiVersion": "lorafleet.io/v1alpha1",
    "kind": "LoraAdapter",
    "metadata": {"name": "sentiment", "namespace": "ml"},
    "spec": {"baseModel": "minilm", "source": {"uri": "hf://acme/minilm-sentiment-lora"}},
}


def test_valid_manifests_parse_with_camel_case_and_defaults():
    base = validate_manifest(BASE, origin="bm.yaml")
    assert base.kind == "BaseModel" and base.name == "minilm" and base.namespace == "ml"
    assert base.spec.num_labels == 2
    assert base.spec.serving.autoscaling.max_replicas == 4
    assert base.spec.serving.max_adapters_per_replica == 8
    adapter = validate_manifest(ADAPTER)
    assert isinstance(adapter.spec, LoraAdapterSpec)
    assert adapter.spec.deletion_policy == "Delete"
    assert adapter.spec.to_wire()["baseModel"] == "minilm"
    # Round trip: what to_wire emits parses back to an equal spec.
    assert parse_spec("BaseModel", base.spec.to_wire()) == base.spec


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        (("spec", "source", "uri"), "ftp://x", "spec.source.uri", "pattern"),
        (("spec", "storage"), {"claimName": "a", "size": "1Gi"}, "spec.storage", "exactly one"),
        (("spec", "storage"), {}, "spec.storage", "exactly one"),
        (
            ("spec", "serving"),
            {"replicas": 2, "autoscaling": {"maxReplicas": 3}},
            "spec.serving",
            "not both",
        ),
        (("spec", "serving", "maxBatchSize"), 0, "spec.serving.maxBatchSize", "greater"),
        (("spec", "dtype"), "float8", "spec.dtype", "auto"),
        (("spec", "source", "sha256"), "XYZ", "spec.source.sha256", "pattern"),
        (("spec", "sourc"), {}, "spec.sourc", "not permitted"),
        (("spec", "id2label"), {"0": "a"}, "spec", "numLabels is 2"),
    ],
)
def test_invalid_base_names_file_object_and_field(path, value, field, words):
    manifest = copy.deepcopy(BASE)
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest, origin="models/bm.yaml")
    err = info.value
    assert err.field == field
    assert err.object_ref == "BaseModel/ml/minilm"
    assert str(err).startswith(f"file models/bm.yaml, object BaseModel/ml/minilm, field {field}:")
    assert words in err.problem


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.update(apiVersion="v1"), "apiVersion"),
        (lambda m: m.update(kind="Pod"), "kind"),
        (lambda m: m["metadata"].update(name="Bad_Name"), "metadata.name"),
        (lambda m: m.pop("spec"), "spec"),
        (lambda m: m["spec"].pop("baseModel"), "spec.baseModel"),
        (lambda m: m["spec"].update(deletionPolicy="Keep"), "spec.deletionPolicy"),
        (lambda m: m["spec"].update(labels={"x": "a"}), "spec"),
    ],
)
def test_invalid_adapter_fields(mutate, field):
    manifest = copy.deepcopy(ADAPTER)
    mutate(manifest)
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest)
    assert info.value.field == field


def test_not_a_mapping():
    with pytest.raises(ManifestError, match="expected a mapping"):
        validate_manifest(["a"], origin="x.yaml")  # type: ignore[arg-type]


def test_status_keeps_unknown_fields_and_conditions():
    raw = {
        "phase": "Ready",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "ok"}],
        "kopf": {"progress": {}},
        "adapters": 3,
    }
    status = BaseModelStatus.model_validate(raw)
    assert status.adapters == 3
    assert status.conditions[0] == Condition(
        type="Ready", status="True", reason="Serving", message="ok"
    )
    assert status.model_dump(by_alias=True, exclude_none=True)["kopf"] == {"progress": {}}


def test_examples_are_valid():
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    folder = repo / "manifests" / "examples"
    for name in ("basemodel.yaml", "lora-adapter.yaml"):
        # examples/ (what the README points users at) is a copy of manifests/examples/.
        assert (repo / "examples" / name).read_text() == (folder / name).read_text()
        for doc in yaml.safe_load_all((folder / name).read_text()):
            validate_manifest(doc, origin=name)


def test_status_patches_are_checked_against_the_status_models() -> None:
    """A misspelled status field (which the API server would prune silently) or a wrong type
    is an error when the patch is built; every field the operator writes is declared."""
    from lorafleet_operator.models import status_patch

    ok = {"phase": "Ready", "observedGeneration": 3, "servedName": "s", "rank": 8, "path": None}
    assert status_patch("LoraAdapter", ok) == ok
    assert status_patch("BaseModel", {"rayService": "x", "adapters": 2, "blockedBy": ["a"]})
    with pytest.raises(ValueError, match=r"LoraAdapter status has no field\(s\) \['servedNam'\]"):
        status_patch("LoraAdapter", {"servedNam": "s"})
    with pytest.raises(ValueError, match=r"no field\(s\) \['rayService'\]"):
        status_patch("LoraAdapter", {"rayService": "x"})  # a BaseModel field
    with pytest.raises(ValueError, match="status patch is invalid"):
        status_patch("BaseModel", {"adapters": -1})
    with pytest.raises(ValueError, match="status patch is invalid"):
        status_patch("BaseModel", {"phase": "Sleeping"})
