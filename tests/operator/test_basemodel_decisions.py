"""BaseModel decisions without a control plane: every reason and phase transition.

The functions of :mod:`lorafleet_operator.basemodel` take what the executor observed (spec,
status, the install Job, the RayService, the app's answer, the Ray Pods) and return the
status to write; each update is also checked against the BaseModel status model.
"""

from __future__ import annotations

from typing import Any

import pytest
from lorafleet_operator import basemodel
from lorafleet_operator import conditions as cond
from lorafleet_operator.indexes import AdapterFacts
from lorafleet_operator.install_job import InstallObservation
from lorafleet_operator.models import BaseModelSpec, status_patch
from lorafleet_operator.report import InstallReport
from lorafleet_operator.serveconfig import adapter_entry, build_serve_config, dump_serve_config
from lorafleet_operator.serveprobe import ServeAnswer
from lorafleet_operator.status_update import StatusUpdate

SPEC = {
    "source": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2"},
    "task": "text-classification",
}
PATH = "/models/ml/basemodels/minilm/r2"
OLD = "/models/ml/basemodels/minilm/r1"
JOB = "lorafleet-install-bm-minilm-abc"


def typed(update: StatusUpdate) -> StatusUpdate:
    """The update's fields pass the BaseModel status model (as the writer checks them)."""
    status_patch("BaseModel", update.fields)
    return update


def ready_status(path: str = OLD) -> dict[str, Any]:
    return {
        "phase": "Ready",
        "servedPath": path,
        "servedRevision": "r1",
        "resolvedRevision": "r1",
        "installJob": "old-job",
        "progress": "100%",
    }


def step(status: dict[str, Any], observed: InstallObservation, progress: str | None = None):
    result = basemodel.install_step(
        status,
        observed,
        job_name=JOB,
        claim="models",
        progress=progress,
        mount="/models",
        namespace="ml",
        name="minilm",
        poll_s=2.0,
    )
    typed(result.update)
    return result


# ---------------------------------------------------------------------------- spec checks


def test_a_valid_spec_parses() -> None:
    assert isinstance(basemodel.check_spec("minilm", SPEC), BaseModelSpec)


@pytest.mark.parametrize(
    ("name", "spec", "reason", "words"),
    [
        ("minilm", {"source": {"uri": "ftp://x/y"}}, "InvalidSpec", "spec.source.uri"),
        ("minilm", {**SPEC, "colour": "red"}, "InvalidSpec", "spec.colour"),
        ("minilm", {"source": {"uri": "file:///tmp/m"}}, "UnsupportedSource", "file://"),
        ("m" * 60, SPEC, "InvalidName", "m" * 60),
    ],
)
def test_spec_failures(name: str, spec: dict[str, Any], reason: str, words: str) -> None:
    update = basemodel.check_spec(name, spec)
    assert isinstance(update, StatusUpdate)
    typed(update)
    assert update.phase == "Failed" and update.failure == reason
    assert update.reason_of(cond.INSTALLED) == reason and update.reason_of(cond.READY) == reason
    assert update.fields["message"].startswith(f"{reason}: ") and words in update.fields["message"]


def test_a_missing_claim_is_pending_not_failed() -> None:
    update = typed(basemodel.volume_not_found("weights", "ml"))
    assert update.phase == "Pending" and update.reason_of(cond.INSTALLED) == "VolumeNotFound"
    assert "'weights'" in update.fields["message"] and "namespace ml" in update.fields["message"]


# ---------------------------------------------------------------------------------- install


def test_a_running_install_is_installing_with_progress() -> None:
    result = step({}, InstallObservation("running", None, f"install Job {JOB} running"), "42%")
    assert not result.done and result.requeue == 2.0
    fields = result.update.fields
    assert fields["phase"] == "Installing" and fields["installJob"] == JOB
    assert fields["progress"] == "42%" and fields["claimName"] == "models"
    assert result.update.reason_of(cond.INSTALLED) == "Installing"


def test_progress_falls_back_to_the_last_known_then_zero() -> None:
    observed = InstallObservation("running", None, "running")
    assert step({"progress": "10%"}, observed).update.fields["progress"] == "10%"
    assert step({}, observed).update.fields["progress"] == "0%"


def test_a_new_revision_installing_keeps_a_serving_model_ready() -> None:
    result = step(ready_status(), InstallObservation("running", None, "install Job new running"))
    fields = result.update.fields
    assert fields["phase"] == "Ready"
    assert fields["installJob"] == "old-job"  # the Job whose files status.path holds
    assert result.update.conditions == ()  # Installed stays True for the served revision


def test_a_failed_install_reports_the_installers_reason() -> None:
    report = InstallReport(ok=False, reason="SourceNotFound", message="no repo x/y")
    result = step({}, InstallObservation("failed", report, f"install Job {JOB} failed"))
    update = result.update
    assert not result.done and result.requeue is None
    assert update.phase == "Failed" and update.reason_of(cond.INSTALLED) == "SourceNotFound"
    assert update.fields["message"] == f"SourceNotFound: no repo x/y [install Job {JOB} failed]"
    assert update.fields["installJob"] == JOB and update.fields["claimName"] == "models"


@pytest.mark.parametrize(
    "observed",
    [
        InstallObservation("failed", None, "install Job j failed (DeadlineExceeded after 1)"),
        InstallObservation("succeeded", None, "install Job j completed"),
    ],
)
def test_no_report_is_install_failed(observed: InstallObservation) -> None:
    update = step({}, observed).update
    assert update.failure == "InstallFailed" and observed.detail in update.fields["message"]


def test_a_succeeded_install_is_installed_at_the_pod_path() -> None:
    report = InstallReport(
        ok=True,
        reason="Installed",
        message="installed 3 files",
        path="/tmp/vol/ml/basemodels/minilm/r2",
        resolvedRevision="r2",
        sizeBytes=90,
        architecture="BertModel",
    )
    result = step({}, InstallObservation("succeeded", report, "completed"))
    assert result.done
    fields = result.update.fields
    assert fields["phase"] == "Installed" and fields["path"] == PATH
    assert fields["resolvedRevision"] == "r2" and fields["progress"] == "100%"
    assert result.update.conditions == ((cond.INSTALLED, True, "Installed", "installed 3 files"),)
    rolled = step(ready_status(), InstallObservation("succeeded", report, "completed"))
    assert rolled.update.fields["phase"] == "Ready"  # serving r1 while r2 rolls out


# ----------------------------------------------------------------------------- RayService


def rayservice(
    registry: dict[str, Any], *, cluster: str = "h1", ready: bool = True, **status: Any
) -> dict[str, Any]:
    spec = BaseModelSpec.model_validate(SPEC)
    config = dump_serve_config(build_serve_config("minilm", PATH, spec, registry))
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "reason": "Kuberay"}]
    return {
        "metadata": {
            "name": "minilm",
            "generation": status.pop("generation", 1),
            "annotations": {basemodel.CLUSTER_HASH_ANNOTATION: cluster},
        },
        "spec": {"serveConfigV2": config, "rayClusterConfig": {"cluster": cluster}},
        "status": {"observedGeneration": 1, "conditions": conditions, **status},
    }


A = {"a": adapter_entry("/models/ml/adapters/a/r1", 8)}
AB = {**A, "b": adapter_entry("/models/ml/adapters/b/r1", 8)}


def plan(current: dict[str, Any], desired: dict[str, Any], registry: dict[str, Any], since: float):
    return basemodel.plan_rayservice(
        current, desired, registry, since_registry_write_s=since, registry_write_interval_s=5.0
    )


def test_nothing_changed_is_an_empty_plan() -> None:
    result = plan(rayservice(A), rayservice(A), A, 0.0)
    assert result.patch == {} and result.defer_s is None and not result.rolled


def test_a_registry_change_waits_for_the_write_interval_then_writes() -> None:
    waiting = plan(rayservice(A), rayservice(AB), AB, 2.0)
    assert waiting.patch == {} and waiting.defer_s == pytest.approx(3.0)
    writing = plan(rayservice(A), rayservice(AB), AB, 6.0)
    assert writing.patch["spec"]["serveConfigV2"] == rayservice(AB)["spec"]["serveConfigV2"]
    assert writing.registry_write and not writing.rolled


def test_a_changed_cluster_rolls_at_once() -> None:
    result = plan(rayservice(A, cluster="h1"), rayservice(AB, cluster="h2"), AB, 0.0)
    assert result.rolled and result.defer_s is not None  # the registry still waits
    assert result.patch["metadata"]["annotations"][basemodel.CLUSTER_HASH_ANNOTATION] == "h2"
    assert "serveConfigV2" not in result.patch["spec"]


def test_changed_serve_args_roll_at_once() -> None:
    desired = rayservice(A)
    desired["spec"]["serveConfigV2"] = desired["spec"]["serveConfigV2"].replace(PATH, OLD)
    result = plan(rayservice(A), desired, A, 0.0)
    assert result.rolled and not result.registry_write and result.defer_s is None


def test_the_cluster_hash_follows_the_cluster_config() -> None:
    one, two = rayservice(A, cluster="x"), rayservice(A, cluster="y")
    assert basemodel.cluster_config_hash(one) != basemodel.cluster_config_hash(two)
    assert basemodel.cluster_config_hash(one) == basemodel.cluster_config_hash(
        rayservice(AB, cluster="x")
    )


# ------------------------------------------------------------------------------- readiness


def test_ready_rayservice_without_probe_serves_the_registry() -> None:
    readiness = basemodel.rayservice_state(rayservice(A), PATH, A)
    assert readiness.ready and readiness.applied and readiness.answered == {"a"}


def test_a_failed_application_is_not_ready_even_if_kuberay_says_ready() -> None:
    apps = {"applicationStatuses": {"minilm": {"status": "DEPLOY_FAILED", "message": "boom"}}}
    readiness = basemodel.rayservice_state(rayservice(A, activeServiceStatus=apps), PATH, A)
    assert not readiness.ready and readiness.reason == "ApplicationFailed"
    assert "boom" in readiness.message and not readiness.applied


def test_an_unobserved_generation_is_not_applied() -> None:
    readiness = basemodel.rayservice_state(rayservice(A, generation=2), PATH, A)
    assert readiness.ready and not readiness.applied
    assert basemodel.requeue_after_ready(readiness, A, 2.0) == 2.0


def test_kuberays_reason_is_kept_when_not_ready() -> None:
    readiness = basemodel.rayservice_state(rayservice(A, ready=False), PATH, A)
    assert not readiness.ready and readiness.reason == "Kuberay"


def test_an_app_that_does_not_answer_is_serve_not_answering() -> None:
    base = basemodel.rayservice_state(rayservice(A), PATH, A)
    readiness = basemodel.with_answer(base, ServeAnswer(ok=False, error="GET x: refused"), PATH)
    assert not readiness.ready and readiness.reason == "ServeNotAnswering"
    assert readiness.message == "GET x: refused"


def test_the_previous_revision_answering_is_not_applied() -> None:
    base = basemodel.rayservice_state(rayservice(A), PATH, A)
    old = basemodel.with_answer(
        base, ServeAnswer(ok=True, base_path=OLD, adapters=frozenset()), PATH
    )
    assert old.ready and not old.applied
    new = basemodel.with_answer(
        base, ServeAnswer(ok=True, base_path=PATH, adapters=frozenset({"a"})), PATH
    )
    assert new.ready and new.applied and new.answered == {"a"}


def ready(readiness: basemodel.Readiness, status: dict[str, Any], probed: bool = True):
    return typed(
        basemodel.ready_update(
            readiness,
            status,
            path=PATH,
            registry_size=1,
            endpoint="http://minilm-serve-svc.ml.svc:8000",
            rayservice="minilm",
            probed=probed,
        )
    )


def test_ready_moves_served_path_only_once_applied() -> None:
    status = {**ready_status(), "resolvedRevision": "r2"}
    applied = basemodel.Readiness(True, "", "", True, frozenset({"a"}))
    update = ready(applied, status)
    assert update.phase == "Ready" and update.fields["servedPath"] == PATH
    assert update.fields["servedRevision"] == "r2"
    assert update.reason_of(cond.SERVING) == "ServeAnswering"
    assert update.reason_of(cond.READY) == "Ready"
    assert update.reason_of(cond.DEGRADED) == "RayServiceReady"
    rolling = ready(basemodel.Readiness(True, "", "", False, frozenset()), status, probed=False)
    assert rolling.fields["servedPath"] == OLD and rolling.fields["servedRevision"] == "r1"
    assert rolling.reason_of(cond.SERVING) == "RayServiceReady"


def not_ready(readiness: basemodel.Readiness, problems: str | None, waited: float):
    return typed(
        basemodel.not_ready_update(
            readiness,
            pod_problems=problems,
            waited_s=waited,
            ready_timeout_s=600.0,
            registry_size=1,
            endpoint="http://e",
            rayservice="minilm",
        )
    )


def test_not_ready_is_deploying_with_the_reason() -> None:
    readiness = basemodel.Readiness(
        False, "ApplicationNotRunning", "app: DEPLOYING", False, frozenset()
    )
    update = not_ready(readiness, None, 10.0)
    assert update.phase == "Deploying" and update.failure is None
    assert update.reason_of(cond.SERVING) == "ApplicationNotRunning"
    assert update.reason_of(cond.READY) == "ApplicationNotRunning"
    assert update.fields["message"] == "ApplicationNotRunning: app: DEPLOYING"


def test_ray_pod_problems_name_the_reason() -> None:
    readiness = basemodel.Readiness(False, "Initializing", "", False, frozenset())
    update = not_ready(readiness, "pod x: ErrImagePull: no such image", 10.0)
    assert update.reason_of(cond.SERVING) == "RayPodsNotRunning"
    assert "ErrImagePull" in update.fields["message"]


def test_not_ready_past_the_timeout_is_degraded() -> None:
    readiness = basemodel.Readiness(False, "Initializing", "waiting", False, frozenset())
    update = not_ready(readiness, None, 601.0)
    assert update.failure == "ReadyTimeout" and update.phase == "Deploying"
    assert update.reason_of(cond.DEGRADED) == "ReadyTimeout"
    assert update.reason_of(cond.READY) == "Degraded"


def test_requeue_while_the_app_lists_fewer_adapters() -> None:
    fewer = basemodel.Readiness(True, "", "", True, frozenset({"a"}))
    assert basemodel.requeue_after_ready(fewer, AB, 2.0) == 2.0
    assert basemodel.requeue_after_ready(fewer, A, 2.0) is None


# ---------------------------------------------------------------------------------- adapters


def facts(name: str, served: str | None = None, **kw: Any) -> AdapterFacts:
    defaults: dict[str, Any] = {
        "entry": A.get(served or name) or AB.get(served or name),
        "phase": "Deploying",
        "deleting": False,
        "created": "2026-01-01T00:00:00Z",
        "uid": "u",
        "generation": 1,
        "status": {},
    }
    defaults.update(kw)
    return AdapterFacts(name=name, served_name=served or name, **defaults)


def test_adapters_are_marked_ready_once_listed() -> None:
    adapters = [
        facts("a"),
        facts("b"),  # not listed by the app yet
        facts("c"),  # not in the registry
        facts("d", served="a", entry=adapter_entry("/other", 8)),  # loses the name to a
        facts("e", served="a", deleting=True),
        facts("f", served="a", phase="Ready"),  # Ready already
    ]
    marked = basemodel.adapters_to_mark_ready(adapters, AB, {"a"}, {})
    assert [a.name for a in marked] == ["a"]
    # Ready in the index but this operator wrote another phase since: marked again.
    again = basemodel.adapters_to_mark_ready(
        [facts("a", phase="Ready")], A, {"a"}, {"a": {"phase": "Deploying"}}
    )
    assert [a.name for a in again] == ["a"]


def test_a_served_adapter_is_ready() -> None:
    update = basemodel.adapter_served("minilm")
    status_patch("LoraAdapter", update.fields)
    assert update.phase == "Ready" and update.reason_of(cond.SERVING) == "InRegistry"


# ---------------------------------------------------------------------------------- deletion


def test_deletion_waits_for_adapters_and_names_them() -> None:
    assert basemodel.deletion_blocked([]) is None
    update = typed(basemodel.deletion_blocked(["b", "a"]))  # type: ignore[arg-type]
    assert update.phase == "Deleting" and update.fields["blockedBy"] == ["a", "b"]
    assert update.reason_of(cond.DELETING) == "AdaptersRemain"
    assert "2 LoraAdapter(s)" in update.fields["message"]
