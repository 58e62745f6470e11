"""Dispatch: check that an entity can be analysed, then record a job for it.

Never waits for the model: the job is a row, and the workers take it from there.
"""

from __future__ import annotations

from collections.abc import Callable

from service.ai.processors import coverage, map_controls, match
from service.entities.store import EntityStore
from service.jobs.model import Job
from service.jobs.store import JobStore

JOB_TYPES = (match.JOB_TYPE, coverage.JOB_TYPE, map_controls.JOB_TYPE)


class EntityMissing(LookupError):
    """The entity to analyse does not exist."""


class NotAnalysable(ValueError):
    """The entity exists but there is nothing to analyse."""


class IdempotencyKeyReused(ValueError):
    """The Idempotency-Key named a job of another type or entity."""


class Dispatcher:
    def __init__(
        self, entities: EntityStore, jobs: JobStore, max_attempts: Callable[[str], int]
    ) -> None:
        self._entities = entities
        self._jobs = jobs
        self._max_attempts = max_attempts

    async def dispatch(
        self,
        job_type: str,
        entity_id: int,
        created_by: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """The job for this analysis: a new one, or the live (or same-key) one already there."""
        await self.check(job_type, entity_id)
        job, _created = await self._jobs.enqueue_once(
            job_type,
            entity_id,
            created_by=created_by,
            max_attempts=self._max_attempts(job_type),
            idempotency_key=idempotency_key,
        )
        if (job.job_type, job.entity_id) != (job_type, entity_id):
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idempotency_key!r} was used for a {job.job_type} job "
                f"of entity {job.entity_id}"
            )
        return job

    async def check(self, job_type: str, entity_id: int) -> None:
        """Raise EntityMissing or NotAnalysable when a job of this type cannot run."""
        if job_type == match.JOB_TYPE:
            row = await self._entities.mapping_dispatch_facts(entity_id)
            if row is None:
                raise EntityMissing(f"Mapping {entity_id} not found")
            if not row["has_content"]:
                raise NotAnalysable(
                    f"Document {row['document_id']} of mapping {entity_id} has no content "
                    "to analyse"
                )
        elif job_type == coverage.JOB_TYPE:
            if not await self._entities.requirement_exists(entity_id):
                raise EntityMissing(f"Requirement {entity_id} not found")
        elif job_type == map_controls.JOB_TYPE:
            row = await self._entities.document_dispatch_facts(entity_id)
            if row is None:
                raise EntityMissing(f"Document {entity_id} not found")
            if not row["has_content"]:
                raise NotAnalysable(f"Document {entity_id} has no content to analyse")
            if not row["has_controls"]:
                raise NotAnalysable("The control catalogue is empty; add controls first")
        else:
            raise ValueError(f"unknown job type {job_type!r}")
