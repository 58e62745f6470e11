"""The model calls of one job (batches of controls, sections of a document) run concurrently,
each result checkpointed on the job row as it arrives.

- At most `parallel` calls of the job are in flight; all of them take their budget from the
  shared rate limiter like any other call.
- Calls come in groups that share a cached prompt prefix (one document section each): the
  first call of a group runs alone, so that the others find the prefix in the prompt cache
  rather than all write it at once.
- A call that fails transiently is tried again alone, up to `retries` times, while the others
  go on; a job would otherwise spend one of its few attempts on every 529 of any of its calls.
  When it still fails, no more calls start, those in flight finish and are checkpointed, and
  the failure ends the attempt: the job's next attempt (backoff, retry-after) runs only the
  calls that are missing, as does an attempt after a crash or a lost lease.
- Progress says which call starts ("Analyzing batch 4 of 8...") and counts finished calls
  ("Analyzed 3 of 8 batches"): with calls in parallel, the bar shows what is done, and a call
  that starts while earlier ones still run says so too ("Analyzing batch 4 of 8... (2 of 8
  done)").

A job of a single call is run as it always was: no checkpoint, and the job retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.ai.ratelimit import BudgetExhausted
from service.jobs.actor import RetryPolicy
from service.jobs.context import JobContext
from service.jobs.model import RetryLater

T = TypeVar("T")

CHECKPOINT_VERSION = 1


def plan_of(*parts: object) -> str:
    """A fingerprint of what a job's calls are asked: a checkpoint made for another plan (the
    document or the catalogue changed since) is not resumed from."""
    text = json.dumps(parts, default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Unit(Generic[T]):
    """One model call: a key unique within the job, and the coroutine that makes it."""

    key: str
    run: Callable[[], Awaitable[T]]


@dataclass(frozen=True)
class Wording:
    singular: str
    plural: str


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a unit's result is written to the checkpoint (JSON) and read back."""

    encode: Callable[[T], Any]
    decode: Callable[[Any], T]


class CallRunner(Generic[T]):
    def __init__(
        self,
        ctx: JobContext,
        plan: str,
        codec: Codec[T],
        wording: Wording,
        *,
        parallel: int,
        retries: int,
        retry_policy: RetryPolicy,
    ) -> None:
        self._ctx = ctx
        self._plan = plan
        self._codec = codec
        self._wording = wording
        self._parallel = max(parallel, 1)
        self._retries = max(retries, 0)
        self._retry_policy = retry_policy
        self._done: dict[str, T] = {}
        self._saved: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self._total = 0
        self._resumed = 0
        self._numbers: dict[str, int] = {}

    @property
    def resumed(self) -> int:
        """How many results came from an earlier attempt's checkpoint."""
        return self._resumed

    async def run(self, groups: Sequence[Sequence[Unit[T]]]) -> dict[str, T]:
        """Every unit's result by key; raises the first failure that retries did not cure."""
        units = [unit for group in groups for unit in group]
        self._total = len(units)
        self._resumed = 0
        if self._total == 1:
            return {units[0].key: await units[0].run()}
        self._resume({unit.key for unit in units})
        self._resumed = len(self._done)
        pending = [[u for u in group if u.key not in self._done] for group in groups]
        if all(unit.key in self._done for unit in units):
            return dict(self._done)
        self._numbers = {unit.key: i for i, unit in enumerate(units, 1)}
        semaphore = asyncio.Semaphore(self._parallel)
        async with asyncio.TaskGroup() as group_tasks:
            for group in pending:
                if group:
                    group_tasks.create_task(self._group(group, semaphore))
        if self._failure is not None:
            raise self._failure
        return dict(self._done)

    def _resume(self, keys: set[str]) -> None:
        saved = self._ctx.job.checkpoint
        if not isinstance(saved, dict):
            return
        if saved.get("version") != CHECKPOINT_VERSION or saved.get("plan") != self._plan:
            return
        for key, value in (saved.get("done") or {}).items():
            if key in keys:
                self._saved[key] = value
                self._done[key] = self._codec.decode(value)
        if self._done:
            self._ctx.log.info("job_resumed_from_checkpoint", calls_done=len(self._done))

    async def _group(self, units: Sequence[Unit[T]], semaphore: asyncio.Semaphore) -> None:
        await self._guarded(units[0], semaphore)
        if self._failure is not None or len(units) == 1:
            return
        async with asyncio.TaskGroup() as tasks:
            for unit in units[1:]:
                tasks.create_task(self._guarded(unit, semaphore))

    async def _guarded(self, unit: Unit[T], semaphore: asyncio.Semaphore) -> None:
        """Run one unit; the first failure is kept, and stops units not yet started."""
        try:
            async with semaphore:
                if self._failure is not None:
                    return
                await self._announce(unit)
                result = await self._attempt(unit)
            await self._record(unit.key, result)
        except Exception as exc:
            if self._failure is None:
                self._failure = exc

    async def _attempt(self, unit: Unit[T]) -> T:
        attempt = 0
        while True:
            try:
                return await unit.run()
            except BudgetExhausted:
                raise  # waiting longer here would hold the worker slot the job should free
            except RetryLater as exc:
                attempt += 1
                if attempt > self._retries or self._failure is not None:
                    raise
                delay = self._retry_policy.delay(attempt, exc.delay)
                self._ctx.log.warning(
                    "call_retry_scheduled",
                    unit=unit.key,
                    reason=exc.reason,
                    delay_s=round(delay, 3),
                    retry=attempt,
                )
                await asyncio.sleep(delay)

    async def _announce(self, unit: Unit[T]) -> None:
        """Announce a call as it starts ("Analyzing batch 2 of 5..."); the count is of
        finished calls."""
        async with self._lock:
            w, number, done = self._wording, self._numbers[unit.key], len(self._done)
            message = f"Analyzing {w.singular} {number} of {self._total}..."
            if done != number - 1:
                # Calls run in parallel: say what the bar counts, so that "batch 3 of 3" beside
                # a bar at 1 of 3 reads as one story.
                message += f" ({done} of {self._total} done)"
            await self._ctx.progress(message, current=done, total=self._total)

    async def _record(self, key: str, result: T) -> None:
        async with self._lock:
            self._done[key] = result
            self._saved[key] = self._codec.encode(result)
            await self._ctx.checkpoint(
                {"version": CHECKPOINT_VERSION, "plan": self._plan, "done": dict(self._saved)}
            )
            done, w = len(self._done), self._wording
            await self._ctx.progress(
                f"Analyzed {done} of {self._total} {w.plural}", current=done, total=self._total
            )
