"""Dispatch: check that an entity can be analysed, then record a job for it.

Never waits for the model: the job is a row, and the workers take it from there. The checks
and the insert are one call of the SQL function ai_jobs_enqueue, which operators can call
from psql with the same effect.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from service.ai.processors import coverage, map_controls, match
from service.db.queries import Queries
from service.jobs.model import Job

JOB_TYPES = (match.JOB_TYPE, coverage.JOB_TYPE, map_controls.JOB_TYPE)

Q = Queries("service.ai", "dispatch.sql")


class EntityMissing(LookupError):
    """The entity to analyse does not exist."""


class NotAnalysable(ValueError):
    """The entity exists but there is nothing to analyse."""


class IdempotencyKeyReused(ValueError):
    """The Idempotency-Key named a job of another type or entity."""


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, max_attempts: Callable[[str], int]) -> None:
        self._pool = pool
        self._max_attempts = max_attempts

    async def dispatch(
        self,
        job_type: str,
        entity_id: int,
        created_by: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """The job for this analysis, and whether it is new: a new one, or the live (or
        same-key) one already there.

        Raises EntityMissing, NotAnalysable or IdempotencyKeyReused.
        """
        if job_type not in JOB_TYPES:
            raise ValueError(f"unknown job type {job_type!r}")
        try:
            row = await self._pool.fetchrow(
                Q.enqueue_analysis,
                job_type,
                entity_id,
                created_by,
                self._max_attempts(job_type),
                idempotency_key,
            )
        except asyncpg.NoDataFoundError as exc:
            raise EntityMissing(exc.args[0]) from None
        except asyncpg.InvalidParameterValueError as exc:
            raise NotAnalysable(exc.args[0]) from None
        assert row is not None
        job = Job.from_record(row)
        if (job.job_type, job.entity_id) != (job_type, entity_id):
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idempotency_key!r} was used for a {job.job_type} job "
                f"of entity {job.entity_id}"
            )
        return job, bool(row["created"])
