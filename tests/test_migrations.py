"""Migrations: each applied once, in order, safe twice and from two processes at once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.db.migrations import load_migrations, migrate, pending_migrations
from service.db.pool import connect
from tests.pg import DatabaseFactory


@pytest.fixture
async def empty_dsn(databases: DatabaseFactory) -> AsyncIterator[str]:
    name = await databases.create_empty()
    yield databases.dsn(name)
    await databases.drop(name)


async def test_migrate_twice_applies_each_file_once(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    try:
        assert await pending_migrations(conn) == [m.version for m in load_migrations()]
        first = await migrate(conn)
        assert first == [m.version for m in load_migrations()]
        assert await migrate(conn) == []
        assert await pending_migrations(conn) == []
        rows = await conn.fetch("SELECT version FROM aijobs_migrations ORDER BY version")
        assert [r["version"] for r in rows] == first
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once(empty_dsn: str) -> None:
    env = {"DATABASE_URL": empty_dsn, "PATH": "/usr/bin:/bin"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "migrate",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Each migration is applied by one of them (in its own transaction, under a transaction
    # lock): together they applied every one, none twice.
    applied: list[int] = []
    for out, _ in outputs:
        said = out.decode().strip()
        if said != "migrations up to date":
            assert said.startswith("applied migrations ["), said
            applied += [int(v) for v in said.removeprefix("applied migrations [")[:-1].split(",")]
    assert sorted(applied) == [m.version for m in load_migrations()]
    conn = await connect(empty_dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM aijobs_migrations")
        assert count == len(load_migrations())
    finally:
        await conn.close()


async def test_schema_constraints(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("INSERT INTO ai_jobs (job_type, entity_id) VALUES ('ai-nope', 1)")
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO ai_jobs (job_type, entity_id, status) VALUES ('ai-match', 1, 'done')"
        )
    # processing without a lease is not a state a job can be in
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO ai_jobs (job_type, entity_id, status) VALUES ('ai-match', 1, 'processing')"
        )
    row = await pool.fetchrow(
        "INSERT INTO ai_jobs (job_type, entity_id) VALUES ('ai-match', 1) RETURNING *"
    )
    assert row["status"] == "pending" and row["attempts"] == 0 and row["id"] is not None
    assert (
        await pool.fetchval("SELECT relrowsecurity FROM pg_class WHERE relname = 'ai_jobs'") is True
    )
    roles = await pool.fetch(
        "SELECT rolname FROM pg_roles WHERE rolname IN ('authenticated', 'service_role')"
    )
    assert {r["rolname"] for r in roles} == {"authenticated", "service_role"}


async def test_the_queue_table_is_vacuumed_after_a_fiftieth_of_it_changes(
    pool: asyncpg.Pool,
) -> None:
    options = await pool.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'ai_jobs'")
    assert set(options) >= {
        "autovacuum_vacuum_scale_factor=0.02",
        "autovacuum_vacuum_threshold=1000",
    }


async def test_rls_lets_an_authenticated_user_read_only_their_jobs(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO ai_jobs (job_type, entity_id, created_by) VALUES"
        " ('ai-match', 1, 'alice'), ('ai-match', 2, 'bob')"
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE authenticated")
        await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", '{"sub": "alice"}')
        rows = await conn.fetch("SELECT entity_id FROM ai_jobs")
    assert [r["entity_id"] for r in rows] == [1]


async def test_insert_notifies_once_per_statement(dsn: str, pool: asyncpg.Pool) -> None:
    listener = await connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("ai_jobs_new", lambda *args: received.put_nowait(args[2]))
    try:
        await pool.execute(
            "INSERT INTO ai_jobs (job_type, entity_id) SELECT 'ai-match', g"
            " FROM generate_series(1, 50) g"
        )
        assert await asyncio.wait_for(received.get(), 5) == "ai_jobs_new"
        # One statement, one notification; the next statement, the next one.
        await pool.execute("INSERT INTO ai_jobs (job_type, entity_id) VALUES ('ai-match', 51)")
        assert await asyncio.wait_for(received.get(), 5) == "ai_jobs_new"
        assert received.empty()
    finally:
        await listener.close()
