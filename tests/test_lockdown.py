"""Deployed where the database has other clients, with an owner that is not a superuser.

On a Supabase-shaped database (tests/supabase.py) the migrations run as its `postgres`-like
owner, and then every table, view, sequence and function they created (read from the
catalog: whatever a later migration adds is covered too) is tried as `anon` and as
`authenticated`, the roles its Data API uses: all is refused but `authenticated` reading its
own jobs and their events. On plain Postgres, a database owner with no other rights migrates,
and the API refuses to start, naming the GRANT, until it may act as `authenticated`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.db.migrations import migrate
from service.db.pool import connect, create_pool
from service.entities.store import EntityStore
from service.jobs.store import JobStore, UserScopeUnavailable
from tests.conftest import TEST_JWT_SECRET, auth_headers, make_settings
from tests.pg import DatabaseFactory
from tests.supabase import OWNER, as_user, create_database, ensure_role
from tests.test_api_entities import error_of
from tests.test_api_jobs import make_mapping

# What `authenticated` is meant to reach: its own rows of these (the policies decide which),
# and the function the policies call.
USER_READS = {"ai_jobs", "ai_job_events"}
USER_FUNCTIONS = {"aijobs_request_user()"}


@pytest.fixture
async def supabase(databases: DatabaseFactory) -> AsyncIterator[str]:
    """A migrated Supabase-shaped database; its DSN as the owner."""
    name = await create_database(databases)
    dsn = as_user(databases.dsn(name), OWNER)
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield dsn
    await databases.drop(name)


@dataclass(frozen=True)
class Attempt:
    target: str  # the object, as the catalog names it
    statement: str  # what was tried (SQL), or "EXECUTE" for a trigger function's privilege


async def _attempts(admin: asyncpg.Connection) -> list[Attempt]:
    """Every way to read or write every object OWNER owns (which the migrations made)."""
    attempts: list[Attempt] = []
    relations = await admin.fetch(
        """SELECT c.oid::regclass::text AS name, c.relkind,
                  (SELECT quote_ident(a.attname) FROM pg_attribute AS a
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                     AND a.attidentity = '' AND a.attgenerated = ''
                   ORDER BY a.attnum LIMIT 1) AS column
           FROM pg_class AS c
           WHERE c.relowner = $1::text::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
           ORDER BY 1""",
        OWNER,
    )
    for rel in relations:
        name, column = rel["name"], rel["column"]
        if rel["relkind"] in ("S", b"S"):
            statements = [
                f"SELECT last_value FROM {name}",
                f"SELECT nextval('{name}')",
                f"SELECT setval('{name}', 1000)",
            ]
        else:
            statements = [
                f"SELECT * FROM {name} LIMIT 1",
                f"INSERT INTO {name} DEFAULT VALUES",
                f"UPDATE {name} SET {column} = {column}",
                f"DELETE FROM {name}",
            ]
            if rel["relkind"] in ("r", b"r", "p", b"p"):
                statements.append(f"TRUNCATE {name}")
        attempts += [Attempt(name, s) for s in statements]
    functions = await admin.fetch(
        """SELECT p.oid::regprocedure::text AS signature,
                  p.prorettype = 'trigger'::regtype AS is_trigger,
                  format('SELECT %s(%s)', p.oid::regproc,
                         (SELECT string_agg('NULL::' || format_type(t, NULL), ', ')
                          FROM unnest(p.proargtypes) AS t)) AS call
           FROM pg_proc AS p
           WHERE p.proowner = $1::text::regrole
           ORDER BY 1""",
        OWNER,
    )
    for fn in functions:
        # A trigger function cannot be called directly: its privilege is what is checked.
        attempts.append(Attempt(fn["signature"], "EXECUTE" if fn["is_trigger"] else fn["call"]))
    return attempts


async def _try(
    conn: asyncpg.Connection, admin: asyncpg.Connection, role: str, user: str, attempt: Attempt
) -> bool:
    """Whether `role` (with `user`'s JWT claims) got past the privilege checks; nothing it
    did is kept."""
    if attempt.statement == "EXECUTE":
        allowed: bool = await admin.fetchval(
            "SELECT has_function_privilege($1, $2::regprocedure, 'EXECUTE')",
            role,
            attempt.target,
        )
        return allowed
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(f"SET LOCAL ROLE {role}")
        claims = orjson.dumps({"sub": user, "role": role}).decode()
        await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
        await conn.execute(attempt.statement)
    except (
        asyncpg.InsufficientPrivilegeError,
        # Impossible on this object whatever the rights (a view that cannot be written).
        asyncpg.FeatureNotSupportedError,
        asyncpg.ObjectNotInPrerequisiteStateError,
        asyncpg.WrongObjectTypeError,
    ):
        return False
    except asyncpg.PostgresError:
        return True  # refused for another reason (a NULL argument, a constraint): it got in
    finally:
        await transaction.rollback()
    return True


async def reachable(dsn: str, role: str, user: str = "someone") -> set[str]:
    """The objects the migrations created that `role` could read, write or run, each with
    what it could do: {"ai_jobs: SELECT * FROM ai_jobs LIMIT 1", ...}."""
    admin = await asyncpg.connect(as_user(dsn, "root"))
    conn = await asyncpg.connect(as_user(dsn, "authenticator"))
    try:
        return {
            f"{a.target}: {a.statement}"
            for a in await _attempts(admin)
            if await _try(conn, admin, role, user, a)
        }
    finally:
        await conn.close()
        await admin.close()


def objects(found: set[str]) -> set[str]:
    return {entry.split(": ", 1)[0] for entry in found}


async def test_anon_reaches_nothing_and_authenticated_only_its_own_jobs(supabase: str) -> None:
    admin = await asyncpg.connect(as_user(supabase, "root"))
    try:
        tables = await admin.fetchval(
            "SELECT count(*) FROM pg_class WHERE relowner = $1::text::regrole AND relkind = 'r'",
            OWNER,
        )
        assert tables >= 10
        # Every table the migrations created has row level security.
        assert not await admin.fetch(
            "SELECT relname FROM pg_class WHERE relowner = $1::text::regrole"
            " AND relkind IN ('r', 'p') AND NOT relrowsecurity",
            OWNER,
        )
        # Every view runs with its reader's rights.
        assert not await admin.fetch(
            "SELECT relname FROM pg_class WHERE relowner = $1::text::regrole AND relkind = 'v'"
            " AND NOT coalesce('security_invoker=true' = ANY (reloptions), false)",
            OWNER,
        )
    finally:
        await admin.close()

    assert await reachable(supabase, "anon") == set()
    assert objects(await reachable(supabase, "authenticated")) == USER_READS | USER_FUNCTIONS
    assert await reachable(supabase, "authenticated") == {
        "ai_jobs: SELECT * FROM ai_jobs LIMIT 1",
        "ai_job_events: SELECT * FROM ai_job_events LIMIT 1",
        "aijobs_request_user(): SELECT aijobs_request_user()",
    }


async def test_authenticated_reads_only_its_own_jobs_and_events(supabase: str) -> None:
    owner = await asyncpg.connect(supabase)
    try:
        await owner.execute(
            "INSERT INTO ai_jobs (job_type, entity_id, created_by, status, error_message,"
            " finished_at) VALUES ('ai-match', 1, 'alice', 'pending', NULL, NULL),"
            " ('ai-coverage', 2, 'bob', 'failed', 'Bob''s secret error', now())"
        )
    finally:
        await owner.close()
    conn = await asyncpg.connect(as_user(supabase, "authenticator"))
    try:
        for user in ("alice", "bob"):
            async with conn.transaction():
                await conn.execute("SET LOCAL ROLE authenticated")
                claims = orjson.dumps({"sub": user, "role": "authenticated"}).decode()
                await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
                jobs = await conn.fetch("SELECT id, created_by FROM ai_jobs")
                assert [j["created_by"] for j in jobs] == [user]
                events = await conn.fetch("SELECT job_id FROM ai_job_events")
                assert events and {e["job_id"] for e in events} == {jobs[0]["id"]}
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch("SELECT * FROM ai_jobs_failures")
    finally:
        await conn.close()


async def test_a_later_migration_is_closed_too_whatever_it_forgets(
    supabase: str, tmp_path: Any
) -> None:
    """The runner, not each migration, keeps new objects closed: a migration that creates a
    table, a view, a sequence and a SECURITY DEFINER function and grants nothing leaves
    anon and authenticated without them, despite Supabase's default privileges."""
    from service.db.migrations import default_migrations_dir

    for path in default_migrations_dir().iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "999_careless.sql").write_text(
        """CREATE TABLE careless_notes (id bigserial PRIMARY KEY, body text);
        CREATE VIEW careless_view AS SELECT * FROM careless_notes;
        CREATE SEQUENCE careless_seq;
        CREATE FUNCTION careless_fn() RETURNS bigint LANGUAGE sql SECURITY DEFINER
          AS $$ SELECT count(*) FROM ai_jobs $$;
        """
    )
    conn = await connect(supabase)
    try:
        assert await migrate(conn, tmp_path) == [999]
        # The owner's default privileges are as they were for its other objects.
        defaults = await conn.fetchval(
            "SELECT count(*) FROM pg_default_acl WHERE defaclrole = current_user::text::regrole"
        )
        assert defaults == 3
    finally:
        await conn.close()
    assert await reachable(supabase, "anon") == set()
    assert objects(await reachable(supabase, "authenticated")) == USER_READS | USER_FUNCTIONS
    admin = await asyncpg.connect(as_user(supabase, "root"))
    try:
        # Created outside a migration, an object still gets Supabase's grants: the runner
        # changed nothing for good.
        owner = await asyncpg.connect(supabase)
        try:
            await owner.execute("CREATE TABLE host_app_table (id int)")
        finally:
            await owner.close()
        assert await admin.fetchval(
            "SELECT has_table_privilege('anon', 'host_app_table', 'SELECT')"
        )
    finally:
        await admin.close()


async def test_the_api_runs_as_the_supabase_owner(supabase: str) -> None:
    settings = make_settings(supabase, None)
    pool = await create_pool(supabase, 1, 4)
    try:
        entities = EntityStore(pool)
        mapping = await make_mapping(entities)
        app = create_app(settings, supabase, pool)
        async with TestClient(TestServer(app)) as client:
            path = f"/api/gap-analysis/ai-match/{mapping['id']}"
            answer = await client.post(path, headers=auth_headers("carol"))
            assert answer.status == 202, await answer.text()
            job_id = (await answer.json())["jobId"]
            mine = await client.get(f"/api/ai-jobs/{job_id}", headers=auth_headers("carol"))
            assert mine.status == 200
            theirs = auth_headers("dave")
            await error_of(await client.get(f"/api/ai-jobs/{job_id}", headers=theirs), 404)
    finally:
        await pool.close()


@pytest.fixture
async def plain_owner(databases: DatabaseFactory) -> AsyncIterator[str]:
    """An empty database owned by a role with no other rights (no superuser, no CREATEROLE,
    not a member of `authenticated`), as a managed Postgres gives one; its DSN as that role."""
    role = f"aijobs_plain_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(databases.admin_dsn)
    try:
        await ensure_role(admin, "authenticated", "NOLOGIN")
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEROLE")
        await admin.execute(f'CREATE DATABASE "{role}" OWNER {role}')
    finally:
        await admin.close()
    yield as_user(databases.dsn(role), role)
    await databases.drop(role)
    admin = await asyncpg.connect(databases.admin_dsn)
    try:
        await admin.execute(f"DROP ROLE {role}")
    finally:
        await admin.close()


async def _aijobs_api(dsn: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "api",
        "--port",
        "0",
        env={**os.environ, "DATABASE_URL": dsn, "AIJOBS_JWT_SECRET": TEST_JWT_SECRET},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_plain_owner_migrates_and_the_api_names_the_missing_grant(
    plain_owner: str, databases: DatabaseFactory
) -> None:
    role = plain_owner.split("://", 1)[1].split("@", 1)[0]
    code, err = await _aijobs_api(plain_owner)
    assert code == 2, err
    assert f'GRANT authenticated TO "{role}";' in err
    pool = await create_pool(plain_owner, 1, 2)
    try:
        # Migrated (by `aijobs api` itself, as that role), and refused as it said.
        assert await pool.fetchval("SELECT count(*) FROM aijobs_migrations") > 0
        with pytest.raises(UserScopeUnavailable, match="GRANT authenticated TO"):
            await JobStore(pool).check_user_scope()
        admin = await asyncpg.connect(databases.admin_dsn)
        try:
            await admin.execute(f"GRANT authenticated TO {role}")
        finally:
            await admin.close()
        await JobStore(pool).check_user_scope()
    finally:
        await pool.close()
