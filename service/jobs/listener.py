"""A dedicated LISTEN connection that survives drops, and proves that it hears.

A pooled connection runs UNLISTEN * when released, so the listener owns a connection of its
own. Postgres drops notifications while a listener is disconnected; after every (re)connect
`on_connect` runs so the owner can catch up from the table. NOTIFY is a hint, never the truth.

A LISTEN connection can look healthy and hear nothing: through a transaction-mode pooler the
LISTEN runs on whichever server connection the pooler picked, and notifications never come
back. So at connect, and at every health check, the listener sends a NOTIFY of its own on a
channel only it listens to, through `pool` as real notifications are sent, and waits for it.
When it does not arrive the listener says so (`duty.fault`, which /readyz reports) and the
owner runs on its poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable

import asyncpg

from service.db.errors import DATABASE_UNAVAILABLE
from service.db.pool import connect
from service.db.queries import Queries
from service.jobs.duties import Backoff, Duty
from service.logs import get_logger

log = get_logger(__name__)
Q = Queries("service.jobs", "queries.sql")

NotifyHandler = Callable[[str, str], None]

DEAF_HINT = (
    "LISTEN does not receive notifications on this connection, as through a "
    "transaction-mode pooler: set AIJOBS_DIRECT_URL to a direct or session-mode connection "
    "string. Meanwhile work is found by polling only."
)


class Listener:
    def __init__(
        self,
        dsn: str,
        channels: Iterable[str],
        on_notify: NotifyHandler,
        on_connect: Callable[[], None] | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        name: str = "listener",
        health_interval_s: float = 10.0,
        round_trip_timeout_s: float = 5.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._pool = pool
        self._health_interval_s = health_interval_s
        self._round_trip_timeout_s = round_trip_timeout_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        # A channel of this listener's own for its round trips, so no other listener sees them.
        self._check_channel = f"aijobs_listener_check_{uuid.uuid4().hex[:16]}"
        self._check: tuple[str, asyncio.Future[None]] | None = None
        self.duty = Duty(name, health_interval_s)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.round_trips = 0

    @property
    def backend_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    @property
    def hears(self) -> bool:
        """False once a round trip failed, until one succeeds again."""
        return self.duty.fault is None

    async def start(self) -> None:
        self.duty.ran()
        self._task = asyncio.create_task(self._run(), name=self.duty.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _run(self) -> None:
        backoff = Backoff(0.1, self._max_backoff_s)
        first = True
        while True:
            try:
                await self._connect()
            except Exception as exc:
                wait = backoff.next()
                self.duty.failed(exc, retry_in_s=round(wait, 3))
                await asyncio.sleep(wait)
                continue
            backoff.reset()
            if not first:
                self.reconnects += 1
                log.info(f"{self.duty.name}_reconnected", channels=self._channels)
            first = False
            self.connected.set()
            self.duty.ran()
            try:
                if self._on_connect is not None:
                    self._on_connect()
                await self._watch()
            except Exception as exc:
                self.duty.failed(exc)
            finally:
                self.connected.clear()
                await self._close()

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncio.wait_for(connect(self._dsn, "aijobs-listener"), timeout=10)
        try:
            conn.add_termination_listener(lambda _c: self._lost.set())
            for channel in (*self._channels, self._check_channel):
                await conn.add_listener(channel, self._dispatch)
        except BaseException:
            # Stopped, or the connection failed, before it was ours to close later.
            conn.terminate()
            raise
        self._conn = conn

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        if channel == self._check_channel:
            if self._check is not None and self._check[0] == payload:
                self._check[1].set_result(None)
                self._check = None
            return
        self._on_notify(channel, str(payload))

    async def _watch(self) -> None:
        """Return when the connection is lost; raise when it stops answering."""
        assert self._conn is not None
        await self._round_trip()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self._health_interval_s)
            if self._lost.is_set() or self._conn.is_closed():
                log.warning(f"{self.duty.name}_connection_lost")
                return
            # A simple query: no statement kept on a connection a pooler may swap under us.
            await asyncio.wait_for(self._conn.execute("SELECT 1"), timeout=5)
            await self._round_trip()
            self.duty.ran()

    async def _round_trip(self) -> None:
        """NOTIFY ourselves through the pool and wait to hear it."""
        if self._pool is None:
            return
        token = uuid.uuid4().hex
        heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._check = (token, heard)
        try:
            try:
                async with asyncio.timeout(self._round_trip_timeout_s):
                    await self._pool.execute(Q.notify, self._check_channel, token)
            except DATABASE_UNAVAILABLE:
                # The pool cannot reach the database: that says nothing of this connection.
                return
            try:
                async with asyncio.timeout(self._round_trip_timeout_s):
                    await heard
            except TimeoutError:
                if self.duty.fault is None:
                    log.warning(
                        f"{self.duty.name}_hears_nothing",
                        channels=self._channels,
                        waited_s=self._round_trip_timeout_s,
                        hint=DEAF_HINT,
                    )
                self.duty.fault = (
                    f"a NOTIFY sent through the pool did not arrive within "
                    f"{self._round_trip_timeout_s:g} s; set AIJOBS_DIRECT_URL to a direct "
                    "or session-mode connection for LISTEN"
                )
                return
        finally:
            self._check = None
        self.round_trips += 1
        if self.duty.fault is not None:
            log.info(f"{self.duty.name}_hears_again", channels=self._channels)
            self.duty.fault = None

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)
            if not conn.is_closed():
                conn.terminate()
