"""JobStore: every query of the queue, run through one class."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from service.db.pool import Connection
from service.db.queries import Queries
from service.jobs.duties import Duty
from service.jobs.grouped import Grouped
from service.jobs.model import FINISHED, ApplyEffect, Job

Q = Queries("service.jobs", "queries.sql")

REAPER_LOCK_ID = 0x61696A6F6272  # advisory lock held while one worker reaps leases


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker tells about itself in ai_worker_registry."""

    id: str
    host: str
    pid: int
    concurrency: int
    job_types: tuple[str, ...]


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


class UserScopeUnavailable(Exception):
    """The service's database role cannot act as `authenticated`: every read of a user's
    jobs would fail. The message names the GRANT that fixes it."""


class LeaseLost(Exception):
    """The job is no longer ours: it was reaped, cancelled or finished elsewhere."""


@dataclass(frozen=True, slots=True)
class JobRead:
    """One read of a job for a client: as the user these JWT claims (JSON text) name, or
    with the service's rights (None); `known_tags`: the versions the client has."""

    job_id: uuid.UUID
    claims: str | None
    known_tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobVersion:
    """A job as read for a client: the tag of the version read, its status, and the job
    itself unless the client named this version as one it has (then None)."""

    tag: str
    status: str
    job: Job | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobReader:
    """Reads of jobs on one connection, inside a transaction that may scope them to a user."""

    def __init__(self, conn: Connection | asyncpg.Pool) -> None:
        self._conn = conn

    async def get(self, job_id: uuid.UUID) -> Job | None:
        row = await self._conn.fetchrow(Q.get_job, job_id)
        return Job.from_record(row) if row else None

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        entity_id: int | None = None,
        created_by: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        rows = await self._conn.fetch(Q.list_jobs, status, job_type, entity_id, created_by, limit)
        return [Job.from_record(r) for r in rows]


_Progress = tuple[Job, str, int | None, int | None]  # the job, message, current, total


class JobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Progress of many running jobs, written together (see `progress`).
        self._progress: Grouped[_Progress, None] = Grouped(
            self._write_progress, name="progress_writer"
        )

    @contextlib.asynccontextmanager
    async def reader(self, claims: Mapping[str, object] | None) -> AsyncIterator[JobReader]:
        """Reads as the user these JWT claims name, enforced by row level security: under
        the `authenticated` role, Postgres shows only the jobs whose created_by is the
        claims' `sub`. `None`: reads with the service's own rights (everything)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if claims is not None:
                await conn.execute(Q.enter_user_scope, orjson.dumps(claims).decode())
            yield JobReader(conn)

    async def check_user_scope(self) -> None:
        """Raise UserScopeUnavailable unless this role can enter a user's scope (`reader`)."""
        async with self.pool.acquire() as conn:
            role: str = await conn.fetchval(Q.session_role)
            try:
                async with conn.transaction():
                    await conn.execute(Q.enter_user_scope, "{}")
            except asyncpg.InsufficientPrivilegeError:
                raise UserScopeUnavailable(
                    f'the database role "{role}" cannot SET ROLE authenticated, so every read '
                    "of a user's jobs would fail. As an administrator, run: "
                    f'GRANT authenticated TO "{role}";'
                ) from None
            except asyncpg.InvalidParameterValueError:
                raise UserScopeUnavailable(
                    'the role "authenticated" does not exist. As an administrator, run: '
                    f'CREATE ROLE authenticated NOLOGIN; GRANT authenticated TO "{role}";'
                ) from None

    # -- dispatch and reads -------------------------------------------------------------

    async def enqueue(
        self,
        job_type: str,
        entity_id: int,
        *,
        created_by: str | None = None,
        max_attempts: int = 5,
        idempotency_key: str | None = None,
    ) -> Job:
        job, _ = await self.enqueue_once(
            job_type,
            entity_id,
            created_by=created_by,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
        )
        return job

    async def enqueue_once(
        self,
        job_type: str,
        entity_id: int,
        *,
        created_by: str | None = None,
        max_attempts: int = 5,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a job unless an identical one is live, or the key was used already.

        Returns the job and whether it is new. A unique index decides, not a read: fifty
        identical dispatches at once create one job.
        """
        args = (job_type, entity_id, created_by)
        for _ in range(5):
            row = await self.pool.fetchrow(Q.enqueue, *args, max_attempts, idempotency_key)
            if row is not None:
                return Job.from_record(row), True
            existing = await self.pool.fetchrow(Q.find_duplicate, *args, idempotency_key)
            if existing is not None:
                return Job.from_record(existing), False
            # The live job we collided with finished in between: try again.
        raise RuntimeError(f"could not enqueue {job_type} for {entity_id}: constant conflicts")

    async def cancel(self, job_id: uuid.UUID) -> Job | None:
        """Fail a pending or running job with 'Cancelled'.

        Returns the cancelled job; None when there is no such job or it had finished.
        """
        row = await self.pool.fetchrow(Q.cancel_job, job_id)
        return Job.from_record(row) if row else None

    async def get(self, job_id: uuid.UUID) -> Job | None:
        """The job, read with the service's own rights."""
        return await JobReader(self.pool).get(job_id)

    async def read_many(self, reads: Sequence[JobRead]) -> list[JobVersion | Exception | None]:
        """Many reads in one round trip, each under row level security as `reader` scopes
        it. Per read: None when there is no such job, or it is not that user's; the job's
        version, without the job itself when its tag is among the read's `known_tags` (or
        "*" is). Tags are digits and a dash: a known tag of any other form matches nothing."""
        rows = await self.pool.fetch(
            Q.read_jobs,
            [r.job_id for r in reads],
            [r.claims for r in reads],
            [",".join(t for t in r.known_tags if "," not in t) for r in reads],
        )
        versions: list[JobVersion | Exception | None] = [None] * len(reads)
        for row in rows:
            job = None if row["unchanged"] else Job.from_record(row)
            versions[row["n"] - 1] = JobVersion(row["tag"], row["status"], job)
        return versions

    # -- the worker's side --------------------------------------------------------------

    async def claim(
        self,
        limit: int,
        worker_id: str,
        lease_s: float,
        *,
        fair_share: bool = True,
        per_owner: int | None = None,
    ) -> list[Job]:
        """Claim up to `limit` due jobs, highest priority first; with `fair_share`, round
        robin between owners, at most `per_owner` of one owner's jobs running at once (None:
        no cap); without, oldest first whoever the owner."""
        if fair_share:
            rows = await self.pool.fetch(Q.claim_jobs, limit, worker_id, lease_s, per_owner or 0)
        else:
            rows = await self.pool.fetch(Q.claim_jobs_in_order, limit, worker_id, lease_s)
        return [Job.from_record(r) for r in rows]

    async def progress(
        self,
        job: Job,
        message: str,
        current: int | None,
        total: int | None,
    ) -> None:
        """Record a running job's progress; raises LeaseLost when the job is no longer ours.

        The progress of jobs that report while one write is in flight goes together in the
        next: one statement, one commit and one NOTIFY for all of them. A lone report goes at
        once.
        """
        await self._progress.submit((job, message, current, total))

    @property
    def progress_duty(self) -> Duty:
        return self._progress.duty

    async def idle(self) -> None:
        """Returns when no progress group is being written."""
        await self._progress.idle()

    async def _write_progress(self, reports: list[_Progress]) -> list[Exception | None]:
        # A job that reported twice in one group: its last report is the one written.
        last = {job.id: (job, message, current, total) for job, message, current, total in reports}
        latest = list(last.values())
        rows = await self.pool.fetch(
            Q.update_progress_many,
            [job.id for job, _, _, _ in latest],
            [job.locked_by for job, _, _, _ in latest],
            [job.attempts for job, _, _, _ in latest],
            [message for _, message, _, _ in latest],
            [current for _, _, current, _ in latest],
            [total for _, _, _, total in latest],
        )
        written = {r["id"] for r in rows}
        return [None if job.id in written else LeaseLost(str(job.id)) for job, _, _, _ in reports]

    async def checkpoint(self, job: Job, data: object) -> None:
        """Replace the job's checkpoint; raises LeaseLost when the job is no longer ours."""
        status = await self.pool.execute(
            Q.save_checkpoint, job.id, job.locked_by, job.attempts, data
        )
        if status == "UPDATE 0":
            raise LeaseLost(str(job.id))

    async def complete(
        self, job: Job, result: object, message: str, apply: ApplyEffect | None
    ) -> Job:
        """Mark the job completed and apply its effect, in one transaction.

        Raises LeaseLost, and applies nothing, when the job is no longer ours. An exception
        from `apply` rolls back both.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                Q.complete_job, job.id, job.locked_by, job.attempts, result, message
            )
            if row is None:
                raise LeaseLost(str(job.id))
            if apply is not None:
                await apply(conn)
        return Job.from_record(row)

    async def complete_without_effect(
        self, completions: Sequence[tuple[Job, object, str]]
    ) -> set[uuid.UUID]:
        """Mark many jobs completed, each with its result and message, in one statement.

        Returns the ids completed; a job missing from it was no longer ours and is untouched.
        """
        rows = await self.pool.fetch(
            Q.complete_without_effect,
            [job.id for job, _, _ in completions],
            [job.locked_by for job, _, _ in completions],
            [job.attempts for job, _, _ in completions],
            [None if result is None else _json(result) for _, result, _ in completions],
            [message for _, _, message in completions],
        )
        return {r["id"] for r in rows}

    async def _fenced(self, query: str, job: Job, *args: object) -> Job:
        """Run a write fenced by the job's lease owner and attempt; LeaseLost when it
        changed nothing."""
        row = await self.pool.fetchrow(query, job.id, job.locked_by, job.attempts, *args)
        if row is None:
            raise LeaseLost(str(job.id))
        return Job.from_record(row)

    async def fail(self, job: Job, error_message: str) -> Job:
        return await self._fenced(Q.fail_job, job, error_message)

    async def retry(
        self, job: Job, delay_s: float, progress_message: str, error_message: str
    ) -> Job:
        return await self._fenced(Q.retry_job, job, delay_s, progress_message, error_message)

    async def snooze(
        self, job: Job, delay_s: float, progress_message: str, error_message: str
    ) -> Job:
        """Back to pending for `delay_s`, without counting the attempt: see snooze_job."""
        return await self._fenced(Q.snooze_job, job, delay_s, progress_message, error_message)

    async def release(self, job: Job, message: str = "Worker stopped; queued to run again") -> None:
        """Hand the job back to pending without counting the attempt; its checkpoint stays."""
        await self.pool.execute(Q.release_job, job.id, job.locked_by, job.attempts, message)

    async def release_orphans(
        self, worker_id: str, running: Sequence[tuple[uuid.UUID, int]], message: str
    ) -> list[uuid.UUID]:
        """Hand back the jobs locked by `worker_id` other than its running (job id, attempt)s,
        without counting the attempt; returns their ids."""
        rows = await self.pool.fetch(
            Q.release_orphans,
            worker_id,
            [job_id for job_id, _ in running],
            [attempt for _, attempt in running],
            message,
        )
        return [r["id"] for r in rows]

    async def extend_leases(
        self, worker_id: str, running: Sequence[tuple[uuid.UUID, int]], lease_s: float
    ) -> set[uuid.UUID]:
        """Renew the leases of our running (job id, attempt)s; returns the ids still ours."""
        rows = await self.pool.fetch(
            Q.extend_leases,
            worker_id,
            [job_id for job_id, _ in running],
            lease_s,
            [attempt for _, attempt in running],
        )
        return {r["id"] for r in rows}

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Insert (or, after a cut, re-insert) the worker's row and renew its heartbeat."""
        await self.pool.execute(
            Q.worker_heartbeat,
            worker.id,
            worker.host,
            worker.pid,
            worker.concurrency,
            list(worker.job_types),
        )

    async def deregister_worker(self, worker_id: str) -> None:
        await self.pool.execute(Q.deregister_worker, worker_id)

    async def remove_stale_workers(self, stale_after_s: float) -> int:
        status = await self.pool.execute(Q.remove_stale_workers, stale_after_s)
        return int(status.split()[-1])

    async def reap_expired(self, batch: int = 500) -> list[tuple[uuid.UUID, str]]:
        """Return jobs with expired leases to pending (or fail them), one reaper at a time."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(Q.try_reaper_lock, REAPER_LOCK_ID):
                return []
            rows = await conn.fetch(Q.reap_expired, batch)
        return [(r["id"], r["status"]) for r in rows]
