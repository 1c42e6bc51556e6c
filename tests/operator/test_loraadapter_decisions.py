"""LoraAdapter decisions without a control plane: every reason and phase transition.

The functions of :mod:`lorafleet_operator.loraadapter` take what the executor observed and
return the status to write; each update is also checked against the LoraAdapter status model.
"""

from __future__ import annotations

from typing import Any

import pytest
from lorafleet_operator import conditions as cond
from lorafleet_operator import loraadapter
from lorafleet_operator.indexes import AdapterFacts, BaseFacts, desired_registry
from lorafleet_operator.install_job import (
    InstallObservation,
    is_installed,
    job_outcome,
    newest_termination_message,
)
from lorafleet_operator.models import LoraAdapterSpec, status_patch
from lorafleet_operator.report import InstallReport
from lorafleet_operator.status_update import StatusUpdate, api_error, internal_error

SPEC = {"baseModel": "minilm", "source": {"uri": "s3://bucket/lora"}}


def typed(update: StatusUpdate) -> StatusUpdate:
    status_patch("LoraAdapter", update.fields)
    return update


def base(**kw: Any) -> BaseFacts:
    values: dict[str, Any] = {
        "installed": True,
        "path": "/models/ml/basemodels/minilm/r1",
        "phase": "Ready",
        "claim": "models",
        "max_rank": 64,
        "source_uri": "hf://org/m",
        "deleting": False,
    }
    values.update(kw)
    return BaseFacts(**values)


def adapter(name: str, served: str, created: str, deleting: bool = False) -> AdapterFacts:
    return AdapterFacts(name, served, None, None, deleting, created, "u", 1, {})


def test_a_valid_spec_parses() -> None:
    assert isinstance(loraadapter.check_spec(SPEC), LoraAdapterSpec)


@pytest.mark.parametrize(
    ("spec", "reason", "words"),
    [
        ({"source": {"uri": "s3://b/l"}}, "InvalidSpec", "spec.baseModel"),
        ({**SPEC, "servedName": "bad name!"}, "InvalidSpec", "spec.servedName"),
        ({**SPEC, "source": {"uri": "file:///tmp/lora"}}, "UnsupportedSource", "file://"),
    ],
)
def test_spec_failures(spec: dict[str, Any], reason: str, words: str) -> None:
    update = loraadapter.check_spec(spec)
    assert isinstance(update, StatusUpdate)
    typed(update)
    assert update.phase == "Failed" and update.reason_of(cond.INSTALLED) == reason
    assert words in update.fields["message"]


def test_the_older_adapter_keeps_a_served_name() -> None:
    others = [
        adapter("mine", "x", "2026-01-02T00:00:00Z"),
        adapter("older", "x", "2026-01-01T00:00:00Z"),
        adapter("gone", "x", "2025-01-01T00:00:00Z", deleting=True),
        adapter("other-name", "y", "2020-01-01T00:00:00Z"),
    ]
    update = loraadapter.served_name_conflict("mine", "2026-01-02T00:00:00Z", "x", "minilm", others)
    assert update is not None and typed(update).reason_of(cond.INSTALLED) == "ServedNameConflict"
    assert "'older'" in update.fields["message"] and "spec.servedName" in update.fields["message"]
    assert (
        loraadapter.served_name_conflict("older", "2026-01-01T00:00:00Z", "x", "minilm", others)
        is None
    )
    # Same timestamp: the name decides, so exactly one of the two wins.
    tie = [adapter("a", "x", "t"), adapter("b", "x", "t")]
    assert loraadapter.served_name_conflict("a", "t", "x", "m", tie) is None
    assert loraadapter.served_name_conflict("b", "t", "x", "m", tie) is not None


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        (None, "does not exist"),
        (base(installed=False, phase="Installing"), "not installed yet (phase Installing)"),
        (base(installed=False, phase=None), "(phase Pending)"),
        (base(deleting=True), "not installed yet"),
        (base(claim=None), "not installed yet"),
    ],
)
def test_base_model_not_ready_is_pending(facts: BaseFacts | None, words: str) -> None:
    update = loraadapter.base_not_ready("minilm", facts, "served")
    assert update is not None and typed(update).phase == "Pending"
    assert update.reason_of(cond.INSTALLED) == "BaseModelNotReady"
    assert update.reason_of(cond.READY) == "BaseModelNotReady"
    assert words in update.fields["message"] and update.fields["servedName"] == "served"
    assert update.failure is None  # waiting, not failing


def test_an_installed_base_lets_the_adapter_install() -> None:
    assert loraadapter.base_not_ready("minilm", base(), "s") is None


def step(observed: InstallObservation, labels: dict[str, str] | None = None):
    result = loraadapter.install_step(
        observed,
        job_name="job",
        served="served",
        labels=labels,
        base_path="/models/ml/basemodels/minilm/r1",
        progress="7%" if observed.state == "running" else None,
        mount="/models",
        namespace="ml",
        name="lora",
        poll_s=1.5,
    )
    typed(result.update)
    return result


def test_a_running_install_is_installing() -> None:
    result = step(InstallObservation("running", None, "install Job job running"))
    assert (
        result.update.phase == "Installing"
        and result.requeue == 1.5
        and result.registry_entry() is None
    )
    assert result.update.fields["progress"] == "7%"


@pytest.mark.parametrize(
    ("reason", "compatible"),
    [
        ("TargetModulesNotFound", False),
        ("BaseMismatch", False),
        ("RankExceedsLimit", False),
        ("NoAdapterWeightsApplied", False),
        ("SourceNotFound", None),
        ("Unauthorized", None),
    ],
)
def test_a_failed_install_says_whether_it_fits_its_base(
    reason: str, compatible: bool | None
) -> None:
    report = InstallReport(ok=False, reason=reason, message="why")
    result = step(InstallObservation("failed", report, "install Job job failed"))
    assert result.update.phase == "Failed" and result.update.reason_of(cond.INSTALLED) == reason
    assert result.update.fields["compatible"] is compatible and result.registry_entry() is None


def test_no_report_is_install_failed() -> None:
    result = step(
        InstallObservation(
            "failed", None, "install Job job failed (BackoffLimitExceeded after 2 attempt(s))"
        )
    )
    assert result.update.failure == "InstallFailed"
    assert "BackoffLimitExceeded" in result.update.fields["message"]


def test_an_installed_adapter_waits_for_the_registry_with_its_entry() -> None:
    report = InstallReport(
        ok=True,
        reason="Installed",
        path="/tmp/v/ml/adapters/lora/r1",
        rank=8,
        loraAlpha=16,
        targetModules=["query", "value"],
        labels={"0": "neg"},
    )
    result = step(InstallObservation("succeeded", report, "done"), labels={"0": "negative"})
    update = result.update
    assert update.phase == "Deploying" and update.fields["compatible"] is True
    assert update.fields["path"] == "/models/ml/adapters/lora/r1"
    assert update.reason_of(cond.SERVING) == "RegistryUpdatePending"
    assert update.reason_of(cond.READY) == "RegistryUpdatePending"
    # spec.labels win over the report's in the registry entry
    assert result.registry_entry() == {
        "path": "/models/ml/adapters/lora/r1",
        "rank": 8,
        "labels": {"0": "negative"},
    }
    assert step(InstallObservation("succeeded", report, "done")).registry_entry()["labels"] == {
        "0": "neg"
    }  # type: ignore[index]


def test_a_report_without_path_fails_after_installed_is_written() -> None:
    """The status (Installed, Deploying) is decided first; only building the registry entry
    fails, as the operator did before the decisions were pure."""
    from lorafleet_operator.serveconfig import ServeConfigError

    result = step(
        InstallObservation("succeeded", InstallReport(ok=True, reason="Installed"), "done")
    )
    assert result.update.phase == "Deploying"
    with pytest.raises(ServeConfigError, match="path is empty"):
        result.registry_entry()


def test_deletion_states() -> None:
    waiting = typed(loraadapter.removing_from_registry("minilm"))
    assert (
        waiting.phase == "Deleting" and waiting.reason_of(cond.DELETING) == "RemovingFromRegistry"
    )
    files = typed(loraadapter.removing_files("install Job c running"))
    assert files.reason_of(cond.DELETING) == "RemovingFiles"
    assert loraadapter.must_wait_for_registry(True, False)
    assert not loraadapter.must_wait_for_registry(True, True)  # the base goes too
    assert not loraadapter.must_wait_for_registry(False, False)


@pytest.mark.parametrize(
    ("path", "policy", "claim", "over", "expected"),
    [
        ("/p", "Delete", "models", False, "remove"),
        ("/p", "Delete", "models", True, "timeout"),
        ("/p", "Delete", None, True, "timeout"),
        ("/p", "Delete", None, False, "keep"),
        ("/p", "Retain", "models", False, "keep"),
        (None, "Delete", "models", False, "keep"),
    ],
)
def test_cleanup_plan(
    path: str | None, policy: str, claim: str | None, over: bool, expected: str
) -> None:
    assert loraadapter.cleanup_plan(path, policy, claim, over) == expected


# ------------------------------------------------------------------ shared pieces of the pass


def test_api_errors_and_bugs_end_in_a_condition() -> None:
    forbidden = typed(api_error(403, "Forbidden", "jobs.batch is forbidden"))
    assert forbidden.reason_of(cond.READY) == "Forbidden" and forbidden.phase == "Pending"
    assert forbidden.reason_of(cond.INSTALLED) is None  # only Ready: the install may be fine
    other = api_error(422, "Unprocessable Entity", "spec.template: invalid")
    assert other.reason_of(cond.READY) == "KubernetesApiError"
    assert "spec.template: invalid" in other.fields["message"]
    bug = typed(internal_error(KeyError("path")))
    assert bug.reason_of(cond.READY) == "InternalError" and "KeyError" in bug.fields["message"]


def test_job_outcomes() -> None:
    job: dict[str, Any] = {"metadata": {"name": "j"}, "status": {}}
    assert job_outcome(job) == ("running", "install Job j running")
    job["status"] = {"failed": 1}
    assert job_outcome(job)[1] == "install Job j running (attempt 2; earlier attempts failed)"
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert job_outcome(job) == ("succeeded", "install Job j completed")
    job["status"] = {
        "failed": 3,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    }
    assert job_outcome(job) == (
        "failed",
        "install Job j failed (BackoffLimitExceeded after 3 attempt(s))",
    )


def test_the_newest_installer_termination_message_wins() -> None:
    def pod(finished: str, message: str, name: str = "installer") -> dict[str, Any]:
        terminated = {"finishedAt": finished, "message": message}
        return {
            "status": {"containerStatuses": [{"name": name, "state": {"terminated": terminated}}]}
        }

    pods = [
        pod("2026-01-01T00:00:02Z", "new"),
        pod("2026-01-01T00:00:01Z", "old"),
        pod("2026-01-01T00:00:09Z", "x", "sidecar"),
    ]
    assert newest_termination_message(pods) == "new"
    assert newest_termination_message([{"status": {}}]) is None


def test_installed_means_this_job_installed_it() -> None:
    done = {
        "installJob": "j",
        "path": "/p",
        "conditions": [{"type": "Installed", "status": "True"}],
    }
    assert is_installed(done, "j")
    assert not is_installed(done, "other")  # a new revision: a new Job
    assert not is_installed({**done, "path": None}, "j")


def test_desired_registry_older_wins_and_hints_overlay() -> None:
    def entry(name: str, served: str, created: str, **kw: Any) -> AdapterFacts:
        values: dict[str, Any] = {
            "phase": "Ready",
            "deleting": False,
            "uid": "u",
            "generation": 1,
            "status": {},
        }
        values.update(kw)
        return AdapterFacts(name, served, {"path": f"/{name}"}, created=created, **values)

    adapters = [entry("b", "x", "2"), entry("a", "x", "1"), entry("c", "c", "1", deleting=True)]
    assert desired_registry(adapters, {}) == {"x": {"path": "/a"}}
    hinted = desired_registry(adapters, {"x": None, "d": {"path": "/d"}})
    assert hinted == {"d": {"path": "/d"}}
