"""Forward-only migrations: numbered files in sql/, each applied once, in order."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from service.db.pool import Connection
from service.db.queries import Queries
from service.logs import get_logger

log = get_logger(__name__)
Q = Queries("service.db", "lockdown.sql")

# Any constant shared by every process of aijobs: one migrator at a time per database.
MIGRATION_LOCK_ID = 0x61696A6F6273  # "aijobs"
_FILENAME = re.compile(r"^(\d+)_([\w-]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_migrations_dir() -> Path:
    """sql/ beside the package in a checkout; inside the package when installed."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "sql", here / "sql", Path.cwd() / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no sql/ migrations directory found")


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or default_migrations_dir()
    migrations: list[Migration] = []
    for path in sorted(directory.iterdir()):
        match = _FILENAME.match(path.name)
        if not match:
            continue
        migrations.append(
            Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8"))
        )
    versions = [m.version for m in migrations]
    if len(versions) != len(set(versions)):
        raise ValueError(f"two migrations share a version number in {directory}")
    return sorted(migrations, key=lambda m: m.version)


# The lock is taken before this runs: two processes creating it at once would collide.
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS aijobs_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[int]:
    """Apply every migration not yet applied; return the versions applied now.

    Each migration is applied in a transaction of its own that first takes a transaction
    advisory lock, then checks whether another process applied it meanwhile: processes
    starting at once apply each file exactly once, and nothing outlives a transaction, so
    this is safe through a transaction-mode connection pooler too.
    """
    migrations = load_migrations(directory)
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        async with locked_down(conn):
            await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, checksum FROM aijobs_migrations")
    applied = {r["version"]: r["checksum"] for r in rows}
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                log.warning(
                    "migration_changed_after_apply",
                    version=migration.version,
                    name=migration.name,
                )
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            if await conn.fetchval(
                "SELECT true FROM aijobs_migrations WHERE version = $1", migration.version
            ):
                continue
            async with locked_down(conn):
                await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO aijobs_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        log.info("migration_applied", version=migration.version, name=migration.name)
        applied_now.append(migration.version)
    return applied_now


def _default_grant(row: asyncpg.Record, grant: bool) -> str:
    scope = f" IN SCHEMA {row['schema']}" if row["schema"] else ""
    what = f"{row['privilege']} ON {row['objects']}"
    if grant:
        option = " WITH GRANT OPTION" if row["grantable"] else ""
        return f"ALTER DEFAULT PRIVILEGES{scope} GRANT {what} TO {row['grantee']}{option}"
    return f"ALTER DEFAULT PRIVILEGES{scope} REVOKE {what} FROM {row['grantee']}"


@contextlib.asynccontextmanager
async def locked_down(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Run DDL (inside a transaction) so that what it creates is closed to everyone but its
    owner, unless the DDL itself grants more.

    The owner's default privileges that would give PUBLIC, anon or authenticated something
    (Supabase's grant ALL on tables, sequences and functions in schema public; Postgres'
    EXECUTE for PUBLIC on functions) are revoked while it runs, and restored after, in the
    same transaction: the owner's other objects keep them. Every table it creates gets row
    level security, every view security_invoker.
    """
    opened = await conn.fetch(Q.open_default_grants)
    before = await conn.fetchval(Q.owned_relations)
    for row in opened:
        await conn.execute(_default_grant(row, grant=False))
    yield
    for row in opened:
        await conn.execute(_default_grant(row, grant=True))
    for rel in await conn.fetch(Q.new_relations, before):
        if rel["is_view"] and not rel["security_invoker"]:
            await conn.execute(f"ALTER VIEW {rel['name']} SET (security_invoker = true)")
        elif not rel["is_view"] and not rel["relrowsecurity"]:
            await conn.execute(f"ALTER TABLE {rel['name']} ENABLE ROW LEVEL SECURITY")


async def pending_migrations(conn: Connection, directory: Path | None = None) -> list[int]:
    """Versions present in sql/ but not applied to this database."""
    migrations = load_migrations(directory)
    exists = await conn.fetchval("SELECT to_regclass('aijobs_migrations') IS NOT NULL")
    applied: set[int] = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM aijobs_migrations")}
    return [m.version for m in migrations if m.version not in applied]
