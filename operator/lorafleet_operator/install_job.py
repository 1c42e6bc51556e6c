"""Install Jobs as the operator sees them: state and report (pure readers of plain dicts).

A Job's outcome is read from its ``Complete``/``Failed`` condition and the installer's report
from the termination message of the newest finished ``installer`` container
(docs/interfaces.md section 2). These functions take plain dicts, so they are tested without
a control plane; :class:`lorafleet_operator.install_observer.InstallJobs` does the reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lorafleet_operator import conditions as cond
from lorafleet_operator.jobs import CONTAINER_NAME
from lorafleet_operator.report import InstallReport
from lorafleet_operator.status_update import StatusUpdate, failed

JobState = Literal["running", "succeeded", "failed"]


@dataclass(frozen=True)
class InstallObservation:
    """What an install (or cleanup) Job has done so far.

    Attributes:
        state: ``running``, ``succeeded`` or ``failed``.
        report: The installer's report once the Job finished (``None`` while running or when
            no container wrote one).
        detail: One line for status messages, naming the Job.
    """

    state: JobState
    report: InstallReport | None
    detail: str


def job_outcome(job: Mapping[str, Any]) -> tuple[JobState, str]:
    """A Job's state and detail line from its ``status`` (pure).

    Args:
        job: The Job as a plain dict.

    Returns:
        ``(state, detail)``; ``detail`` names the Job, its attempts and why it failed.
    """
    name = job["metadata"]["name"]
    job_status = job.get("status") or {}
    finished = None
    for c in job_status.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            finished = c
    attempts = job_status.get("failed") or 0
    if finished is None:
        detail = f"install Job {name} running"
        if attempts:
            detail += f" (attempt {attempts + 1}; earlier attempts failed)"
        return "running", detail
    if finished["type"] == "Complete":
        return "succeeded", f"install Job {name} completed"
    return "failed", (
        f"install Job {name} failed ({finished.get('reason') or 'Failed'} after "
        f"{attempts} attempt(s))"
    )


def newest_termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The termination message of the newest finished ``installer`` container (pure).

    Args:
        pods: The Job's Pods as plain dicts.

    Returns:
        The message (``""`` when the container wrote none), or ``None`` when no installer
        container has terminated.
    """
    best: tuple[str, str] | None = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") != CONTAINER_NAME or not terminated:
                continue
            finished = str(terminated.get("finishedAt") or "")
            if best is None or finished >= best[0]:
                best = (finished, terminated.get("message") or "")
    return None if best is None else best[1]


def failure_reason(observed: InstallObservation) -> str:
    """The reason a finished install failed: the installer's, or ``InstallFailed`` when it
    wrote no report."""
    reason = observed.report.reason if observed.report else "InstallFailed"
    return reason


def install_failed(observed: InstallObservation, **fields: Any) -> StatusUpdate:
    """A finished install that did not succeed: the installer's reason and message, or
    ``InstallFailed`` with the Job's detail when no report was written.

    Args:
        observed: The install Job's state and report (failed, or succeeded without an ok
            report).
        **fields: Further status fields to set with it.
    """
    reason = failure_reason(observed)
    message = observed.report.message if observed.report else observed.detail
    return failed(reason, f"{message} [{observed.detail}]", **fields)


def install_succeeded(observed: InstallObservation) -> InstallReport | None:
    """The ok report of a succeeded install, or ``None`` when it did not succeed."""
    report = observed.report
    if observed.state != "succeeded" or report is None or not report.ok:
        return None
    return report


def is_installed(status: Mapping[str, Any], job_name: str) -> bool:
    """Whether ``status`` records the install by ``job_name`` as done (Installed, a path)."""
    return (
        status.get("installJob") == job_name
        and cond.is_true(status.get("conditions"), cond.INSTALLED)
        and bool(status.get("path"))
    )
