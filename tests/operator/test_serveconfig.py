"""Unit tests of the serve config builder (docs/interfaces.md section 3)."""

from __future__ import annotations

import pytest
import yaml
from lorafleet_operator.models import BaseModelSpec
from lorafleet_operator.serveconfig import (
    ServeConfigError,
    build_serve_config,
    dump_serve_config,
    parse_cpu_quantity,
    registry_of,
)

SPEC = BaseModelSpec.model_validate(
    {
        "source": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2"},
        "task": "text-classification",
        "numLabels": 2,
        "id2label": {"0": "negative", "1": "positive"},
        "serving": {"maxAdaptersPerReplica": 3, "maxBatchSize": 32, "cpu": "1500m"},
    }
)
ADAPTERS = {
    "topic": {"path": "/models/ml/adapters/topic/abc", "rank": 4, "labels": {"0": "a", "1": "b"}},
    "sentiment": {"path": "/models/ml/adapters/sentiment/def", "rank": 8},
}


def test_shape_matches_interfaces():
    config = build_serve_config("minilm", "/models/ml/basemodels/minilm/rev", SPEC, ADAPTERS)
    (app,) = config["applications"]
    assert app["name"] == "minilm"
    assert app["import_path"] == "lorafleet_serving.ray_app:build_app"
    assert app["route_prefix"] == "/"
    assert app["args"] == {
        "served_name": "minilm",
        "base_path": "/models/ml/basemodels/minilm/rev",
        "task": "text-classification",
        "dtype": "auto",
        "labels": {"0": "negative", "1": "positive"},
        "max_batch_size": 32,
        "batch_wait_timeout_ms": 5,
        "max_tokens_limit": 2048,
    }
    ingress, model = app["deployments"]
    assert ingress["name"] == "Ingress" and ingress["num_replicas"] == 1
    assert model["name"] == "Model"
    assert model["num_replicas"] == 1
    assert model["ray_actor_options"] == {"num_cpus": 1.5, "num_gpus": 1}
    assert model["user_config"]["max_adapters"] == 3
    assert list(model["user_config"]["adapters"]) == ["sentiment", "topic"]
    assert model["user_config"]["adapters"]["topic"]["labels"] == {"0": "a", "1": "b"}
    assert "labels" not in model["user_config"]["adapters"]["sentiment"]


def test_accepted_by_ray_serve_schema():
    schema = pytest.importorskip("ray.serve.schema")
    spec = SPEC.model_copy(
        update={"serving": SPEC.serving.model_copy(update={"autoscaling": None, "replicas": 2})}
    )
    config = build_serve_config("minilm", "/m", spec, ADAPTERS, num_gpus=0, num_cpus=0.5)
    parsed = schema.ServeDeploySchema.model_validate(config)
    model = parsed.applications[0].deployments[1]
    assert model.num_replicas == 2
    assert model.ray_actor_options.num_cpus == 0.5
    assert not model.ray_actor_options.num_gpus
    assert model.user_config["adapters"]["sentiment"]["rank"] == 8


def test_autoscaling_and_cpu_only_override():
    spec = BaseModelSpec.model_validate(
        {
            "source": {"uri": "hf://x/y"},
            "serving": {
                "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetOngoingRequests": 2}
            },
        }
    )
    config = build_serve_config("gpt", "/m/gpt", spec, {}, num_gpus=0, served_name="tiny")
    (app,) = config["applications"]
    model = app["deployments"][1]
    assert "num_replicas" not in model
    assert model["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 2.0,
    }
    assert model["ray_actor_options"] == {"num_cpus": 1.0}
    assert app["args"]["served_name"] == "tiny"
    assert app["args"]["task"] == "text-generation"
    assert "labels" not in app["args"]


def test_only_user_config_changes_when_adapters_change():
    one = build_serve_config("minilm", "/m", SPEC, {})
    two = build_serve_config("minilm", "/m", SPEC, ADAPTERS)
    one["applications"][0]["deployments"][1].pop("user_config")
    two["applications"][0]["deployments"][1].pop("user_config")
    assert one == two


def test_yaml_round_trip_and_registry_of():
    text = dump_serve_config(build_serve_config("minilm", "/m", SPEC, ADAPTERS))
    assert yaml.safe_load(text)["applications"][0]["name"] == "minilm"
    assert registry_of(text)["sentiment"] == {
        "path": "/models/ml/adapters/sentiment/def",
        "rank": 8,
    }
    assert registry_of("") == {}
    assert registry_of(None) == {}


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"rank": 8}, "path is empty"),
        ({"path": "/p", "rank": 0}, "positive integer"),
        ({"path": "/p", "alpha": 1}, "unknown registry keys"),
    ],
)
def test_bad_registry_entries(entry, words):
    with pytest.raises(ServeConfigError, match=words) as info:
        build_serve_config("minilm", "/m", SPEC, {"bad": entry})
    assert "'bad'" in str(info.value)


def test_cpu_quantities():
    assert parse_cpu_quantity("250m") == 0.25
    assert parse_cpu_quantity("2") == 2.0
    with pytest.raises(ServeConfigError, match=r"serving\.cpu"):
        parse_cpu_quantity("2Gi")
