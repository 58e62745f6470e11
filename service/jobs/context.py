"""What an actor hands to a processor: the job, progress reporting, the database."""

from __future__ import annotations

import asyncpg
import structlog

from service.jobs.model import Job
from service.jobs.store import JobStore


class JobContext:
    def __init__(
        self, job: Job, store: JobStore, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.job = job
        self.store = store
        self.log = log

    @property
    def pool(self) -> asyncpg.Pool:
        """For the processor's own reads; writes of the result go through Completion.apply."""
        return self.store.pool

    async def progress(
        self, message: str, current: int | None = None, total: int | None = None
    ) -> None:
        """Record progress on the job row, where pollers and the event stream see it.

        Raises LeaseLost when the job is no longer ours, which ends the actor.
        """
        await self.store.progress(self.job, message, current, total)
        self.log.info("job_progress", message=message, current=current, total=total)
