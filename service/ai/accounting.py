"""Accounting: every model call's tokens and estimated cost, added to its job's row.

A call is recorded as soon as it is answered, whatever becomes of the attempt that made it,
so the columns of a job (and the ai_jobs_usage_daily view over them) add up what was spent,
failed attempts included.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from service.ai.analyzer import Usage
from service.ai.pricing import PriceTable
from service.db.errors import DATABASE_UNAVAILABLE
from service.db.pool import Connection
from service.db.queries import Queries
from service.logs import get_logger

log = get_logger(__name__)

Q = Queries("service.ai", "usage.sql")

# The database away (a cut can leave the driver in a state it cannot leave:
# InternalClientError), or a statement it refused.
_DB_ERRORS: tuple[type[Exception], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)


@dataclass(frozen=True)
class JobUsage:
    """What a job's model calls have used so far, and their cost (None: a price unknown)."""

    usage: Usage
    cost_usd: Decimal | None

    def as_json(self) -> dict[str, object]:
        return {
            "calls": self.usage.calls,
            "inputTokens": self.usage.input_tokens,
            "outputTokens": self.usage.output_tokens,
            "cacheCreationInputTokens": self.usage.cache_creation_input_tokens,
            "cacheReadInputTokens": self.usage.cache_read_input_tokens,
            "costUsd": None if self.cost_usd is None else float(self.cost_usd),
        }


@dataclass
class _Entry:
    """One call's usage, waiting to be added to its job."""

    job_id: uuid.UUID
    usage: Usage
    cost: Decimal | None
    done: asyncio.Future[JobUsage]


class UsageLedger:
    """Writes and reads the usage columns of ai_jobs.

    The calls answered while one write is on its way are added together in the next one: a
    single UPDATE for all of them, whatever their number, which also returns each job's totals.
    """

    def __init__(self, pool: asyncpg.Pool, prices: PriceTable) -> None:
        self.pool = pool
        self.prices = prices
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Entry] = []
        self._writer: asyncio.Task[None] | None = None
        # Set when an entry arrives: the writer, holding its connection a moment, goes on.
        self._arrived = asyncio.Event()
        self._closing = False

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued and let the connection go, without lingering for more. For
        a worker that has stopped its jobs."""
        self._closing = True
        self._arrived.set()
        writer = self._writer
        if writer is not None and not writer.done():
            await asyncio.wait([writer], timeout=timeout_s)

    def meter(self, job_id: uuid.UUID) -> JobMeter:
        return JobMeter(self, job_id)

    async def add(self, job_id: uuid.UUID, model: str, usage: Usage) -> JobUsage:
        """Add one call's usage and cost to its job; returns the job's totals after it.

        Raises the database's error when it could not be written.
        """
        cost = self.prices.cost(model, usage)
        if cost is None:
            log.warning("model_price_unknown", model=model)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # What an earlier event loop left behind will never be answered there.
            self._loop, self._pending, self._writer = loop, [], None
            self._arrived = asyncio.Event()
        entry = _Entry(job_id, usage, cost, loop.create_future())
        self._pending.append(entry)
        self._arrived.set()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_all(), name="usage-ledger")
        return await entry.done

    async def _write_all(self) -> None:
        """Writes while there are entries, on one connection while they follow each other
        (and for LINGER_S after, for more)."""
        while self._pending:
            try:
                async with self.pool.acquire() as conn:
                    while await self._more():
                        entries, self._pending = self._pending, []
                        try:
                            totals = await self._write(conn, entries)
                        except Exception as exc:
                            _fail(entries, exc)
                            # The connection goes back (replaced by the pool when it broke).
                            raise _WriteFailed from exc
                        except BaseException:
                            for entry in entries:
                                entry.done.cancel()
                            raise
                        for entry in entries:
                            if not entry.done.done():
                                entry.done.set_result(totals.get(entry.job_id, _NOT_FOUND))
            except _WriteFailed:
                continue
            except Exception as exc:
                # No connection to be had: what waits fails, as it would have on its own.
                entries, self._pending = self._pending, []
                _fail(entries, exc)

    async def _more(self) -> bool:
        """Whether entries wait, waiting up to LINGER_S for some (not once closing)."""
        if not self._pending and not self._closing:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER_S):
                    await self._arrived.wait()
        return bool(self._pending)

    @staticmethod
    async def _write(conn: Connection, entries: list[_Entry]) -> dict[uuid.UUID, JobUsage]:
        # One row per job, in id order: an UPDATE joins each row once, and two writers lock
        # rows in the same order.
        sums: dict[uuid.UUID, tuple[Usage, Decimal | None]] = {}
        for entry in entries:
            usage, cost = sums.get(entry.job_id, (Usage(), Decimal(0)))
            usage.add(entry.usage)
            sums[entry.job_id] = (
                usage,
                None if cost is None or entry.cost is None else cost + entry.cost,
            )
        ids = sorted(sums)
        columns = [sums[i] for i in ids]
        args = (
            ids,
            [u.calls for u, _ in columns],
            [u.input_tokens for u, _ in columns],
            [u.output_tokens for u, _ in columns],
            [u.cache_read_input_tokens for u, _ in columns],
            [u.cache_creation_input_tokens for u, _ in columns],
            [c for _, c in columns],
        )
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                rows = await conn.fetch(Q.add_usage, *args)
                break
            except asyncpg.DeadlockDetectedError:
                # Another statement locked some of these rows in another order (a lease
                # renewal): nothing was written, and the next try usually passes.
                if attempt == _DEADLOCK_RETRIES:
                    raise
        return {row["id"]: _job_usage(row) for row in rows}

    async def totals(self, job_id: uuid.UUID) -> JobUsage:
        row = await self.pool.fetchrow(Q.job_usage, job_id)
        if row is None:
            return JobUsage(Usage(), Decimal(0))
        return _job_usage(row)


_DEADLOCK_RETRIES = 2
# The writer keeps its connection this long after its last write, for the next calls'
# usage: under load it keeps coming, and each write would otherwise queue again for a
# connection of the pool behind everything else the jobs do.
LINGER_S = 1.0


class _WriteFailed(Exception):
    """A write failed; its entries have been told so."""


def _fail(entries: list[_Entry], exc: Exception) -> None:
    for entry in entries:
        if not entry.done.done():
            entry.done.set_exception(exc)


# What the totals of a job that is gone (deleted) read as.
_NOT_FOUND = JobUsage(Usage(), Decimal(0))


def _job_usage(row: asyncpg.Record) -> JobUsage:
    return JobUsage(
        Usage(
            calls=row["usage_calls"],
            input_tokens=row["usage_input_tokens"],
            output_tokens=row["usage_output_tokens"],
            cache_creation_input_tokens=row["usage_cache_write_tokens"],
            cache_read_input_tokens=row["usage_cache_read_tokens"],
        ),
        row["cost_usd"],
    )


class JobMeter:
    """The meter of one job: records each call on the job's row as it is answered, and keeps
    the job's totals as the last write returned them."""

    def __init__(self, ledger: UsageLedger, job_id: uuid.UUID) -> None:
        self._ledger = ledger
        self._job_id = job_id
        self.totals: JobUsage | None = None

    async def record(self, model: str, usage: Usage) -> None:
        if usage.calls == 0:
            return
        try:
            totals = await self._ledger.add(self._job_id, model, usage)
        except _DB_ERRORS as exc:
            # The answer is worth more than its bookkeeping: the job goes on, and says so.
            log.warning("usage_not_recorded", error=str(exc), model=model, calls=usage.calls)
            self.totals = None
            return
        # Writes complete in order: of this job's calls, the last recorded has the totals.
        self.totals = totals
