"""What an actor hands to a processor: the job, progress reporting, the database."""

from __future__ import annotations

import dataclasses
from typing import Any

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

    async def checkpoint(self, data: Any) -> None:
        """Save `data` (JSON) on the job row; a later attempt of the job reads it back from
        `ctx.job.checkpoint`, so that work done before a crash or a retry is not done again.

        Each call replaces the previous checkpoint. Raises LeaseLost when the job is no
        longer ours, which ends the actor.
        """
        await self.store.checkpoint(self.job, data)
        self.job = dataclasses.replace(self.job, checkpoint=data)
