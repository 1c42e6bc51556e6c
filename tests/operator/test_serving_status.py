"""status.serving from the Serve app's residency answer (serving_status.py, serveprobe.py)."""

from __future__ import annotations

import pytest
from lorafleet_operator.models import BaseModelSpec, status_patch
from lorafleet_operator.serveprobe import ServeAnswer, parse_stats
from lorafleet_operator.serving_status import (
    adapter_events,
    adapter_serving,
    base_serving,
    desired_replicas,
    next_poll_s,
)

STATS = {
    "registered": ["a", "b"],
    "base_path": "/models/x",
    "replicas": {
        "r1": {
            "resident": ["a", "b"],
            "requests_per_minute": {"a": 5, "__base__": 1},
            "last_load_seconds": {"a": 0.02, "b": 0.5},
            "load_failures": {"b": 2, "a": True},  # a bool is no count
        },
        "r2": {
            "resident": ["a"],
            "requests_per_minute": {"a": 2},
            "last_load_seconds": {"a": 0.04},
        },
        "bad": {"resident": "a"},  # malformed: left out
        "worse": "nothing",
    },
}


def test_replicas_are_parsed_and_malformed_ones_left_out() -> None:
    answer = parse_stats(STATS)
    assert set(answer.replicas) == {"r1", "r2"}
    assert answer.replicas["r1"].resident == {"a", "b"}
    assert answer.replicas["r2"].last_load_seconds == {"a": 0.04}
    bad_numbers = {**STATS, "replicas": {"r": {"resident": [], "requests_per_minute": {"a": -1}}}}
    assert parse_stats(bad_numbers).replicas["r"].requests_per_minute == {}
    assert parse_stats({"registered": []}).replicas == {}  # an older serving image


def test_base_and_adapter_serving() -> None:
    answer = parse_stats(STATS)
    base = base_serving(answer, 3)
    assert base == {
        "replicas": "2/3",
        "readyReplicas": 2,
        "desiredReplicas": 3,
        "residentByReplica": {"r1": ["a", "b"], "r2": ["a"]},
        "requestsPerMinute": 8,
    }
    assert base_serving(answer, None)["replicas"] == "2"  # autoscaling: no fixed desire
    assert adapter_serving(answer, "a") == {
        "resident": "2/2",
        "replicas": ["r1", "r2"],
        "lastLoadSeconds": 0.04,
        "requestsPerMinute": 7,
        "loadFailures": 0,
    }
    assert adapter_serving(answer, "b")["loadFailures"] == 2
    assert adapter_serving(answer, "b")["resident"] == "1/2"
    assert adapter_serving(answer, "c") == {
        "resident": "0/2",
        "replicas": [],
        "requestsPerMinute": 0,
        "loadFailures": 0,
    }
    # What is written is what the status models declare (the API server would prune the rest).
    status_patch("BaseModel", {"serving": base})
    status_patch("LoraAdapter", {"serving": adapter_serving(answer, "a")})


@pytest.mark.parametrize(
    "answer", [ServeAnswer(ok=False, error="down"), ServeAnswer(ok=True, adapters=frozenset())]
)
def test_nothing_is_said_without_an_answer_with_replicas(answer: ServeAnswer) -> None:
    assert base_serving(answer, 1) is None
    assert adapter_serving(answer, "a") is None


def test_desired_replicas_follow_the_spec() -> None:
    def spec(**serving: object) -> BaseModelSpec:
        return BaseModelSpec.model_validate({"source": {"uri": "hf://o/m"}, "serving": serving})

    assert desired_replicas(spec()) == 1
    assert desired_replicas(spec(replicas=3)) == 3
    assert desired_replicas(spec(autoscaling={"minReplicas": 1, "maxReplicas": 4})) is None


def test_polls_slow_down_only_when_nothing_moves() -> None:
    quiet = {"residentByReplica": {"r1": ["a"]}, "requestsPerMinute": 0}
    busy = {**quiet, "requestsPerMinute": 4}
    moved = {**quiet, "residentByReplica": {"r1": ["b"]}}
    assert next_poll_s(None, quiet, 15, 120) == 15  # first look
    assert next_poll_s(quiet, quiet, 15, 120) == 120
    assert next_poll_s(quiet, busy, 15, 120) == 15
    assert next_poll_s(quiet, moved, 15, 120) == 15
    assert next_poll_s(quiet, None, 15, 120) == 15


def test_events_on_first_residency_failed_and_slow_loads() -> None:
    held = {"replicas": ["r1"], "lastLoadSeconds": 0.02, "loadFailures": 0}
    (loaded,) = adapter_events(None, held, 30.0)
    assert (loaded.warning, loaded.reason) == (False, "Loaded")
    assert "r1" in loaded.message and "0.020 s" in loaded.message
    assert adapter_events(held, held, 30.0) == []  # nothing new
    assert adapter_events(held, {**held, "replicas": ["r1", "r2"]}, 30.0) == []  # not first
    again = adapter_events({**held, "replicas": []}, held, 30.0)
    assert [e.reason for e in again] == ["Loaded"]  # evicted everywhere, then back
    failed = adapter_events(held, {**held, "loadFailures": 2}, 30.0)
    assert [(e.warning, e.reason) for e in failed] == [(True, "LoadFailed")]
    assert "2 load(s)" in failed[0].message
    slow = adapter_events(held, {**held, "lastLoadSeconds": 42.0}, 30.0)
    assert [(e.warning, e.reason) for e in slow] == [(True, "SlowLoad")]
    assert adapter_events(held, None, 30.0) == []


def test_hostile_numbers_and_sizes_are_left_out() -> None:
    import json

    huge, big = "9" * 400, 10**30
    payload = json.loads(
        '{"registered": [], "replicas": {"r": {"resident": ["a"],'
        f' "last_load_seconds": {{"a": 1e999, "b": NaN, "c": 0.5, "d": {huge}}},'
        f' "requests_per_minute": {{"a": {big}, "b": 3}}}}}}}}'
    )
    facts = parse_stats(payload).replicas["r"]
    assert facts.last_load_seconds == {"c": 0.5}
    assert facts.requests_per_minute == {"b": 3}
    many = {"registered": [], "replicas": {f"r{i:05d}": {"resident": ["a"]} for i in range(10_000)}}
    answer = parse_stats(many)
    assert len(answer.replicas) == 256
    status_patch("BaseModel", {"serving": base_serving(answer, None)})
