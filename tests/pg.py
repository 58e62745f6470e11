"""The Postgres the tests run against: DATABASE_URL when it answers, else an embedded one.

A run migrates one template database, and every test that needs a database gets a fresh
clone of it (CREATE DATABASE ... TEMPLATE), dropped afterwards: NOTIFY fires only on commit,
so tests that listen cannot hide inside a rolled-back transaction.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service.db.embedded import EmbeddedPostgres
from service.db.migrations import migrate
from service.db.pool import connect

DEFAULT_SERVER = "postgresql://root@127.0.0.1:5432/test"


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


class DatabaseFactory:
    def __init__(self) -> None:
        self.run_id = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.admin_dsn = ""
        self.template = f"aijobs_tpl_{self.run_id}"
        self._counter = itertools.count(1)
        self._embedded: EmbeddedPostgres | None = None

    def start(self) -> None:
        candidate = (
            os.environ.get("AIJOBS_TEST_DATABASE_URL")
            or os.environ.get("DATABASE_URL")
            or DEFAULT_SERVER
        )
        if asyncio.run(_answers(candidate)):
            self.admin_dsn = candidate
        else:
            # Outside root's home: the server runs as another user that must reach it.
            data_dir = Path(tempfile.gettempdir()) / f"aijobs-test-pg-{os.getuid()}"
            self._embedded = EmbeddedPostgres(data_dir)
            self._embedded.start()
            self.admin_dsn = self._embedded.dsn("postgres")
        asyncio.run(self._create_template())

    def stop(self) -> None:
        asyncio.run(self._drop(self.template))
        if self._embedded is not None:
            self._embedded.stop()

    @property
    def server(self) -> str:
        return "embedded" if self._embedded else "DATABASE_URL"

    def dsn(self, database: str) -> str:
        return with_database(self.admin_dsn, database)

    async def create(self) -> str:
        name = f"aijobs_t_{self.run_id}_{next(self._counter)}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    async def create_empty(self) -> str:
        """A database of this run without the migrations (dropped with `drop`)."""
        name = f"aijobs_empty_{self.run_id}_{next(self._counter)}"
        await self._drop(name)
        await self._admin(f'CREATE DATABASE "{name}"')
        return name

    async def drop(self, name: str) -> None:
        await self._drop(name)

    async def _create_template(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.template}"')
        conn = await connect(self.dsn(self.template))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def _drop(self, name: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        """One statement on the server's admin connection (databases are made and dropped
        outside any database of the run)."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()
