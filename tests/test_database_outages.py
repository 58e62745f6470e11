"""Runs of hundreds of jobs through two worker processes while the database fails under
them: every worker connection terminated ten times, and Postgres itself stopped (fast) and
crashed (immediate) and started again. No job is lost, none fails, no effect lands twice,
the workers keep claiming and the API answers again, all without a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.db.embedded import EmbeddedPostgres
from service.db.errors import DATABASE_UNAVAILABLE
from service.db.migrations import migrate
from service.db.pool import connect, create_pool
from tests.conftest import WorkerProcess, auth_headers, make_settings, start_worker_process
from tests.fake_anthropic import Delay, FakeAnthropic
from tests.test_reliability import count_match_writes

Client = TestClient[Any, Any]

WORKERS = 2
CONCURRENCY = 20
MODEL_DELAY_S = 0.5
# Every run must drain within this long of the database's return (AIJOBS_LEASE at its
# default of 60 s: a run that waited for leases to run out would take longer).
DRAIN_TARGET_S = 20.0


async def seed_match_jobs(pool: asyncpg.Pool, count: int) -> list[int]:
    """`count` match analyses, one job each; returns the mapping ids."""
    rows = await pool.fetch(
        """
        WITH r AS (INSERT INTO requirements (code, title, description)
                   VALUES ('R', 'Records', 'Keep records') RETURNING id),
             d AS (INSERT INTO documents (title, content)
                   SELECT 'Doc-' || g, 'Records are kept. Doc-' || g
                   FROM generate_series(1, $1) g RETURNING id)
        INSERT INTO requirement_mappings (requirement_id, document_id)
        SELECT r.id, d.id FROM r, d RETURNING id
        """,
        count,
    )
    ids = [r["id"] for r in rows]
    await pool.execute(
        "INSERT INTO ai_jobs (job_type, entity_id, max_attempts)"
        " SELECT 'ai-match', m, 5 FROM unnest($1::bigint[]) m",
        ids,
    )
    return ids


class Run:
    """What the test reads of the queue, tolerating the database away meanwhile."""

    def __init__(self, pool: asyncpg.Pool, jobs: int) -> None:
        self.pool = pool
        self.jobs = jobs

    async def count(self, *statuses: str) -> int | None:
        try:
            n: int = await self.pool.fetchval(
                "SELECT count(*) FROM ai_jobs WHERE status = ANY($1::text[])", list(statuses)
            )
        except DATABASE_UNAVAILABLE:
            return None
        return n

    async def wait_for(self, statuses: tuple[str, ...], at_least: int, within: float) -> None:
        deadline = time.monotonic() + within
        while (await self.count(*statuses) or 0) < at_least:
            assert time.monotonic() < deadline, f"fewer than {at_least} {statuses} in {within} s"
            await asyncio.sleep(0.05)

    async def in_flight(self) -> list[tuple[Any, Any]]:
        """The jobs running now, as (id, started_at): each claim of a job has its own."""
        rows = await self.pool.fetch(
            "SELECT id, started_at FROM ai_jobs WHERE status = 'processing'"
        )
        return [(r["id"], r["started_at"]) for r in rows]

    async def wait_settled(self, claims: list[tuple[Any, Any]], within: float) -> float:
        """Seconds until none of these claims is still running: each job finished, or
        handed back to run again."""
        return await self._wait(
            "SELECT count(*) FROM ai_jobs AS j"
            " JOIN unnest($1::uuid[], $2::timestamptz[]) AS c (id, started_at) ON j.id = c.id"
            " WHERE j.status = 'processing' AND j.started_at = c.started_at",
            [c[0] for c in claims],
            [c[1] for c in claims],
            within=within,
        )

    async def wait_drained(self, within: float) -> float:
        """Seconds until every job has finished."""
        return await self._wait(
            "SELECT count(*) FROM ai_jobs WHERE status NOT IN ('completed', 'failed')",
            within=within,
        )

    async def _wait(self, query: str, *args: Any, within: float) -> float:
        started = time.monotonic()
        while True:
            try:
                left = await self.pool.fetchval(query, *args)
            except DATABASE_UNAVAILABLE:
                left = -1
            if left == 0:
                return time.monotonic() - started
            assert time.monotonic() - started < within, f"{left} jobs left after {within} s"
            await asyncio.sleep(0.05)

    async def outcome(self, mapping_ids: list[int]) -> dict[str, Any]:
        statuses = Counter(r["status"] for r in await self.pool.fetch("SELECT status FROM ai_jobs"))
        writes = Counter(
            r["mapping_id"]
            for r in await self.pool.fetch("SELECT mapping_id FROM test_match_writes")
        )
        return {
            "completed": statuses["completed"],
            "failed": statuses["failed"],
            "lost": self.jobs - statuses["completed"] - statuses["failed"],
            "double": sum(1 for n in writes.values() if n > 1),
            "effects_missing": sum(1 for m in mapping_ids if writes[m] == 0),
        }


async def stop_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait() == 0


def outage_log_problems(workers: list[WorkerProcess]) -> list[dict[str, Any]]:
    """Log lines no expected outage should cause: errors, crashed jobs, tracebacks of ours.
    A library's warning may carry its traceback (asyncpg's pool, failing to reconnect while
    the database is away, logs one with each try)."""
    return [
        line
        for worker in workers
        for line in worker.log_lines()
        if line.get("level") in ("error", "critical")
        or ("exception" in line and "logger" not in line)
    ]


async def test_every_worker_connection_terminated_ten_times(
    dsn: str, pool: asyncpg.Pool, fake: FakeAnthropic
) -> None:
    jobs = 300
    await count_match_writes(pool)
    mapping_ids = await seed_match_jobs(pool, jobs)
    run = Run(pool, jobs)
    fake.default = Delay(MODEL_DELAY_S)
    workers = [await start_worker_process(dsn, fake, CONCURRENCY) for _ in range(WORKERS)]
    try:
        await run.wait_for(("completed",), 40, within=60)
        terminated = 0
        for _ in range(10):
            terminated += await pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE 'aijobs-%'"
            )
            await asyncio.sleep(0.1)
        drain_s = await run.wait_drained(within=60)
        # The workers still claim: new jobs run.
        more = await seed_match_jobs(pool, 10)
        run.jobs += len(more)
        await run.wait_drained(within=30)
    finally:
        await stop_workers(workers)
    outcome = await run.outcome(mapping_ids + more)
    figures = {
        "jobs": jobs,
        "terminated_connections": terminated,
        **outcome,
        "seconds_from_last_cut_to_drained": round(drain_s, 1),
    }
    print("\nterminations figures:", json.dumps(figures))
    assert terminated >= 10 * WORKERS
    assert outcome == {
        "completed": jobs + 10,
        "failed": 0,
        "lost": 0,
        "double": 0,
        "effects_missing": 0,
    }
    assert drain_s < DRAIN_TARGET_S
    assert outage_log_problems(workers) == []


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    """A Postgres of this test's own, to stop and crash."""
    # Outside root's home: the server runs as another user that must reach it.
    with tempfile.TemporaryDirectory(prefix="aijobs-outage-", dir="/tmp") as tmp:
        the_server = EmbeddedPostgres(Path(tmp))
        the_server.start()
        try:
            yield the_server
        finally:
            the_server.stop()


@pytest.fixture
async def server_dsn(server: EmbeddedPostgres) -> AsyncIterator[str]:
    dsn = server.dsn("postgres")
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield dsn


async def api_answers(client: Client, mapping_id: int) -> int:
    try:
        response = await client.get(f"/api/gap-analysis/mappings/{mapping_id}")
    except Exception:
        return 0
    return response.status


async def test_postgres_stopped_and_crashed_under_load(
    server: EmbeddedPostgres, server_dsn: str, fake: FakeAnthropic
) -> None:
    jobs = 500
    pool = await create_pool(server_dsn, 1, 4)
    settings = make_settings(server_dsn, fake.url)
    figures: dict[str, Any] = {"jobs": jobs}
    try:
        await count_match_writes(pool)
        mapping_ids = await seed_match_jobs(pool, jobs)
        run = Run(pool, jobs)
        fake.default = Delay(MODEL_DELAY_S)
        workers = [
            await start_worker_process(server_dsn, fake, CONCURRENCY) for _ in range(WORKERS)
        ]
        async with TestClient(
            TestServer(create_app(settings, server_dsn)), headers=auth_headers()
        ) as api:
            try:
                for mode, after in (("fast", 100), ("immediate", 250)):
                    await run.wait_for(("completed",), after, within=60)
                    in_flight = await run.in_flight()
                    server.stop(mode)  # type: ignore[arg-type]
                    stopped = time.monotonic()
                    assert await api_answers(api, mapping_ids[0]) == 503
                    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - stopped)))
                    server.start()
                    back = time.monotonic()
                    settled = await run.wait_settled(in_flight, within=60)
                    while await api_answers(api, mapping_ids[0]) != 200:
                        assert time.monotonic() - back < 30, "the API did not come back"
                        await asyncio.sleep(0.05)
                    figures[mode] = {
                        "in_flight": len(in_flight),
                        "seconds_to_settle_them": round(settled, 1),
                        "api_back_after_s": round(time.monotonic() - back, 1),
                    }
                drained = await run.wait_drained(within=60)
                figures["seconds_from_last_return_to_drained"] = round(time.monotonic() - back, 1)
            finally:
                await stop_workers(workers)
        outcome = await run.outcome(mapping_ids)
    finally:
        await pool.close()
    figures.update(outcome)
    print("\nrestart figures:", json.dumps(figures))
    assert outcome == {
        "completed": jobs,
        "failed": 0,
        "lost": 0,
        "double": 0,
        "effects_missing": 0,
    }
    assert drained < DRAIN_TARGET_S
    assert figures["fast"]["seconds_to_settle_them"] < DRAIN_TARGET_S
    assert figures["immediate"]["seconds_to_settle_them"] < DRAIN_TARGET_S
    assert outage_log_problems(workers) == []
