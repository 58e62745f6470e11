"""What a job is, and the outcomes a processor can report."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from service.db.pool import Connection

JobStatus = Literal["pending", "processing", "completed", "failed"]
FINISHED: frozenset[str] = frozenset({"completed", "failed"})


@dataclass(frozen=True, slots=True)
class Job:
    id: uuid.UUID
    job_type: str
    entity_id: int
    status: str
    progress_message: str | None
    progress_current: int | None
    progress_total: int | None
    result: Any
    error_message: str | None
    attempts: int
    max_attempts: int
    run_after: datetime
    locked_by: str | None
    locked_until: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    # What the processor saved of its progress (JobContext.checkpoint); None: nothing yet.
    checkpoint: Any = None
    # Higher is claimed first (-10..10).
    priority: int = 0
    # Seconds the job waited, sent back by a rate limit or an overloaded provider (`snooze`).
    rate_limit_wait_s: float = 0.0

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | asyncpg.Record) -> Job:
        # A record built by hand may leave out the fields that have defaults.
        values: dict[str, Any] = {
            name: record[name]
            for name in cls.__slots__
            if name not in _OPTIONAL_FIELDS or record.get(name) is not None
        }
        return cls(**values)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


_OPTIONAL_FIELDS = frozenset({"checkpoint", "priority", "rate_limit_wait_s"})

ApplyEffect = Callable[[Connection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Completion:
    """A processor's success: the job's result, and the effect on the entity's own rows.

    `apply` runs in the same transaction that marks the job completed, so a job is never
    completed without its effect, nor its effect applied twice.
    """

    result: Any
    apply: ApplyEffect | None = None
    message: str = "Completed"


class JobError(Exception):
    """Raised by a processor to end an attempt with a known outcome."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(JobError):
    """A transient failure: run the job again after `delay` seconds (None: backoff).

    `snooze`: the job was refused for now by a limit outside it (a rate limit, a provider
    over capacity), not failed. The wait costs no attempt; the job fails only once such waits
    add up to RetryPolicy.max_wait_s.
    """

    def __init__(
        self,
        reason: str,
        delay: float | None = None,
        *,
        kind: str = "transient",
        snooze: bool = False,
    ) -> None:
        super().__init__(reason)
        self.delay = delay
        self.kind = kind
        self.snooze = snooze


class PermanentFailure(JobError):
    """A failure that another attempt would not fix: the job fails at once."""
