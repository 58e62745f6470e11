"""What an actor hands to a processor: the job, progress reporting, the database."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import asyncpg
import structlog

from service.jobs.model import Job
from service.jobs.store import JobStore
from service.jobs.text import TextPublisher


class JobContext:
    def __init__(
        self,
        job: Job,
        store: JobStore,
        log: structlog.typing.FilteringBoundLogger,
        text: TextPublisher | None = None,
    ) -> None:
        self.job = job
        self.store = store
        self.log = log
        self._text = text

    @property
    def writes_text(self) -> bool:
        """Whether `write_text` sends anything (AIJOBS_STREAM_DELTAS)."""
        return self._text is not None

    def write_text(self, stream: Mapping[str, str | int], text: str) -> None:
        """Append `text` to one of the job's text streams (`stream` names it, as
        `{"field": "rationale"}`), for whoever follows the job live: sent within 100 ms, never
        stored (see service.jobs.text). A new attempt of the job starts its streams afresh."""
        if self._text is not None:
            self._text.write(self.job.id, self.job.attempts, stream, text)

    def restart_text(self, streams: Mapping[str, str | int]) -> None:
        """Start afresh every text stream of the job's attempt whose names include all of
        `streams` (`{"field": "rationale", "part": "batch-2"}`: the rationale of each control
        of batch 2), as when what was written to them is written again from its start: their
        next text starts at offset 0, and whoever follows the job drops what they had of
        them."""
        if self._text is not None:
            self._text.restart(self.job.id, self.job.attempts, streams)

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
        self.log.debug("job_progress", message=message, current=current, total=total)

    async def checkpoint(self, data: Any) -> None:
        """Save `data` (JSON) on the job row; a later attempt of the job reads it back from
        `ctx.job.checkpoint`, so that work done before a crash or a retry is not done again.

        Each call replaces the previous checkpoint. Raises LeaseLost when the job is no
        longer ours, which ends the actor.
        """
        await self.store.checkpoint(self.job, data)
        self.job = dataclasses.replace(self.job, checkpoint=data)
