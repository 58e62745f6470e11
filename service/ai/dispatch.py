"""Dispatch: check that an entity can be analysed, then record a job for it.

Never waits for the model: the job is a row, and the workers take it from there. The checks
and the insert are the SQL function ai_jobs_enqueue_many, which operators can call from psql
(or ai_jobs_enqueue, for one) with the same effect.

Dispatches are grouped: while one group is being written, the dispatches that arrive wait,
and go together as the next group, in one statement and one commit. Each still gets the
answer it would get alone; a group's jobs are committed, durably, before any of its
dispatches is answered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from service.ai.processors import coverage, map_controls, match
from service.db.queries import Queries
from service.jobs.duties import Duty
from service.jobs.grouped import Grouped

JOB_TYPES = (match.JOB_TYPE, coverage.JOB_TYPE, map_controls.JOB_TYPE)

Q = Queries("service.ai", "dispatch.sql")

# Dispatches written in one statement at most; more wait for the next group.
MAX_GROUP = 500
# The window of the per-user dispatch limit.
RATE_WINDOW_S = 60

# A group's statement that met another process's group in a deadlock, or lost a race too
# often, changed nothing: it runs again, this many times at most.
RETRIES = 3
_AGAIN = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

# Errors a request's own values can cause in a group's statement (a value the database
# refuses, a string that cannot be encoded): the group is then written again request by
# request, so that only the one at fault fails. Anything else (the database is away, a
# timeout) is every request's answer.
_ONE_OF_THEM = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    OverflowError,
)


class EntityMissing(LookupError):
    """The entity to analyse does not exist."""


class NotAnalysable(ValueError):
    """The entity exists but there is nothing to analyse."""


class IdempotencyKeyReused(ValueError):
    """The Idempotency-Key named a job of another type or entity."""


class DailyBudgetSpent(Exception):
    """The user's model calls cost their daily budget since 00:00 UTC; new jobs wait for the
    next 00:00 UTC, in `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(Exception):
    """The user made `limit` jobs in the last minute already."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(f"At most {limit} dispatches a minute; try again in {retry_after_s} s")
        self.limit = limit
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Dispatched:
    """The job a dispatch got: a new one (`created`), or the live or same-key one."""

    job_id: uuid.UUID
    status: str
    created: bool


@dataclass(frozen=True, slots=True)
class _Request:
    job_type: str
    entity_id: int
    created_by: str | None
    max_attempts: int
    idempotency_key: str | None
    priority: int


# Priorities a dispatch may ask for; higher is claimed first.
PRIORITIES = range(-10, 11)


class Dispatcher:
    """Records dispatches, grouped per process. `per_minute`: new jobs a user may make in a
    minute (0: no limit), counted in Postgres so the limit holds across processes.
    `daily_budget_usd`: what a user's model calls may cost from 00:00 UTC before their
    dispatches are refused (None: no budget; a user's row in ai_user_budgets overrides it)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        max_attempts: Callable[[str], int],
        per_minute: int = 0,
        max_group: int = MAX_GROUP,
        *,
        daily_budget_usd: float | None = None,
    ) -> None:
        self._pool = pool
        self._max_attempts = max_attempts
        self._per_minute = per_minute
        self._daily_budget = daily_budget_usd
        self._groups: Grouped[_Request, Dispatched] = Grouped(
            self._write, max_group, name="dispatch_writer"
        )

    @property
    def duty(self) -> Duty:
        """The grouped writer's health, for /readyz."""
        return self._groups.duty

    async def dispatch(
        self,
        job_type: str,
        entity_id: int,
        created_by: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Dispatched:
        """The job for this analysis: a new one, or the live (or same-key) one already there
        (whose priority stays as it was).

        Raises RateLimited, DailyBudgetSpent, EntityMissing, NotAnalysable or
        IdempotencyKeyReused.
        """
        if job_type not in JOB_TYPES:
            raise ValueError(f"unknown job type {job_type!r}")
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be from -10 to 10, got {priority}")
        return await self._groups.submit(
            _Request(
                job_type,
                entity_id,
                created_by,
                self._max_attempts(job_type),
                idempotency_key,
                priority,
            )
        )

    async def _write(self, group: list[_Request]) -> list[Dispatched | Exception]:
        """One statement for the group; each request's answer, in order."""
        try:
            rows = await self._enqueue(group)
        except _ONE_OF_THEM as exc:
            if len(group) == 1:
                return [exc]
            return [(await self._write([request]))[0] for request in group]
        answers: list[Dispatched | Exception] = [
            RuntimeError("the database gave this dispatch no outcome") for _ in group
        ]
        for row in rows:
            answers[row["n"] - 1] = self._answer(group[row["n"] - 1], row)
        return answers

    async def _enqueue(self, group: list[_Request]) -> list[asyncpg.Record]:
        retries = 0
        while True:
            try:
                rows: list[asyncpg.Record] = await self._pool.fetch(
                    Q.enqueue_many,
                    [r.job_type for r in group],
                    [r.entity_id for r in group],
                    [r.created_by for r in group],
                    [r.max_attempts for r in group],
                    [r.idempotency_key for r in group],
                    self._per_minute,
                    RATE_WINDOW_S,
                    [r.priority for r in group],
                    None if self._daily_budget is None else Decimal(str(self._daily_budget)),
                )
                return rows
            except _AGAIN:
                retries += 1
                if retries > RETRIES:
                    raise

    def _answer(self, request: _Request, row: asyncpg.Record) -> Dispatched | Exception:
        outcome = row["outcome"]
        if outcome in ("created", "existing"):
            if (row["job_type"], row["entity_id"]) != (request.job_type, request.entity_id):
                return IdempotencyKeyReused(
                    f"Idempotency-Key {request.idempotency_key!r} was used for a "
                    f"{row['job_type']} job of entity {row['entity_id']}"
                )
            return Dispatched(row["job_id"], row["status"], outcome == "created")
        if outcome == "rate_limited":
            return RateLimited(self._per_minute, row["retry_after_s"])
        if outcome == "budget_exhausted":
            return DailyBudgetSpent(
                f"{row['message']}; new jobs are accepted again from 00:00 UTC",
                row["retry_after_s"],
            )
        if outcome == "missing":
            return EntityMissing(row["message"])
        return NotAnalysable(row["message"])
