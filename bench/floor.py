"""The floor: the least a Postgres queue in Python can do, written by hand on asyncpg.

One table, a statement-level NOTIFY on insert, a dedicated LISTEN connection, a claim of up to
<free slots> jobs in one `UPDATE ... FOR UPDATE SKIP LOCKED`, one coroutine per job, and one
autocommitted UPDATE per finished job. No leases, no retries, no event log, no logging: what
aijobs and PgQueuer do on top of this is what they cost over the floor.

Completion stays one commit per job, as in aijobs (a job's effect and its completion can then
share a transaction); batching completions, as PgQueuer does, is a different design.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg

SCHEMA = """
CREATE TABLE floor_jobs (
  id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  status  smallint NOT NULL DEFAULT 0,  -- 0 pending, 1 running, 2 done
  payload text
);
CREATE INDEX floor_jobs_pending_idx ON floor_jobs (id) WHERE status = 0;
CREATE FUNCTION floor_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('floor_jobs', '');
  RETURN NULL;
END $$;
CREATE TRIGGER floor_jobs_notify AFTER INSERT ON floor_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION floor_jobs_notify();
"""

CLAIM = """
UPDATE floor_jobs SET status = 1
WHERE id IN (
  SELECT id FROM floor_jobs WHERE status = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING id, payload
"""
COMPLETE = "UPDATE floor_jobs SET status = 2 WHERE id = $1"
ENQUEUE_ONE = "INSERT INTO floor_jobs (payload) VALUES ($1) RETURNING id"
ENQUEUE_RANGE = """
INSERT INTO floor_jobs (payload) SELECT g::text FROM generate_series($1::bigint, $2::bigint) g
"""
REMAINING = "SELECT count(*) FROM floor_jobs WHERE status < 2"

Handler = Callable[[int, str | None], Awaitable[None]]


async def install(conn: asyncpg.Connection) -> None:
    await conn.execute(SCHEMA)


class FloorWorker:
    """Runs `handler` for every job, at most `concurrency` at once."""

    def __init__(self, dsn: str, handler: Handler, concurrency: int, pool_size: int = 10) -> None:
        self._dsn = dsn
        self._handler = handler
        self._concurrency = concurrency
        self._pool_size = pool_size
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: set[asyncio.Task[None]] = set()
        self._pool: asyncpg.Pool | None = None
        self._listen: asyncpg.Connection | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect: the pool and the LISTEN connection."""
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=min(2, self._pool_size), max_size=self._pool_size
        )
        self._listen = await asyncpg.connect(self._dsn)

    async def start(self) -> None:
        if self._pool is None:
            await self.open()
        assert self._listen is not None
        await self._listen.add_listener("floor_jobs", lambda *_: self._wake.set())
        self._loop_task = asyncio.create_task(self._claim_loop())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.wait(self._running)
        if self._listen is not None:
            await self._listen.close()
        if self._pool is not None:
            await self._pool.close()

    async def _claim_loop(self) -> None:
        assert self._pool is not None
        while not self._stopping:
            self._wake.clear()
            free = self._concurrency - len(self._running)
            if free > 0:
                rows = await self._pool.fetch(CLAIM, free)
                for row in rows:
                    task = asyncio.create_task(self._run(row["id"], row["payload"]))
                    self._running.add(task)
                    task.add_done_callback(self._done)
                if len(rows) == free:
                    continue
            # Idle, or full: a NOTIFY, a finished job or the poll brings us back.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._wake.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()

    async def _run(self, job_id: int, payload: str | None) -> None:
        assert self._pool is not None
        await self._handler(job_id, payload)
        await self._pool.execute(COMPLETE, job_id)
