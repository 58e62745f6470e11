"""Retention: finished jobs (and their events) past a configurable age are deleted."""

from __future__ import annotations

import datetime

from service.db.queries import Queries
from service.jobs.periodic import Periodic
from service.jobs.store import JobStore
from service.logs import get_logger

log = get_logger(__name__)
Q = Queries("service.jobs", "queries.sql")

PRUNE_LOCK_ID = 0x61696A6F6270  # one pruner at a time across all workers
BATCH = 1000


class Pruner(Periodic):
    """Deletes finished jobs older than `retention_s`, a batch per transaction, so that no
    statement holds many row locks for long; one worker at a time does it, by a transaction
    advisory lock each batch takes (nothing outlives a transaction behind a pooler)."""

    name = "pruner"

    def __init__(self, store: JobStore, retention_s: float, interval_s: float) -> None:
        super().__init__(interval_s)
        self._store = store
        self._retention_s = retention_s

    async def tick(self) -> None:
        await self.prune()

    async def prune(self) -> int:
        """Delete what is old now; returns how many jobs were deleted (0 if another worker
        holds the lock)."""
        total = 0
        # Each batch goes on from where the last ended (see prune_finished). A row skipped
        # because it was locked is left for the next prune.
        after: datetime.datetime | None = None
        while True:
            async with self._store.pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(Q.try_prune_lock, PRUNE_LOCK_ID):
                    break
                batch = await conn.fetchrow(Q.prune_finished, self._retention_s, BATCH, after)
            assert batch is not None
            deleted: int = batch["deleted"]
            total += deleted
            if deleted < BATCH:
                break
            after = batch["last_finished_at"]
        if total:
            log.info("jobs_pruned", count=total, retention_s=self._retention_s)
        return total
