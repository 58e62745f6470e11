"""Completions in groups: one statement and one commit for the jobs that finish together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.jobs.model import ApplyEffect, Job
from service.jobs.store import JobStore, LeaseLost
from service.logs import get_logger

log = get_logger(__name__)

# A bound on one statement: its arrays, its event rows, the time it holds the rows' locks.
MAX_GROUP = 500


@dataclass(slots=True)
class _Pending:
    job: Job
    result: object
    message: str
    done: asyncio.Future[None]


class Completer:
    """Records the outcome `completed` of finished jobs.

    A job with an effect is completed in a transaction of its own, the effect with it (see
    `JobStore.complete`): one cannot be written without the other. A job without an effect
    has only its own row to write, so it joins a group: while one group's UPDATE is in flight,
    the completions that arrive meanwhile wait and go together in the next. A lone completion
    goes at once (no timer, no added delay); under load a group is as large as what finished
    during one round trip, and the commits per job fall with it.

    `complete` returns once the row is committed, and raises LeaseLost, as the single path
    does, when the job was no longer ours (reaped, cancelled, claimed again).
    """

    def __init__(self, store: JobStore, max_group: int = MAX_GROUP) -> None:
        self._store = store
        self._max_group = max_group
        self._waiting: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def complete(
        self, job: Job, result: object, message: str, apply: ApplyEffect | None
    ) -> None:
        if apply is not None:
            await self._store.complete(job, result, message, apply)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(job, result, message, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_groups(), name="completer")
        await done

    async def idle(self) -> None:
        """Returns when no group is being written."""
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)

    async def _write_groups(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                await self._write(group)
        finally:
            self._writer = None

    async def _write(self, group: list[_Pending]) -> None:
        try:
            completed = await self._store.complete_without_effect(
                [(p.job, p.result, p.message) for p in group]
            )
        except Exception as exc:
            # Each actor handles it as it would its own failed write: the lease runs out and
            # the reaper hands the job back.
            for pending in group:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        for pending in group:
            if pending.done.done():
                continue  # the actor was cancelled while it waited
            if pending.job.id in completed:
                pending.done.set_result(None)
            else:
                pending.done.set_exception(LeaseLost(str(pending.job.id)))
