"""Behind a transaction-mode connection pooler: Debian's PgBouncer in front of the test
server, as Supabase's pooler on port 6543 is in front of its database. The API and the
worker run their pools through it, their LISTEN connections and migrations on the direct
URL (AIJOBS_DIRECT_URL)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.config import Settings
from service.db.migrations import load_migrations
from service.db.pool import create_pool
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.runtime import create_worker_pool, running_worker
from tests.conftest import auth_headers, make_settings, wait_for_job
from tests.fake_anthropic import Delay, FakeAnthropic
from tests.pg import DatabaseFactory
from tests.pgbouncer import PgBouncer
from tests.test_api_entities import error_of
from tests.test_api_jobs import make_mapping
from tests.test_sse import Stream

Client = TestClient[Any, Any]


async def test_the_fixture_is_a_transaction_pooler(dsn: str, pgbouncer: PgBouncer) -> None:
    """What asyncpg does by default (a named statement kept on the connection) fails
    through it, and so does a setting sent when connecting: the tests below would notice a
    pooler-unsafe change."""
    pooled = pgbouncer.via(dsn)
    first, second = await asyncpg.connect(pooled), await asyncpg.connect(pooled)
    try:
        await first.fetchval("SELECT $1::int", 1)
        # While the other client's transaction holds that server connection, the statement
        # runs on another, which never saw it prepared.
        async with second.transaction():
            await second.execute("SELECT 1")
            with pytest.raises(asyncpg.InvalidSQLStatementNameError):
                await first.fetchval("SELECT $1::int", 1)
    finally:
        await first.close()
        await second.close()
    with pytest.raises(asyncpg.PostgresError, match="synchronous_commit"):
        await asyncpg.connect(pooled, server_settings={"synchronous_commit": "off"})


def test_a_pooler_is_recognised_by_the_direct_url_or_its_port() -> None:
    env = {"DATABASE_URL": "postgresql://u@pooler:5432/db"}
    assert not Settings.from_env(env).pooled
    assert Settings.from_env({**env, "AIJOBS_DIRECT_URL": "postgresql://u@db:5432/db"}).pooled
    assert Settings.from_env({"DATABASE_URL": "postgresql://u@h:6543/postgres"}).pooled
    assert Settings.from_env({"DATABASE_URL": "postgresql://u@h:6432/db"}).pooled
    assert Settings.from_env({**env, "AIJOBS_POOLER": "on"}).pooled
    supabase = {"DATABASE_URL": "postgresql://u@h:6543/x"}
    assert not Settings.from_env({**supabase, "AIJOBS_POOLER": "off"}).pooled


async def test_users_dispatch_follow_and_read_their_jobs_through_the_pooler(
    dsn: str, pgbouncer: PgBouncer, fake: FakeAnthropic
) -> None:
    pooled = pgbouncer.via(dsn)
    # A poll far longer than the test may take: jobs start, and streams move, only when
    # the LISTEN connections hear the NOTIFYs, which a transaction pooler would never pass.
    settings = make_settings(pooled, fake.url, direct_url=dsn, poll_interval_s=60.0)
    assert settings.pooled
    fake.default = Delay(0.05)
    api_pool = await create_pool(pooled, 1, 10, pooled=True)
    worker_pool = await create_worker_pool(settings, pooled)
    entities = EntityStore(api_pool)
    users = [f"pooled-user-{n}" for n in range(4)]
    try:
        app = create_app(settings, pooled, api_pool)
        async with (
            TestClient(TestServer(app)) as client,
            running_worker(settings, pooled, worker_pool) as worker,
        ):
            await asyncio.wait_for(worker.listener.connected.wait(), 10)
            jobs: dict[str, list[str]] = {}
            for user in users:
                mapping = await make_mapping(entities)
                paths = [
                    f"/api/gap-analysis/ai-match/{mapping['id']}",
                    f"/api/requirements/{mapping['requirement_id']}/ai-coverage",
                ]
                answers = await asyncio.gather(
                    *(client.post(p, headers=auth_headers(user)) for p in paths)
                )
                assert [a.status for a in answers] == [202, 202]
                jobs[user] = [(await a.json())["jobId"] for a in answers]

            # One user follows a job to its end on the event stream.
            follower = users[0]
            stream = Stream(
                await client.get(
                    f"/api/ai-jobs/{jobs[follower][0]}/events", headers=auth_headers(follower)
                )
            )
            events = await stream.rest()
            assert events[-1][1]["status"] == "completed"
            assert [seq for seq, _ in events] == sorted({seq for seq, _ in events})

            store = JobStore(api_pool)
            for user, ids in jobs.items():
                for job_id in ids:
                    assert (await wait_for_job(store, job_id, within=30)).status == "completed"
                    mine = await client.get(f"/api/ai-jobs/{job_id}", headers=auth_headers(user))
                    assert mine.status == 200
                    assert (await mine.json())["status"] == "completed"
                    other = users[(users.index(user) + 1) % len(users)]
                    theirs = auth_headers(other)
                    await error_of(await client.get(f"/api/ai-jobs/{job_id}", headers=theirs), 404)
                    await error_of(
                        await client.get(f"/api/ai-jobs/{job_id}/events", headers=theirs), 404
                    )
                listed = await client.get("/api/ai-jobs", headers=auth_headers(user))
                assert sorted(j["id"] for j in await listed.json()) == sorted(ids)
    finally:
        await worker_pool.close()
        await api_pool.close()


async def _migrate(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "migrate",
        env={**os.environ, "AIJOBS_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


@pytest.fixture
async def empty_database(databases: DatabaseFactory) -> AsyncIterator[str]:
    name = f"aijobs_empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(databases.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield databases.dsn(name)
    await databases.drop(name)


@pytest.mark.parametrize("direct", [True, False], ids=["direct-url-set", "pooler-only"])
async def test_six_migrators_at_once_apply_each_migration_once(
    empty_database: str, pgbouncer: PgBouncer, direct: bool
) -> None:
    env = {"DATABASE_URL": pgbouncer.via(empty_database), "AIJOBS_POOLER": "on"}
    if direct:
        env["AIJOBS_DIRECT_URL"] = empty_database
    runs = await asyncio.gather(*(_migrate(env) for _ in range(6)))
    assert [code for code, _ in runs] == [0] * 6, [out for _, out in runs]
    applied = [
        orjson.loads(line)["version"]
        for _, out in runs
        for line in out.splitlines()
        if line.startswith("{") and orjson.loads(line).get("event") == "migration_applied"
    ]
    versions = [m.version for m in load_migrations()]
    assert sorted(applied) == versions
    conn = await asyncpg.connect(empty_database)
    try:
        rows = await conn.fetch("SELECT version FROM aijobs_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == versions


async def test_the_pooler_bench_runs(databases: DatabaseFactory) -> None:
    from bench.pooler import measure

    result = await measure(databases.admin_dsn, jobs=10, runs=1)
    assert result["direct_median_s"] > 0 and result["pgbouncer_median_s"] > 0
