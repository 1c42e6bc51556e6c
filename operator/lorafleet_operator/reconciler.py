"""What the BaseModel and LoraAdapter executors share: their inputs and the install look-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import kopf

from lorafleet_operator.indexes import Indexes
from lorafleet_operator.install_job import InstallObservation
from lorafleet_operator.install_observer import InstallJobs
from lorafleet_operator.operator_state import OperatorState
from lorafleet_operator.status_writer import StatusWriter


class Reconciler:
    """One reconcile pass (or the deletion) of one object of :attr:`KIND`.

    Args:
        body: The object.
        state: The operator's state.
        indexes: The kopf indexes.
        logger: kopf's per-object logger.
    """

    KIND: ClassVar[str]

    def __init__(
        self,
        body: Mapping[str, Any],
        state: OperatorState,
        indexes: Indexes,
        logger: kopf.Logger,
    ) -> None:
        self.writer = StatusWriter(self.KIND, body, state, logger)
        self.state = state
        self.settings = state.settings
        self.api = state.api
        self.indexes = indexes
        self.logger = logger
        self.jobs = InstallJobs(state)
        self.name = self.writer.name
        self.namespace = self.writer.namespace

    @property
    def status(self) -> dict[str, Any]:
        """The status as this operator last wrote or read it."""
        return self.writer.status

    async def reconcile(self) -> float | None:
        """One pass; seconds until the next poll, or ``None`` to idle until woken."""
        raise NotImplementedError

    async def observe_install(
        self, job: Mapping[str, Any]
    ) -> tuple[InstallObservation, str | None]:
        """Ensure the install Job exists and read it: its state and report, and the progress
        while it runs (a finished install's duration is recorded).

        Raises:
            kubernetes.client.exceptions.ApiException: A read or create failed.
        """
        job_name = job["metadata"]["name"]
        observed = await self.jobs.observe(self.namespace, job, self.logger)
        if observed.state != "running":
            self.jobs.finished(self.KIND, self.namespace, job_name)
            return observed, None
        return observed, await self.jobs.progress(self.KIND, self.namespace, self.name, job_name)
