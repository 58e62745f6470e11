"""Leases: the heartbeat that renews ours, the reaper that returns expired ones."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from service.db.errors import DATABASE_UNAVAILABLE
from service.jobs.periodic import Periodic
from service.jobs.store import JobStore, WorkerInfo
from service.logs import get_logger

log = get_logger(__name__)


class Heartbeat(Periodic):
    """Renews the leases of the jobs this worker is running.

    A job whose lease could not be renewed is no longer ours (reaped, cancelled or finished
    elsewhere): `on_lost` is told so that the actor can stop.
    """

    name = "heartbeat"

    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        lease_s: float,
        interval_s: float,
        running: Callable[[], list[tuple[uuid.UUID, int]]],
        on_lost: Callable[[uuid.UUID], None],
    ) -> None:
        super().__init__(interval_s)
        self._store = store
        self._worker_id = worker_id
        self._lease_s = lease_s
        self._running = running
        self._on_lost = on_lost

    async def tick(self) -> None:
        running = self._running()
        if not running:
            return
        still_ours = await self._store.extend_leases(self._worker_id, running, self._lease_s)
        for job_id, _attempt in running:
            if job_id not in still_ours:
                self._on_lost(job_id)


class Registration(Periodic):
    """Keeps this worker's row in ai_worker_registry: there while it lives, gone when it
    stops cleanly. A killed worker's row goes stale and the reaper removes it."""

    name = "registration"

    def __init__(self, store: JobStore, info: WorkerInfo, interval_s: float) -> None:
        super().__init__(interval_s)
        self._store = store
        self._info = info

    async def start(self) -> None:
        try:
            await self._store.register_worker(self._info)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("worker_registration_failed", error=str(exc))
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        try:
            await self._store.deregister_worker(self._info.id)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("worker_deregistration_failed", error=str(exc))

    async def tick(self) -> None:
        await self._store.register_worker(self._info)


class Reaper(Periodic):
    """Returns jobs whose lease expired to pending, or fails them when out of attempts.

    Any worker may run it; an advisory lock lets one at a time do the work.
    """

    name = "reaper"

    def __init__(
        self,
        store: JobStore,
        interval_s: float,
        on_requeued: Callable[[], None],
        stale_worker_s: float = 600.0,
    ) -> None:
        super().__init__(interval_s)
        self._store = store
        self._on_requeued = on_requeued
        self._stale_worker_s = stale_worker_s

    async def tick(self) -> None:
        removed = await self._store.remove_stale_workers(self._stale_worker_s)
        if removed:
            log.info("stale_workers_removed", count=removed)
        reaped = await self._store.reap_expired()
        for job_id, status in reaped:
            log.warning("job_lease_expired", job_id=str(job_id), new_status=status)
        if any(status == "pending" for _, status in reaped):
            self._on_requeued()
