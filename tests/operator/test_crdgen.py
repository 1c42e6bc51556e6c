"""Unit tests of CRD generation: structural schemas, and the checked-in files are current."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet_operator import crdgen

REPO = Path(__file__).resolve().parents[2]


def _walk(schema, path="$"):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_checked_in_crds_match_generated():
    stale = crdgen.check_crds(REPO / "manifests" / "crds")
    assert not stale, f"run `lorafleet crds`: {stale} differ from the models"


@pytest.mark.parametrize("kind", ["BaseModel", "LoraAdapter"])
def test_schema_is_structural(kind):
    crd = crdgen.build_crd(kind)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "title", "$defs", "const"):
            assert banned not in node, f"{path} has {banned}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("type") == "object" and path != "$.metadata":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
            node.get("exclusiveMinimum"), bool
        ):
            pytest.fail(f"{path}: numeric exclusiveMinimum is not OpenAPI v3.0")
        assert (
            "description" in node
            or path.count(".") <= 1
            or path.endswith("[]")
            or path.endswith("{}")
        ), path
    status = schema["properties"]["status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert set(conditions["items"]["required"]) == {"type", "status"}


def test_names_columns_and_validation_rules():
    bm = crdgen.build_crd("BaseModel")
    assert bm["metadata"]["name"] == "basemodels.lorafleet.io"
    assert bm["spec"]["names"]["shortNames"] == ["bm"]
    cols = [c["name"] for c in bm["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Task", "Phase", "Progress", "Adapters", "Replicas", "Revision", "Age"]
    spec = bm["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    storage = spec["properties"]["storage"]
    assert any("claimName" in r["rule"] for r in storage["x-kubernetes-validations"])
    assert spec["properties"]["task"]["enum"] == ["text-generation", "text-classification"]
    assert spec["properties"]["serving"]["properties"]["maxBatchSize"]["minimum"] == 1
    assert "id2label" in spec["properties"]
    lora = crdgen.build_crd("LoraAdapter")
    assert lora["spec"]["names"]["shortNames"] == ["lora"]
    cols = [c["name"] for c in lora["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Base", "Rank", "Phase", "Resident", "Age"]
    lspec = lora["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert lspec["properties"]["deletionPolicy"]["enum"] == ["Delete", "Retain"]
    assert lspec["required"] == ["baseModel", "source"]


def test_check_reports_stale_file(tmp_path):
    crdgen.write_crds(tmp_path)
    assert crdgen.check_crds(tmp_path) == []
    target = tmp_path / "loraadapters.lorafleet.io.yaml"
    target.write_text(target.read_text() + "# edited\n")
    assert crdgen.check_crds(tmp_path) == ["loraadapters.lorafleet.io.yaml"]


def test_unsupported_union_raises():
    with pytest.raises(crdgen.SchemaConversionError):
        crdgen.to_structural({"anyOf": [{"type": "string"}, {"type": "boolean"}]})
