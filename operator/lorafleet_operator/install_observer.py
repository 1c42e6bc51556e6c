"""Creates install Jobs and reads what they did: state, report, progress, duration."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lorafleet_operator import metrics
from lorafleet_operator.install_job import (
    InstallObservation,
    job_outcome,
    newest_termination_message,
)
from lorafleet_operator.jobs import CONTAINER_NAME, progress_file
from lorafleet_operator.operator_state import OperatorState
from lorafleet_operator.report import format_progress, parse_report, progress_from_log

#: How much of a running install Pod's log is read for its progress line (lines, bytes).
PROGRESS_LOG_LINES = 20
PROGRESS_LOG_BYTES = 16384


class InstallJobs:
    """Creates install Jobs and reads what they did.

    Args:
        state: The operator's state (API, settings, Job start times).
    """

    def __init__(self, state: OperatorState) -> None:
        self.state = state
        self.api = state.api

    async def observe(
        self, namespace: str, manifest: Mapping[str, Any], logger: kopf.Logger
    ) -> InstallObservation:
        """Ensure the Job exists (deterministic name) and read its state.

        Args:
            namespace: The Job's namespace.
            manifest: The Job to create if missing.
            logger: kopf's per-object logger.

        Raises:
            kubernetes.client.rest.ApiException: A read or create failed.
        """
        name = manifest["metadata"]["name"]
        job = await self.api.read_job(namespace, name)
        self.state.job_created.setdefault((namespace, name), time.monotonic())
        if job is None:
            if await self.api.create_job(namespace, manifest):
                logger.info("created install Job %s", name)
            return InstallObservation("running", None, f"install Job {name} created")
        state, detail = job_outcome(job)
        if state == "running":
            return InstallObservation(state, None, detail)
        pods = await self.api.list_pods(namespace, f"batch.kubernetes.io/job-name={name}")
        message = newest_termination_message(pods)
        report = parse_report(message) if message is not None else None
        logger.info(
            "install Job %s finished: %s (report: %s)",
            name,
            state,
            report.reason if report else "none",
        )
        return InstallObservation(state, report, detail)

    async def progress(self, kind: str, namespace: str, name: str, job_name: str) -> str | None:
        """The running install's progress (``42%`` or ``1.5 GiB``), or None if not known yet.

        Read from the installer's progress file when the operator sees the volume
        (``LORAFLEET_MODELS_LOCAL_ROOT``), else from the last progress line in the log tail of
        the Job's running Pod (``pods/log``; docs/interfaces.md section 2).
        """
        settings = self.state.settings
        if settings.models_local_root:
            path = progress_file(settings, namespace, kind, name)
            local = Path(settings.models_local_root) / path[len(settings.models_mount) :].lstrip(
                "/"
            )
            try:
                return format_progress(json.loads(local.read_text()))
            except (OSError, ValueError):
                return None
        try:
            pods = await self.api.list_pods(namespace, f"batch.kubernetes.io/job-name={job_name}")
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            if not running:
                return None
            text = await self.api.read_pod_log(
                namespace,
                running[-1]["metadata"]["name"],
                CONTAINER_NAME,
                PROGRESS_LOG_LINES,
                PROGRESS_LOG_BYTES,
            )
        except ApiException:
            return None
        return format_progress(progress_from_log(text))

    def finished(self, kind: str, namespace: str, job_name: str) -> None:
        """Record a finished install's duration (``lorafleet_install_seconds``)."""
        started = self.state.job_created.pop((namespace, job_name), None)
        if started is not None:
            metrics.INSTALL_SECONDS.labels(kind).observe(time.monotonic() - started)
