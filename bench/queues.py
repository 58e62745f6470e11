"""The three queues the benchmarks compare, behind one small interface each.

- `aijobs`: this project, the real `Worker` with its whole lifecycle (leases, heartbeat, reaper,
  registration, pruner, event-log triggers), a no-op processor registered for `ai-match`.
- `pgqueuer`: the nearest Python peer (asyncpg, LISTEN/NOTIFY, SKIP LOCKED), through its
  public API. Installed in the bench environment only; everything that imports it does so
  lazily, so the test suite runs without it.
- `floor`: the hand-written minimum in bench/floor.py.

Each offers: install the schema, enqueue in batches, enqueue one (returning its id), count
what is not finished yet. The worker side is bench/worker_proc.py.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import asyncpg

from bench import floor
from service.db.pool import connect

System = Literal["aijobs", "pgqueuer", "floor"]
SYSTEMS: tuple[System, ...] = ("aijobs", "pgqueuer", "floor")
LABELS: dict[str, str] = {"aijobs": "aijobs", "pgqueuer": "PgQueuer", "floor": "floor"}

AIJOBS_JOB_TYPE = "ai-match"
PGQUEUER_ENTRYPOINT = "noop"

# A plain INSERT is what an operator (or a bulk import) does; the unique "one live job per
# entity" index means each job gets an entity of its own.
_AIJOBS_ENQUEUE_RANGE = """
INSERT INTO ai_jobs (job_type, entity_id)
SELECT $1, g FROM generate_series($2::bigint, $3::bigint) g
"""
_AIJOBS_REMAINING = "SELECT count(*) FROM ai_jobs WHERE status IN ('pending', 'processing')"
_PGQUEUER_REMAINING = "SELECT count(*) FROM pgqueuer"


def pgqueuer_available() -> bool:
    return importlib.util.find_spec("pgqueuer") is not None


def available(system: str) -> bool:
    return system != "pgqueuer" or pgqueuer_available()


def _pgqueuer_queries(conn: asyncpg.Connection) -> Any:
    from pgqueuer import Queries
    from pgqueuer.db import AsyncpgDriver

    return Queries(AsyncpgDriver(conn))


async def install(system: str, dsn: str) -> None:
    """The schema of `system` in a fresh database (aijobs' migrations run already)."""
    if system == "aijobs":
        return
    conn = await asyncpg.connect(dsn)
    try:
        if system == "pgqueuer":
            await _pgqueuer_queries(conn).install()
        else:
            await floor.install(conn)
    finally:
        await conn.close()


async def enqueue_batches(system: str, dsn: str, jobs: int, batch: int) -> None:
    """`jobs` no-op jobs, `batch` per statement."""
    # PgQueuer encodes its own JSON: no codecs of ours on its connection.
    conn = await (asyncpg.connect(dsn) if system == "pgqueuer" else connect(dsn))
    try:
        queries: Any = _pgqueuer_queries(conn) if system == "pgqueuer" else None
        for first in range(1, jobs + 1, batch):
            last = min(first + batch - 1, jobs)
            if system == "aijobs":
                await conn.execute(_AIJOBS_ENQUEUE_RANGE, AIJOBS_JOB_TYPE, first, last)
            elif system == "pgqueuer":
                size = last - first + 1
                await queries.enqueue([PGQUEUER_ENTRYPOINT] * size, [None] * size, [0] * size)
            else:
                await conn.execute(floor.ENQUEUE_RANGE, first, last)
    finally:
        await conn.close()


class Enqueuer:
    """Enqueues single jobs, each in its own transaction, the way a dispatch does."""

    def __init__(self, system: str, conn: asyncpg.Connection) -> None:
        self.system = system
        self._conn = conn
        self._queries: Any = _pgqueuer_queries(conn) if system == "pgqueuer" else None
        self._next_entity = 0

    async def one(self) -> str:
        """Enqueue one job; returns its id once the insert has committed."""
        if self.system == "aijobs":
            from service.jobs.store import Q

            self._next_entity += 1
            row = await self._conn.fetchrow(
                Q.enqueue, AIJOBS_JOB_TYPE, self._next_entity, None, 5, None
            )
            assert row is not None
            return str(row["id"])
        if self.system == "pgqueuer":
            ids = await self._queries.enqueue(PGQUEUER_ENTRYPOINT, None)
            return str(ids[0])
        job_id = await self._conn.fetchval(floor.ENQUEUE_ONE, None)
        return str(job_id)


async def remaining(system: str, conn: asyncpg.Connection) -> int:
    """Jobs not finished yet: pending or running."""
    sql = {"aijobs": _AIJOBS_REMAINING, "pgqueuer": _PGQUEUER_REMAINING}.get(
        system, floor.REMAINING
    )
    count: int = await conn.fetchval(sql)
    return count
