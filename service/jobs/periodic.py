"""A background duty that runs every `interval_s` until stopped."""

from __future__ import annotations

import asyncio
import contextlib

from service.jobs.duties import Backoff, Duty


class Periodic:
    name = "periodic"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.duty = Duty(self.name, interval_s)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def tick(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._stop.clear()
        self.duty.ran()
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        # After a failure the next try comes sooner than the interval: a database that is
        # back should see the duty done within a second or two, not a whole interval later.
        backoff = Backoff(0.2, self.interval_s)
        wait = self.interval_s
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)
            if self._stop.is_set():
                return
            try:
                await self.tick()
            except Exception as exc:
                wait = backoff.next()
                self.duty.failed(exc, retry_in_s=round(wait, 3))
                continue
            self.duty.ran()
            backoff.reset()
            wait = self.interval_s
