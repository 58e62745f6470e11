"""Live progress: the job event log, and the hub that fans it out to subscribers.

Every change of a job's status or progress is a row of `ai_job_events`, written by a trigger
in the transaction that makes the change, followed by a NOTIFY naming it. An API process
holds one `EventHub`: one LISTEN connection, and any number of in-process subscribers, none of
which holds a database connection. The table is the truth: a wake-up, whether a NOTIFY, a
new subscriber, a reconnect of the listener or the slow poll, reads what is new from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from service.db.queries import Queries
from service.jobs.listener import Listener
from service.jobs.model import FINISHED, Job
from service.jobs.periodic import Periodic
from service.logs import get_logger

log = get_logger(__name__)

Q = Queries("service.jobs", "events.sql")

EVENTS_CHANNEL = "ai_job_events"

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A change of a job: its sequence number in the event log, and the job as it then was."""

    seq: int
    job: Job

    @property
    def terminal(self) -> bool:
        return self.job.status in FINISHED


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A job and the seq of its latest event (None when it has none), read together."""

    job: Job
    seq: int | None


def _events_of(row: Mapping[str, Any] | asyncpg.Record) -> list[JobEvent]:
    """The states of a job after each of its new events.

    Only the latest event's state is the row itself. An earlier one keeps the row's other
    fields with the event's status and progress; what only a finished job has (result,
    error, finish time) it carries only when that event finished the job.
    """
    current = Job.from_record(row)
    records: Sequence[Mapping[str, Any]] = row["events"]
    events: list[JobEvent] = []
    for index, record in enumerate(records):
        if index == len(records) - 1:
            events.append(JobEvent(record["id"], current))
            continue
        finished = record["status"] in FINISHED
        state = dataclasses.replace(
            current,
            status=record["status"],
            progress_message=record["progress_message"],
            progress_current=record["progress_current"],
            progress_total=record["progress_total"],
            updated_at=record["created_at"],
            result=current.result if finished else None,
            error_message=current.error_message if finished else None,
            finished_at=current.finished_at if finished else None,
        )
        events.append(JobEvent(record["id"], state))
    return events


class EventStore:
    """Every query of the event log."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def snapshot(self, job_id: uuid.UUID) -> Snapshot | None:
        """The job and its latest seq, or None when there is no such job."""
        row = await self.pool.fetchrow(Q.job_with_seq, job_id)
        if row is None:
            return None
        return Snapshot(Job.from_record(row), row["event_seq"])

    async def events_after(
        self, job_ids: Sequence[uuid.UUID], after_seqs: Sequence[int]
    ) -> dict[uuid.UUID, list[JobEvent]]:
        """The events of each job after its seq, oldest first; jobs with none are left out."""
        rows = await self.pool.fetch(Q.events_after, list(job_ids), list(after_seqs))
        return {row["id"]: _events_of(row) for row in rows}

    async def prune(self, older_than_s: float) -> int:
        """Delete the events of jobs finished more than `older_than_s` ago; returns how many."""
        deleted: int = await self.pool.fetchval(Q.prune_events, older_than_s)
        return deleted


class Subscription:
    """One reader of one job's events, fed by the hub.

    The buffer is bounded: a reader that falls behind loses the oldest intermediate events
    (each event carries the whole job, so the latest state is never lost), but never an event
    that finished the job. Events arrive in order, each once.
    """

    def __init__(self, job_id: uuid.UUID, after_seq: int, buffer_size: int) -> None:
        self.job_id = job_id
        self.last_seq = after_seq
        self.dropped = 0
        self._buffer: deque[JobEvent] = deque()
        self._buffer_size = max(buffer_size, 1)
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def next(self) -> JobEvent | None:
        """The next event; None once the hub has let go of this subscription."""
        while not self._buffer:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()

    def offer(self, event: JobEvent) -> None:
        if self._closed or event.seq <= self.last_seq:
            return
        self.last_seq = event.seq
        if len(self._buffer) >= self._buffer_size:
            for index, queued in enumerate(self._buffer):
                if not queued.terminal:
                    del self._buffer[index]
                    self.dropped += 1
                    break
        self._buffer.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()


class EventHub:
    """Fans the event log out to the subscribers of this process over one LISTEN connection.

    Wakes on a NOTIFY naming a job that has subscribers, on a new subscriber, after every
    (re)connect of the listener (to read what happened while it was away), and every
    `poll_interval_s` regardless; each wake-up is one query for every job concerned. Each job
    is read from the lowest seq any of its subscribers has had, and each subscriber takes
    only what is newer than its own, so a late subscriber catches up and none sees an event
    twice.
    """

    def __init__(
        self,
        dsn: str,
        store: EventStore,
        *,
        poll_interval_s: float = 5.0,
        buffer_size: int = 16,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.store = store
        self.listener = Listener(
            dsn,
            [EVENTS_CHANNEL],
            self._on_notify,
            on_connect=self._on_connect,
            max_backoff_s=max_backoff_s,
        )
        self._poll_interval_s = poll_interval_s
        self._buffer_size = buffer_size
        self._max_backoff_s = max_backoff_s
        self._subscribers: dict[uuid.UUID, set[Subscription]] = {}
        self._dirty: set[uuid.UUID] = set()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._draining = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    async def start(self, connect_timeout_s: float = 10.0) -> None:
        """Start listening and serving subscribers; returns once the listener is connected,
        or after `connect_timeout_s` (the hub catches up whenever it connects)."""
        self._draining = False
        await self.listener.start()
        self._pump_task = asyncio.create_task(self._pump(), name="event_hub")
        # Also keeps a stop that comes right after start from cancelling the listener
        # halfway through opening its connection.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listener.connected.wait(), connect_timeout_s)

    async def stop(self) -> None:
        self.drain()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None
        await self.listener.stop()

    def drain(self) -> None:
        """End every subscription, and any later one at once: the process is shutting down."""
        self._draining = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.close()
        self._subscribers.clear()

    def subscribe(self, job_id: uuid.UUID, after_seq: int) -> Subscription:
        """Follow a job from the event after `after_seq`. Unsubscribe when done."""
        sub = Subscription(job_id, after_seq, self._buffer_size)
        if self._draining:
            sub.close()
            return sub
        self._subscribers.setdefault(job_id, set()).add(sub)
        self._dirty.add(job_id)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        subs = self._subscribers.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.job_id]

    @contextlib.contextmanager
    def subscription(self, job_id: uuid.UUID, after_seq: int) -> Iterator[Subscription]:
        sub = self.subscribe(job_id, after_seq)
        try:
            yield sub
        finally:
            self.unsubscribe(sub)

    def _on_notify(self, _channel: str, payload: str) -> None:
        if not self._subscribers:
            return
        for entry in payload.split(","):
            try:
                job_id = uuid.UUID(entry.partition(":")[0])
            except ValueError:
                continue
            if job_id in self._subscribers:
                self._dirty.add(job_id)
                self._wake.set()

    def _on_connect(self) -> None:
        # Notifications sent while the listener was away are lost; the log has the events.
        self._dirty.update(self._subscribers)
        self._wake.set()

    async def _pump(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                self._dirty.update(self._subscribers)
            self._wake.clear()
            job_ids = [job_id for job_id in self._dirty if job_id in self._subscribers]
            self._dirty.clear()
            if not job_ids:
                continue
            after = [min(sub.last_seq for sub in self._subscribers[j]) for j in job_ids]
            try:
                events = await self.store.events_after(job_ids, after)
            except Exception as exc:
                # Followers wait on this loop alone: it must outlive any failure.
                if isinstance(exc, _DB_ERRORS):
                    log.warning("event_hub_read_failed", error=str(exc), retry_in_s=backoff)
                else:
                    log.exception("event_hub_read_crashed", retry_in_s=backoff)
                self._dirty.update(job_ids)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                self._wake.set()
                continue
            backoff = 0.1
            for job_id, job_events in events.items():
                for sub in list(self._subscribers.get(job_id, ())):
                    for event in job_events:
                        sub.offer(event)


class EventPruner(Periodic):
    """Deletes the events of jobs finished more than `retention_s` ago."""

    name = "event_pruner"

    def __init__(self, store: EventStore, retention_s: float, interval_s: float = 3600.0) -> None:
        super().__init__(interval_s)
        self._store = store
        self._retention_s = retention_s

    async def tick(self) -> None:
        deleted = await self._store.prune(self._retention_s)
        if deleted:
            log.info("job_events_pruned", deleted=deleted, retention_s=self._retention_s)
