"""A database shaped as Supabase makes one, from what its init scripts create: the roles
`anon`, `authenticated`, `service_role` and `authenticator` (the Data API's login, which
switches to one of the others per request); an owner like Supabase's `postgres`
(NOSUPERUSER, CREATEROLE, BYPASSRLS, member of the three); schema `auth` with `auth.uid()`
reading the request's JWT claims; and the default privileges that give anon, authenticated
and service_role ALL on the tables, sequences and functions the owner creates in `public`.

Roles belong to the whole server and are shared by every test run on it: they are created
when missing and never dropped.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.pg import DatabaseFactory

OWNER = "aijobs_supabase_owner"
API_ROLES = ("anon", "authenticated", "service_role")

_ROLES = {
    "anon": "NOLOGIN NOINHERIT",
    "authenticated": "NOLOGIN NOINHERIT",
    "service_role": "NOLOGIN NOINHERIT BYPASSRLS",
    "authenticator": "LOGIN NOINHERIT",
    OWNER: "LOGIN NOSUPERUSER CREATEROLE BYPASSRLS",
}


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}@{host}:{parts.port}" if parts.port else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def ensure_role(admin: asyncpg.Connection, name: str, attributes: str) -> None:
    """Create the role unless it exists; another run may create it at the same moment."""
    await admin.execute(
        f"""DO $$
        BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
            CREATE ROLE {name} {attributes};
          END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$"""
    )


async def ensure_roles(admin_dsn: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        for name, attributes in _ROLES.items():
            await ensure_role(admin, name, attributes)
        for member in ("authenticator", OWNER):
            for role in API_ROLES:
                await admin.execute(f"GRANT {role} TO {member}")
    finally:
        await admin.close()


async def create_database(databases: DatabaseFactory) -> str:
    """A new, empty, Supabase-shaped database owned by OWNER; returns its name."""
    await ensure_roles(databases.admin_dsn)
    name = f"aijobs_supabase_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(databases.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER {OWNER}')
    finally:
        await admin.close()
    conn = await asyncpg.connect(databases.dsn(name))
    try:
        await conn.execute(
            f"""
            CREATE SCHEMA auth;
            CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
              SELECT nullif(coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
              ), '')::uuid
            $$;
            GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
            GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
            ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
              GRANT ALL ON TABLES TO anon, authenticated, service_role;
            ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
              GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
            ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
              GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
            """
        )
    finally:
        await conn.close()
    return name
