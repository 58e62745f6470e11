"""Grouped: concurrent requests for the same kind of statement, sent as one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg

from service.jobs.duties import Duty

T = TypeVar("T")
R = TypeVar("R")


class Grouped(Generic[T, R]):
    """Concurrent calls of `run`, grouped: the items submitted while a group is in flight
    wait, and go together as the next group, at most `max_group` of them. One group at a
    time, so that a busy process makes one statement (one round trip, one commit) for many
    requests instead of one each.

    `run` returns one result per item, in order: a value, or the exception that item gets.
    When `run` raises for a group an error that one item's values can cause (bad data, a
    constraint, a deadlock), each of its items is run again alone, and what that raises is the
    item's answer; any other error (the database away) is every item's answer at once.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R | Exception]]],
        max_group: int = 500,
        name: str = "grouped_writer",
    ) -> None:
        self._run = run
        self._max_group = max_group
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None
        # Overdue when a group has waited past several of these for a statement to finish.
        self.duty = Duty(name, GROUP_INTERVAL_S, idle=lambda: self._running is None)

    async def submit(self, item: T) -> R:
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        if self._running is None:
            self.duty.woke()
            self._running = asyncio.create_task(self._run_groups(), name=self.duty.name)
        return await answer

    async def idle(self) -> None:
        """Returns when no group is in flight."""
        running = self._running
        if running is not None:
            await asyncio.shield(running)

    async def _run_groups(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                try:
                    await self._run_group(group)
                except Exception as exc:
                    # A fault of ours in answering: each waiter still gets an answer, and
                    # the next group goes on.
                    self.duty.failed(exc)
                    for _, answer in group:
                        if not answer.done():
                            answer.set_exception(exc)
        finally:
            self._running = None

    async def _run_group(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in group])
        except asyncio.CancelledError:
            for _, answer in group:
                answer.cancel()
            raise
        except Exception as exc:
            if len(group) > 1 and _may_be_one_items_fault(exc):
                # One item's value may be what the database refused, or the statement may
                # have lost a deadlock: each item again on its own, so that it gets its own
                # answer rather than its neighbours' failure.
                for one in group:
                    await self._run_group([one])
                return
            # The database is away, or the statement as such failed: every item's answer,
            # at once. A value the database refused is its item's fault, not the writer's.
            if _may_be_one_items_fault(exc):
                self.duty.ran()
            else:
                self.duty.failed(exc)
            results = [exc] * len(group)
        else:
            self.duty.ran()
        for (_, answer), result in zip(group, results, strict=True):
            if answer.done():  # its request was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)


GROUP_INTERVAL_S = 10.0

# SQLSTATE classes of errors that one row's values can cause: data exceptions, integrity
# constraint violations, and transaction rollbacks (a deadlock, a serialization failure).
_ITEM_ERROR_CLASSES = ("22", "23", "40")


def _may_be_one_items_fault(exc: Exception) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    return isinstance(sqlstate, str) and sqlstate[:2] in _ITEM_ERROR_CLASSES
