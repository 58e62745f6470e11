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
import enum
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from service.db.queries import Queries
from service.jobs.duties import Backoff, Duty
from service.jobs.listener import Listener
from service.jobs.model import FINISHED, Job
from service.jobs.periodic import Periodic
from service.jobs.text import TEXT_CHANNEL, TextPiece, TextSoFar, decode
from service.logs import get_logger

log = get_logger(__name__)

Q = Queries("service.jobs", "events.sql")

EVENTS_CHANNEL = "ai_job_events"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A change of a job: its sequence number in the event log, and the job as it then was."""

    seq: int
    job: Job

    @property
    def terminal(self) -> bool:
        return self.job.status in FINISHED


@dataclass(frozen=True, slots=True)
class Page:
    """Events of one job read from the log, and the seq of the job's latest event then."""

    events: list[JobEvent]
    latest_seq: int

    @property
    def complete(self) -> bool:
        """Whether the read reached the job's latest event (else there is more to read)."""
        return not self.events or self.events[-1].seq >= self.latest_seq


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A job and the seq of its latest event (None when it has none), read together."""

    job: Job
    seq: int | None


def _events_of(row: Mapping[str, Any] | asyncpg.Record) -> list[JobEvent]:
    """The states of a job after each of the events read.

    Only the job's latest event's state is the row itself. An earlier one keeps the row's
    other fields with the event's status and progress; what only a finished job has (result,
    error, finish time) it carries only when that event finished the job.
    """
    current = Job.from_record(row)
    latest: int = row["event_seq"]
    records: Sequence[Mapping[str, Any]] = row["events"]
    events: list[JobEvent] = []
    for record in records:
        if record["id"] == latest:
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
        self, job_ids: Sequence[uuid.UUID], after_seqs: Sequence[int], limit: int = 256
    ) -> dict[uuid.UUID, Page]:
        """The events of each job after its seq, oldest first, at most `limit` of them per
        job; jobs with none are left out."""
        rows = await self.pool.fetch(Q.events_after, list(job_ids), list(after_seqs), limit)
        return {row["id"]: Page(_events_of(row), row["event_seq"]) for row in rows}

    async def prune(self, older_than_s: float) -> int:
        """Delete the events of jobs finished more than `older_than_s` ago; returns how many."""
        deleted: int = await self.pool.fetchval(Q.prune_events, older_than_s)
        return deleted


class Idle(enum.Enum):
    """What `Subscription.poll` gives a reader that asked for idle wake-ups and has had
    nothing for the hub's idle period."""

    IDLE = "idle"


# A subscription is idle after this many ticks of the hub's idle clock without an event: the
# first wake-up comes after 3/4 to all of the idle period, the next ones every idle period.
IDLE_TICKS = 4
# Idle wake-ups per turn of the event loop. Streams opened together fall idle together: their
# wake-ups (each a keepalive write) are spread over turns, so that an event to another stream
# waits behind a few of them, not behind thousands.
IDLE_BATCH = 16
# Pieces of text a subscription holds for its reader at most; beyond, the oldest go (text is
# ephemeral, and the reader sees the gap in the offsets).
TEXT_BUFFER = 1024


class Subscription:
    """One reader of one job's events, fed by the hub.

    The buffer is bounded, and nothing is ever dropped from it: an event offered to a full
    buffer is refused, and the subscription is `behind`. Once its reader has taken half of
    the buffer, it asks the hub (`on_room`) to read on from the log after the last event it
    took. So a reader that falls behind, or resumes from long ago, gets every event in
    order, each once, and holds at most `buffer_size` of them at a time.

    An API process holds one of these per open event stream, so it keeps only what a waiting
    reader needs: no buffer until an event arrives, no future until the reader waits, and no
    timer of its own (the hub's one idle clock counts its ticks).
    """

    __slots__ = (
        "_buffer",
        "_buffer_size",
        "_closed",
        "_idle_ticks",
        "_on_room",
        "_texts",
        "_waiter",
        "behind",
        "job_id",
        "last_seq",
    )

    def __init__(
        self,
        job_id: uuid.UUID,
        after_seq: int,
        buffer_size: int,
        *,
        idle_wakeups: bool = False,
        on_room: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.job_id = job_id
        # The seq of the last event taken: the log is read on from here.
        self.last_seq = after_seq
        # An event was refused for want of room: the log has more for this reader.
        self.behind = False
        self._on_room = on_room
        self._buffer: list[JobEvent] | None = None
        self._texts: list[TextPiece] | None = None
        self._buffer_size = max(buffer_size, 1)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # Ticks of the hub's idle clock since the last event or idle wake-up; -1: none asked.
        self._idle_ticks = 0 if idle_wakeups else -1

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def room(self) -> int:
        """How many more events the buffer takes."""
        return self._buffer_size - len(self._buffer or ())

    def poll(self) -> JobEvent | TextPiece | Idle | None:
        """The next piece of text if one is buffered, else the next event; else `Idle.IDLE`
        if the subscription has been idle for the hub's idle period; else None (then `wait`,
        unless it is closed)."""
        texts = self._texts
        if texts:
            piece = texts.pop(0)
            if not texts:
                self._texts = None
            if self._idle_ticks > 0:
                self._idle_ticks = 0
            return piece
        buffer = self._buffer
        if buffer:
            event = buffer.pop(0)
            if not buffer:
                self._buffer = None
            if self._idle_ticks > 0:
                self._idle_ticks = 0
            if self.behind and len(buffer) <= self._buffer_size // 2:
                self.behind = False
                if self._on_room is not None and not self._closed:
                    self._on_room(self)
            return event
        if self._idle_ticks >= IDLE_TICKS:
            self._idle_ticks = 0
            return Idle.IDLE
        return None

    def wait(self) -> asyncio.Future[None]:
        """A future that is done once `poll` may have something new, or the hub let go."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def next(self) -> JobEvent | None:
        """The next event, passing over idle wake-ups; None once the hub has let go of this
        subscription."""
        while True:
            item = self.poll()
            if isinstance(item, JobEvent):
                return item
            if item is None:
                if self._closed:
                    return None
                await self.wait()

    def offer(self, event: JobEvent) -> None:
        """Take the event, unless already taken, or the buffer is full (then `behind`).

        The caller offers the events after `last_seq` in order, none left out: the
        subscription cannot tell a gap, since seqs are shared by every job.
        """
        if self._closed or event.seq <= self.last_seq:
            return
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = []
        elif len(buffer) >= self._buffer_size:
            self.behind = True
            return
        self.last_seq = event.seq
        buffer.append(event)
        self._wake()

    def offer_text(self, piece: TextPiece) -> None:
        """Take a piece of the job's text (subscriptions that asked for text only)."""
        if self._closed:
            return
        texts = self._texts
        if texts is None:
            texts = self._texts = []
        elif len(texts) >= TEXT_BUFFER:
            del texts[0]
        texts.append(piece)
        self._wake()

    def tick(self) -> bool:
        """One tick of the hub's idle clock; True when it woke the reader, now idle."""
        if self._idle_ticks < 0 or self._closed:
            return False
        self._idle_ticks += 1
        if self._idle_ticks != IDLE_TICKS:
            return False
        self._wake()
        return True

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class EventHub:
    """Fans the event log out to the subscribers of this process over one LISTEN connection.

    Wakes on a NOTIFY naming a job that has subscribers, on a new subscriber, after every
    (re)connect of the listener (to read what happened while it was away), when a subscriber
    that fell behind has room again, and every `poll_interval_s` regardless; each wake-up is
    one query for every job concerned. Each job is read from the lowest seq any of its
    subscribers with room has had, at most a buffer's worth at a time, and each of them
    takes only what is newer than its own; one with a full buffer is read for once it has
    room. So a late or slow subscriber catches up from the log, and none misses an event or
    sees one twice.

    Subscribers that ask for idle wake-ups (an event stream's keepalives) share one idle
    clock, a task that ticks every subscription `IDLE_TICKS` times per idle period, rather
    than a timer each.
    """

    def __init__(
        self,
        dsn: str,
        store: EventStore,
        *,
        poll_interval_s: float = 5.0,
        buffer_size: int = 16,
        max_backoff_s: float = 5.0,
        texts: TextSoFar | None = None,
    ) -> None:
        self.store = store
        # The text of running jobs heard so far; None: no text is listened to.
        self.texts = texts
        # Subscriptions that take the text of their job as well as its events.
        self._text_subscribers: set[Subscription] = set()
        self.listener = Listener(
            dsn,
            [EVENTS_CHANNEL, *([TEXT_CHANNEL] if texts is not None else [])],
            self._on_notify,
            on_connect=self._on_connect,
            pool=store.pool,
            name="event_listener",
            max_backoff_s=max_backoff_s,
        )
        self.duty = Duty("event_hub", poll_interval_s)
        self._poll_interval_s = poll_interval_s
        self._buffer_size = max(buffer_size, 1)
        self._max_backoff_s = max_backoff_s
        self._subscribers: dict[uuid.UUID, set[Subscription]] = {}
        self._dirty: set[uuid.UUID] = set()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._idle_s: float | None = None
        self._idle_task: asyncio.Task[None] | None = None
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
        for task in (self._pump_task, self._idle_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._pump_task = None
        self._idle_task = None
        self._idle_s = None
        await self.listener.stop()

    def drain(self) -> None:
        """End every subscription, and any later one at once: the process is shutting down."""
        self._draining = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.close()
        self._subscribers.clear()
        self._text_subscribers.clear()

    def subscribe(
        self,
        job_id: uuid.UUID,
        after_seq: int,
        *,
        idle_s: float | None = None,
        text: bool = False,
    ) -> Subscription:
        """Follow a job from the event after `after_seq`. Unsubscribe when done.

        With `idle_s`, the subscription's `poll` also gives `Idle.IDLE` after that long
        without an event (after the shortest `idle_s` any subscriber asked for). With `text`,
        it also gives the job's text as it is heard (`TextPiece`), starting with one piece
        per stream holding the text heard so far.
        """
        sub = Subscription(
            job_id,
            after_seq,
            self._buffer_size,
            idle_wakeups=idle_s is not None,
            on_room=self._on_room,
        )
        if self._draining:
            sub.close()
            return sub
        if idle_s is not None:
            self._start_idle_clock(idle_s)
        if text and self.texts is not None:
            self._text_subscribers.add(sub)
            for piece in self.texts.so_far(job_id):
                sub.offer_text(piece)
        self._subscribers.setdefault(job_id, set()).add(sub)
        self._dirty.add(job_id)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        self._text_subscribers.discard(sub)
        subs = self._subscribers.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.job_id]

    @contextlib.contextmanager
    def subscription(
        self, job_id: uuid.UUID, after_seq: int, *, idle_s: float | None = None
    ) -> Iterator[Subscription]:
        sub = self.subscribe(job_id, after_seq, idle_s=idle_s)
        try:
            yield sub
        finally:
            self.unsubscribe(sub)

    def _start_idle_clock(self, idle_s: float) -> None:
        if self._idle_s is None or idle_s < self._idle_s:
            self._idle_s = idle_s
        if self._idle_task is None:
            self._idle_task = asyncio.create_task(self._idle_clock(), name="event_hub_idle")

    async def _idle_clock(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while self._idle_s is not None:
            # Ticks keep to the clock, however long a tick's batches took.
            next_tick = max(next_tick + self._idle_s / IDLE_TICKS, loop.time())
            await asyncio.sleep(next_tick - loop.time())
            woken = 0
            for sub in [sub for job_subs in self._subscribers.values() for sub in job_subs]:
                if sub.tick():
                    woken += 1
                    if woken % IDLE_BATCH == 0:
                        await asyncio.sleep(0)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == TEXT_CHANNEL:
            self._on_text(payload)
            return
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

    def _on_text(self, payload: str) -> None:
        texts = self.texts
        if texts is None:
            return
        for piece in decode(payload):
            if not texts.add(piece):
                continue  # of an attempt that a newer one has replaced
            for sub in self._subscribers.get(piece.job_id, ()):
                if sub in self._text_subscribers:
                    sub.offer_text(piece)

    def _on_room(self, sub: Subscription) -> None:
        if sub.job_id in self._subscribers:
            self._dirty.add(sub.job_id)
            self._wake.set()

    def _on_connect(self) -> None:
        # Notifications sent while the listener was away are lost; the log has the events.
        self._dirty.update(self._subscribers)
        self._wake.set()

    async def _pump(self) -> None:
        # Followers wait on this loop alone: it must outlive any failure.
        backoff = Backoff(0.1, self._max_backoff_s)
        self.duty.ran()
        while True:
            try:
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                self._dirty.update(self._subscribers)
            self._wake.clear()
            job_ids: list[uuid.UUID] = []
            after: list[int] = []
            for job_id in self._dirty:
                subs = self._subscribers.get(job_id, ())
                # A full subscriber is read for when it has room again; reading from its
                # seq now would only hold back the others.
                seqs = [sub.last_seq for sub in subs if sub.room]
                for sub in subs:
                    if not sub.room:
                        sub.behind = True
                if seqs:
                    job_ids.append(job_id)
                    after.append(min(seqs))
            self._dirty.clear()
            try:
                if job_ids:
                    pages = await self.store.events_after(job_ids, after, self._buffer_size)
                    self._deliver(job_ids, after, pages)
            except Exception as exc:
                wait = backoff.next()
                self.duty.failed(exc, retry_in_s=round(wait, 3))
                self._dirty.update(job_ids)
                await asyncio.sleep(wait)
                self._wake.set()
                continue
            self.duty.ran()
            backoff.reset()

    def _deliver(
        self, job_ids: list[uuid.UUID], after: list[int], pages: Mapping[uuid.UUID, Page]
    ) -> None:
        for job_id, since in zip(job_ids, after, strict=True):
            page = pages.get(job_id)
            if page is None:
                continue
            if self.texts is not None and page.events and page.events[-1].terminal:
                self.texts.drop(job_id)
            for sub in list(self._subscribers.get(job_id, ())):
                # Only a subscriber the read started at or before may take from it:
                # one further behind would see a gap.
                if sub.last_seq < since:
                    continue
                for event in page.events:
                    sub.offer(event)
            if not page.complete:
                self._dirty.add(job_id)
                self._wake.set()


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
