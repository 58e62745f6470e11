"""A background duty that runs every `interval_s` until stopped."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from service.logs import get_logger

log = get_logger(__name__)


class Periodic:
    name = "periodic"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def tick(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)
            if self._stop.is_set():
                return
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The database is away; the next tick tries again.
                log.warning(f"{self.name}_failed", error=str(exc))
            except Exception:
                log.exception(f"{self.name}_crashed")
