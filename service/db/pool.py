"""The asyncpg pool and the codecs every connection needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

# A connection of our own or one borrowed from the pool: the effects of jobs accept either.
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection | PoolConnectionProxy


def _encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode json/jsonb to Python values and encode them back, on every connection."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog"
        )


# Our queries are short: past these, the database is taken to be away, and a request
# answers 503 rather than hang.
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release, a round trip per checkout.

    It would undo session state, and we leave none: settings are transaction-local
    (set_config(..., true)), advisory locks are transaction locks, and LISTEN runs on
    dedicated connections outside the pool. An open transaction is still rolled back by
    asyncpg before release. Behind a transaction-mode pooler, the server connection under a
    pooled one changes between transactions anyway.
    """


def _connect_options(application_name: str, pooled: bool) -> dict[str, Any]:
    """What every connection sends when it connects.

    `pooled`: the DSN may be a connection pooler (PgBouncer, Supavisor). It may hand each
    transaction to another server connection, so asyncpg keeps no named prepared statement
    (its statement cache is off: each query is parsed with the unnamed statement, in the same
    message batch as its execution); and a pooler refuses startup parameters other than a few
    such as application_name.
    """
    options: dict[str, Any] = {"server_settings": {"application_name": application_name}}
    if pooled:
        options["statement_cache_size"] = 0
    return options


async def create_pool(
    dsn: str,
    min_size: int = 2,
    max_size: int = 10,
    application_name: str = "aijobs",
    *,
    synchronous_commit: str | None = None,
    pooled: bool = False,
) -> asyncpg.Pool:
    """A pool of connections; `synchronous_commit` sets Postgres' setting of that name for
    every one of them (None: the server's default). `pooled`: `dsn` may be a connection
    pooler (see `_connect_options`); then `synchronous_commit` cannot be sent, and the
    commits follow the server's (or the role's) setting."""
    options = _connect_options(application_name, pooled)
    if synchronous_commit is not None and not pooled:
        options["server_settings"]["synchronous_commit"] = synchronous_commit
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=_no_reset,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        **options,
    )
    assert pool is not None
    return pool


async def connect(
    dsn: str, application_name: str = "aijobs", *, pooled: bool = False
) -> asyncpg.Connection:
    """A single connection outside any pool (LISTEN, migrations, the command line)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, timeout=CONNECT_TIMEOUT_S, **_connect_options(application_name, pooled)
    )
    await init_connection(conn)
    return conn
