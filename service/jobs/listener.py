"""A dedicated LISTEN connection that survives drops.

A pooled connection runs UNLISTEN * when released, so the listener owns a connection of its
own. Postgres drops notifications while a listener is disconnected; after every (re)connect
`on_connect` runs so the owner can catch up from the table. NOTIFY is a hint, never the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import asyncpg

from service.db.pool import connect
from service.logs import get_logger

log = get_logger(__name__)

NotifyHandler = Callable[[str, str], None]


class Listener:
    def __init__(
        self,
        dsn: str,
        channels: Iterable[str],
        on_notify: NotifyHandler,
        on_connect: Callable[[], None] | None = None,
        *,
        health_interval_s: float = 10.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._health_interval_s = health_interval_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    @property
    def backend_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _run(self) -> None:
        backoff = 0.1
        first = True
        while True:
            try:
                await self._connect()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("listener_connect_failed", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            backoff = 0.1
            if not first:
                self.reconnects += 1
                log.info("listener_reconnected", channels=self._channels)
            first = False
            self.connected.set()
            if self._on_connect is not None:
                self._on_connect()
            await self._watch()
            self.connected.clear()
            await self._close()

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncio.wait_for(connect(self._dsn, "aijobs-listener"), timeout=10)
        try:
            conn.add_termination_listener(lambda _c: self._lost.set())
            for channel in self._channels:
                await conn.add_listener(channel, self._dispatch)
        except BaseException:
            # Stopped, or the connection failed, before it was ours to close later.
            conn.terminate()
            raise
        self._conn = conn

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        self._on_notify(channel, str(payload))

    async def _watch(self) -> None:
        """Return when the connection is lost or stops answering."""
        assert self._conn is not None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self._health_interval_s)
            if self._lost.is_set() or self._conn.is_closed():
                log.warning("listener_connection_lost")
                return
            try:
                await asyncio.wait_for(self._conn.fetchval("SELECT 1"), timeout=5)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("listener_health_check_failed")
                return

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)
            if not conn.is_closed():
                conn.terminate()
