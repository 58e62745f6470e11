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
    (set_config(..., true)), advisory locks are transaction locks or released in a finally,
    and LISTEN runs on dedicated connections outside the pool. An open transaction is still
    rolled back by asyncpg before release.
    """


async def create_pool(
    dsn: str,
    min_size: int = 2,
    max_size: int = 10,
    application_name: str = "aijobs",
    *,
    synchronous_commit: str | None = None,
) -> asyncpg.Pool:
    """A pool of connections; `synchronous_commit` sets Postgres' setting of that name for
    every one of them (None: the server's default)."""
    server_settings = {"application_name": application_name}
    if synchronous_commit is not None:
        server_settings["synchronous_commit"] = synchronous_commit
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=_no_reset,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings=server_settings,
    )
    assert pool is not None
    return pool


async def connect(dsn: str, application_name: str = "aijobs") -> asyncpg.Connection:
    """A single connection outside any pool (LISTEN, migrations)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn,
        timeout=CONNECT_TIMEOUT_S,
        server_settings={"application_name": application_name},
    )
    await init_connection(conn)
    return conn
