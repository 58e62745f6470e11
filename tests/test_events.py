"""The job event log and the hub that fans it out: the trigger, its NOTIFY, RLS, pruning,
and delivery to subscribers across late joins, slow readers and a lost listener."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from service.db.pool import connect
from service.jobs.events import (
    EVENTS_CHANNEL,
    EventHub,
    EventPruner,
    EventStore,
    Idle,
    JobEvent,
    Subscription,
)
from service.jobs.model import Job
from tests.conftest import wait_until
from tests.tcp_proxy import TcpProxy

PAYLOAD_LIMIT = 8000


async def new_job(pool: asyncpg.Pool, entity_id: int = 1) -> uuid.UUID:
    job_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO ai_jobs (job_type, entity_id) VALUES ('ai-map-controls', $1) RETURNING id",
        entity_id,
    )
    return job_id


async def start_processing(pool: asyncpg.Pool, job_id: uuid.UUID) -> None:
    await pool.execute(
        "UPDATE ai_jobs SET status = 'processing', attempts = 1, locked_by = 'test',"
        " locked_until = now() + interval '1 minute', progress_message = 'Starting...'"
        " WHERE id = $1",
        job_id,
    )


async def set_progress(pool: asyncpg.Pool, job_id: uuid.UUID, current: int, total: int) -> None:
    await pool.execute(
        "UPDATE ai_jobs SET progress_message = $2, progress_current = $3, progress_total = $4"
        " WHERE id = $1",
        job_id,
        f"Step {current} of {total}",
        current,
        total,
    )


async def complete(pool: asyncpg.Pool, job_id: uuid.UUID) -> None:
    await pool.execute(
        "UPDATE ai_jobs SET status = 'completed', result = '{\"ok\": true}',"
        " progress_message = 'Done', locked_until = NULL, finished_at = now() WHERE id = $1",
        job_id,
    )


async def event_rows(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM ai_job_events WHERE job_id = $1 ORDER BY id", job_id)


async def read_until_terminal(sub: Subscription, within: float = 15.0) -> list[JobEvent]:
    events: list[JobEvent] = []
    async with asyncio.timeout(within):
        while True:
            event = await sub.next()
            assert event is not None, "the hub let go of the subscription"
            events.append(event)
            if event.terminal:
                return events


class Notifications:
    """Payloads received on the events channel, by a LISTEN connection of the test's own."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._conn: asyncpg.Connection | None = None

    async def start(self, dsn: str) -> None:
        self._conn = await connect(dsn)
        await self._conn.add_listener(EVENTS_CHANNEL, lambda *a: self.queue.put_nowait(a[3]))

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def next(self) -> str:
        return await asyncio.wait_for(self.queue.get(), 10)


@pytest.fixture
async def notifications(dsn: str) -> AsyncIterator[Notifications]:
    listening = Notifications()
    await listening.start(dsn)
    yield listening
    await listening.stop()


@pytest.fixture
async def hub(dsn: str, pool: asyncpg.Pool) -> AsyncIterator[EventHub]:
    # No poll within a test: what arrives came by NOTIFY, subscription or reconnect.
    the_hub = EventHub(dsn, EventStore(pool), poll_interval_s=300, max_backoff_s=0.2)
    await the_hub.start()
    await asyncio.wait_for(the_hub.listener.connected.wait(), 10)
    yield the_hub
    await the_hub.stop()


# -- the trigger ------------------------------------------------------------------------


async def test_a_change_of_status_or_progress_is_an_event_and_nothing_else_is(
    pool: asyncpg.Pool, notifications: Notifications
) -> None:
    job_id = await new_job(pool)
    insert_payload = await notifications.next()
    await start_processing(pool, job_id)
    # A lease renewal, and progress set to what it already is, are no events.
    await pool.execute(
        "UPDATE ai_jobs SET locked_until = now() + interval '2 minutes' WHERE id = $1", job_id
    )
    await pool.execute("UPDATE ai_jobs SET progress_message = 'Starting...' WHERE id = $1", job_id)
    await set_progress(pool, job_id, 1, 2)
    await complete(pool, job_id)
    rows = await event_rows(pool, job_id)
    assert [(r["status"], r["progress_message"], r["progress_current"]) for r in rows] == [
        ("pending", None, None),
        ("processing", "Starting...", None),
        ("processing", "Step 1 of 2", 1),
        ("completed", "Done", 1),
    ]
    # Each payload names the job and the event, and the no-op updates sent none.
    payloads = [insert_payload] + [await notifications.next() for _ in range(3)]
    assert payloads == [f"{job_id}:{r['id']}" for r in rows]


async def test_one_statement_notifies_once_per_hundred_jobs_under_the_payload_limit(
    pool: asyncpg.Pool, notifications: Notifications
) -> None:
    await pool.execute(
        "INSERT INTO ai_jobs (job_type, entity_id) SELECT 'ai-match', g"
        " FROM generate_series(1, 250) g"
    )
    inserted = [await notifications.next() for _ in range(3)]
    await pool.execute("UPDATE ai_jobs SET progress_message = 'Queued behind others'")
    updated = [await notifications.next() for _ in range(3)]
    # A statement that changes nothing the stream shows sends nothing: the next payload
    # is the marker's.
    await pool.execute("UPDATE ai_jobs SET run_after = now()")
    marker = await new_job(pool, 999)
    assert (await notifications.next()).startswith(f"{marker}:")

    for payloads in (inserted, updated):
        assert all(len(p.encode()) < PAYLOAD_LIMIT for p in payloads)
        entries = [entry for p in payloads for entry in p.split(",")]
        assert [len(p.split(",")) for p in payloads] == [100, 100, 50]
        assert len(set(entries)) == 250
    rows = await pool.fetch("SELECT job_id, id FROM ai_job_events WHERE job_id <> $1", marker)
    assert {f"{r['job_id']}:{r['id']}" for r in rows} == {
        entry for p in inserted + updated for entry in p.split(",")
    }


async def test_an_authenticated_user_reads_only_the_events_of_their_jobs(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        "INSERT INTO ai_jobs (job_type, entity_id, created_by) VALUES"
        " ('ai-match', 1, 'alice'), ('ai-match', 2, 'bob')"
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE authenticated")
        await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", '{"sub": "alice"}')
        rows = await conn.fetch(
            "SELECT j.entity_id FROM ai_job_events e JOIN ai_jobs j ON j.id = e.job_id"
        )
        count = await conn.fetchval("SELECT count(*) FROM ai_job_events")
    assert [r["entity_id"] for r in rows] == [1]
    assert count == 1
    assert await pool.fetchval("SELECT count(*) FROM ai_job_events") == 2


async def test_events_of_jobs_finished_before_the_retention_are_pruned(
    pool: asyncpg.Pool,
) -> None:
    old, recent, running = [await new_job(pool, n) for n in (1, 2, 3)]
    for job_id in (old, recent, running):
        await start_processing(pool, job_id)
    for job_id in (old, recent):
        await complete(pool, job_id)
    await pool.execute(
        "UPDATE ai_jobs SET finished_at = now() - interval '8 days' WHERE id = $1", old
    )
    store = EventStore(pool)
    expected = len(await event_rows(pool, old))

    await EventPruner(store, retention_s=7 * 24 * 3600).tick()

    assert await event_rows(pool, old) == []
    assert len(await event_rows(pool, recent)) == 3
    assert len(await event_rows(pool, running)) == 2
    assert expected == 3
    assert await store.prune(7 * 24 * 3600) == 0
    assert await pool.fetchval("SELECT ai_job_events_prune(interval '0 seconds')") == 3


# -- subscriptions ----------------------------------------------------------------------


def an_event(seq: int, status: str) -> JobEvent:
    job = Job.from_record(
        {
            "id": uuid.uuid4(),
            "job_type": "ai-match",
            "entity_id": 1,
            "status": status,
            "progress_message": f"event {seq}",
            "progress_current": None,
            "progress_total": None,
            "result": None,
            "error_message": None,
            "attempts": 1,
            "max_attempts": 5,
            "run_after": None,
            "locked_by": None,
            "locked_until": None,
            "started_at": None,
            "finished_at": None,
            "created_by": None,
            "created_at": None,
            "updated_at": None,
        }
    )
    return JobEvent(seq, job)


async def test_a_full_buffer_refuses_events_and_asks_for_them_again_once_half_read() -> None:
    asked: list[int] = []
    sub = Subscription(
        uuid.uuid4(), after_seq=0, buffer_size=4, on_room=lambda s: asked.append(s.last_seq)
    )
    for seq in range(1, 21):
        sub.offer(an_event(seq, "processing"))
    sub.offer(an_event(3, "processing"))  # an older one: not taken
    # Four taken, the rest refused: nothing is dropped, the reader is behind.
    assert (sub.last_seq, sub.behind, sub.room) == (4, True, 0)
    first = sub.poll()
    assert isinstance(first, JobEvent) and first.seq == 1 and asked == []
    second = sub.poll()
    # Half the buffer read: the hub is asked once to read on after the last event taken.
    assert isinstance(second, JobEvent) and second.seq == 2
    assert asked == [4] and not sub.behind
    for seq in range(5, 8):
        sub.offer(an_event(seq, "processing"))
    sub.offer(an_event(7, "completed"))  # the same seq again: taken once
    sub.close()
    assert [e.seq async for e in _drain(sub)] == [3, 4, 5, 6]
    assert asked == [4]


async def test_a_full_buffer_of_terminal_events_refuses_the_next_until_read() -> None:
    sub = Subscription(uuid.uuid4(), after_seq=0, buffer_size=1)
    sub.offer(an_event(1, "failed"))
    sub.offer(an_event(2, "processing"))
    assert sub.behind
    first = sub.poll()
    assert isinstance(first, JobEvent) and first.seq == 1
    sub.offer(an_event(2, "processing"))
    sub.close()
    assert [e.seq async for e in _drain(sub)] == [2]


async def _drain(sub: Subscription) -> AsyncIterator[JobEvent]:
    while (event := await sub.next()) is not None:
        yield event


# -- the hub ----------------------------------------------------------------------------


async def test_early_and_late_subscribers_each_get_every_event_once_in_order(
    hub: EventHub, pool: asyncpg.Pool
) -> None:
    job_id = await new_job(pool)
    early = hub.subscribe(job_id, after_seq=0)
    await start_processing(pool, job_id)
    await set_progress(pool, job_id, 1, 3)
    first = [await early.next() for _ in range(3)]
    # Joins late, from the beginning: catches up from the log, alongside the live one.
    late = hub.subscribe(job_id, after_seq=0)
    await set_progress(pool, job_id, 2, 3)
    await set_progress(pool, job_id, 3, 3)
    await complete(pool, job_id)
    early_events = [e for e in first if e is not None] + await read_until_terminal(early)
    late_events = await read_until_terminal(late)

    rows = await event_rows(pool, job_id)
    for events in (early_events, late_events):
        assert [e.seq for e in events] == [r["id"] for r in rows]
        assert [e.job.progress_message for e in events] == [r["progress_message"] for r in rows]
    final = late_events[-1].job
    assert final.status == "completed" and final.result == {"ok": True}
    # An intermediate state carries no result.
    assert all(e.job.result is None for e in late_events[:-1])
    hub.unsubscribe(early)
    hub.unsubscribe(late)
    assert hub.subscriber_count == 0


async def test_one_read_per_wake_up_however_many_subscribers(
    hub: EventHub, pool: asyncpg.Pool
) -> None:
    job_ids = [await new_job(pool, n) for n in range(1, 51)]
    reads: list[int] = []
    events_after = hub.store.events_after

    async def counting(ids: Sequence[uuid.UUID], after: Sequence[int], limit: int) -> Any:
        reads.append(len(ids))
        return await events_after(ids, after, limit)

    hub.store.events_after = counting  # type: ignore[method-assign]
    latest = await pool.fetchval("SELECT max(id) FROM ai_job_events")
    subs = [hub.subscribe(job_id, after_seq=latest) for job_id in job_ids for _ in range(20)]
    await pool.execute(
        "UPDATE ai_jobs SET progress_message = 'All at once' WHERE id = ANY($1)", job_ids
    )
    for sub in subs:
        event = await asyncio.wait_for(sub.next(), 10)
        assert event is not None and event.job.progress_message == "All at once"
    assert len(subs) == 1000
    # One read for the new subscriptions and one for the NOTIFY (a third if the NOTIFY
    # came while the first was under way): never one per subscriber or per job.
    assert len(reads) <= 3
    assert reads[-1] == 50


async def many_steps(
    pool: asyncpg.Pool, job_id: uuid.UUID, first: int, last: int, total: int | None = None
) -> None:
    """One progress event per step, `first` through `last`, all in one transaction."""
    await pool.execute(
        f"""DO $$ BEGIN FOR i IN {first}..{last} LOOP
            UPDATE ai_jobs SET progress_message = 'Step ' || i, progress_current = i,
                progress_total = {total or last} WHERE id = '{job_id}';
        END LOOP; END $$"""
    )


async def test_a_resume_from_hundreds_of_events_ago_gets_every_one_in_order(
    hub: EventHub, pool: asyncpg.Pool
) -> None:
    job_id = await new_job(pool)
    await start_processing(pool, job_id)
    await many_steps(pool, job_id, 1, 600)
    await complete(pool, job_id)
    rows = await event_rows(pool, job_id)
    assert len(rows) == 603

    # From the second event, and from before the first: the whole log after it.
    from_second = hub.subscribe(job_id, after_seq=rows[0]["id"])
    from_start = hub.subscribe(job_id, after_seq=0)
    for sub, expected in ((from_second, rows[1:]), (from_start, rows)):
        events = await read_until_terminal(sub)
        assert [e.seq for e in events] == [r["id"] for r in expected]
        assert [e.job.progress_message for e in events] == [r["progress_message"] for r in expected]
        assert events[-1].job.result == {"ok": True}
        assert all(e.job.result is None for e in events[:-1])
        hub.unsubscribe(sub)


async def test_a_subscriber_that_falls_behind_is_caught_up_from_the_log(
    hub: EventHub, pool: asyncpg.Pool
) -> None:
    job_id = await new_job(pool)
    await start_processing(pool, job_id)
    latest = await pool.fetchval("SELECT max(id) FROM ai_job_events")
    slow = hub.subscribe(job_id, after_seq=latest)
    fast = hub.subscribe(job_id, after_seq=latest)
    fast_events: list[JobEvent] = []
    for step in range(1, 11):
        await many_steps(pool, job_id, step * 50 - 49, step * 50, total=500)
        # The fast reader keeps up, live, while the slow one reads nothing.
        while not fast_events or fast_events[-1].job.progress_current != step * 50:
            event = await asyncio.wait_for(fast.next(), 10)
            assert event is not None
            fast_events.append(event)

    async def slow_is_full() -> bool:
        return slow.behind and slow.room == 0

    # Its buffer holds what it holds (16 events), not the 484 it has not had room for.
    await wait_until(slow_is_full)
    await complete(pool, job_id)
    slow_events = await read_until_terminal(slow)
    fast_events += await read_until_terminal(fast)

    rows = await event_rows(pool, job_id)
    assert len(rows) == 503
    for events in (slow_events, fast_events):
        assert [e.seq for e in events] == [r["id"] for r in rows[2:]]
    assert [e.job.progress_current for e in slow_events[:-1]] == list(range(1, 501))
    hub.unsubscribe(slow)
    hub.unsubscribe(fast)


async def next_item(sub: Subscription) -> JobEvent | Idle | None:
    """What a reader that takes idle wake-ups gets next; None once the hub let go."""
    async with asyncio.timeout(10):
        while (item := sub.poll()) is None:
            if sub.closed:
                return None
            await sub.wait()
    return item


async def test_idle_subscribers_are_woken_once_per_idle_period_by_one_clock(
    hub: EventHub, pool: asyncpg.Pool
) -> None:
    job_id = await new_job(pool)
    latest = await pool.fetchval("SELECT max(id) FROM ai_job_events")
    idle_s = 0.4
    loop = asyncio.get_running_loop()
    started = loop.time()
    watched = hub.subscribe(job_id, after_seq=latest, idle_s=idle_s)
    # Subscribed together, so idle together: every one of them is woken all the same.
    crowd = [hub.subscribe(job_id, after_seq=latest, idle_s=idle_s) for _ in range(2000)]
    plain = hub.subscribe(job_id, after_seq=latest)

    assert await next_item(watched) is Idle.IDLE
    first = loop.time() - started
    assert await next_item(watched) is Idle.IDLE
    second = loop.time() - started
    # 3/4 of the idle period before the first, a whole one between the next ones: checked
    # with room for a late clock, but a wake-up per tick would be too early.
    assert first >= 0.5 * idle_s
    assert second - first >= 0.5 * idle_s
    assert all([await next_item(sub) is Idle.IDLE for sub in crowd])

    # An event comes as soon as it is there, and restarts the count to the next wake-up.
    await set_progress(pool, job_id, 1, 2)
    event = await next_item(watched)
    assert isinstance(event, JobEvent) and event.job.progress_message == "Step 1 of 2"
    after_event = loop.time()
    assert await next_item(watched) is Idle.IDLE
    assert loop.time() - after_event >= 0.5 * idle_s
    # A subscriber that did not ask for idle wake-ups only ever gets events.
    plain_event = await asyncio.wait_for(plain.next(), 10)
    assert plain_event is not None and plain_event.seq == event.seq
    assert plain.poll() is None

    for sub in [watched, plain, *crowd]:
        hub.unsubscribe(sub)
    assert hub.subscriber_count == 0


async def test_events_while_the_listener_is_cut_off_arrive_after_it_reconnects(
    dsn: str, pool: asyncpg.Pool
) -> None:
    proxy = TcpProxy.for_dsn(dsn)
    await proxy.start()
    hub = EventHub(proxy.dsn(dsn), EventStore(pool), poll_interval_s=300, max_backoff_s=0.2)
    await hub.start()
    try:
        await asyncio.wait_for(hub.listener.connected.wait(), 10)
        job_id = await new_job(pool)
        subs = [hub.subscribe(job_id, after_seq=0) for _ in range(5)]
        for sub in subs:
            assert (await asyncio.wait_for(sub.next(), 10)) is not None

        await proxy.cut()
        await wait_for_disconnect(hub)
        # Committed while nobody listens: these notifications are lost for good.
        await start_processing(pool, job_id)
        await set_progress(pool, job_id, 1, 2)
        await set_progress(pool, job_id, 2, 2)
        await complete(pool, job_id)
        await proxy.start()

        rows = await event_rows(pool, job_id)
        for sub in subs:
            events = await read_until_terminal(sub)
            assert [e.seq for e in events] == [r["id"] for r in rows[1:]]
        assert hub.listener.reconnects >= 1
    finally:
        await hub.stop()
        await proxy.stop()


async def wait_for_disconnect(hub: EventHub) -> None:
    async def disconnected() -> bool:
        return not hub.listener.connected.is_set()

    await wait_until(disconnected, within=10)


async def test_draining_ends_every_subscription_and_refuses_new_ones(
    hub: EventHub, pool: asyncpg.Pool
) -> None:
    job_id = await new_job(pool)
    sub = hub.subscribe(job_id, after_seq=10**9)
    hub.drain()
    assert await asyncio.wait_for(sub.next(), 5) is None
    late = hub.subscribe(job_id, after_seq=0)
    assert late.closed and await late.next() is None
    assert hub.subscriber_count == 0
