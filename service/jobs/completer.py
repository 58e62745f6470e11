"""Completions in groups: one statement and one commit for the jobs that finish together."""

from __future__ import annotations

from service.jobs.duties import Duty
from service.jobs.grouped import Grouped
from service.jobs.model import ApplyEffect, Job
from service.jobs.store import JobStore, LeaseLost

# A bound on one statement: its arrays, its event rows, the time it holds the rows' locks.
MAX_GROUP = 500

_Done = tuple[Job, object, str]  # the job, its result, its final message


class Completer:
    """Records the outcome `completed` of finished jobs.

    A job with an effect is completed in a transaction of its own, the effect with it (see
    `JobStore.complete`): one cannot be written without the other. A job without an effect
    has only its own row to write, so it joins a group: while one group's UPDATE is in flight,
    the completions that arrive meanwhile wait and go together in the next. A lone completion
    goes at once (no timer, no added delay); under load a group is as large as what finished
    during one round trip, and the commits per job fall with it.

    `complete` returns once the row is committed, and raises LeaseLost, as the single path
    does, when the job was no longer ours (reaped, cancelled, claimed again). When the
    group's statement fails, each of its jobs is written again alone, so that a result the
    database refuses fails its own job only.
    """

    def __init__(self, store: JobStore, max_group: int = MAX_GROUP) -> None:
        self._store = store
        self._groups: Grouped[_Done, None] = Grouped(self._write, max_group, name="completer")

    async def complete(
        self, job: Job, result: object, message: str, apply: ApplyEffect | None
    ) -> None:
        if apply is not None:
            await self._store.complete(job, result, message, apply)
        else:
            await self._groups.submit((job, result, message))

    @property
    def duty(self) -> Duty:
        return self._groups.duty

    async def idle(self) -> None:
        """Returns when no group is being written."""
        await self._groups.idle()

    async def _write(self, group: list[_Done]) -> list[Exception | None]:
        completed = await self._store.complete_without_effect(group)
        return [None if job.id in completed else LeaseLost(str(job.id)) for job, _, _ in group]
