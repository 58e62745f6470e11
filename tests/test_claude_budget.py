"""One rate limit budget for every worker: the bucket's arithmetic, the bucket shared through
Postgres, a 429 that pauses everyone, and three worker processes under the fake's limit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.ai.analyzer import Usage
from service.ai.ratelimit import (
    Bucket,
    BudgetExhausted,
    Limits,
    Policy,
    RateHeaders,
    RateLimiter,
)
from service.config import Settings
from service.db.pool import create_pool
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.runtime import running_worker
from tests.conftest import start_worker_process, wait_for_job, wait_until
from tests.fake_anthropic import Error, FakeAnthropic

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def bucket() -> Bucket:
    infinite = float("inf")
    return Bucket(
        learned=dict.fromkeys(("requests", "input_tokens", "output_tokens")),
        learned_at=None,
        available=dict.fromkeys(("requests", "input_tokens", "output_tokens"), infinite),
        refilled_at=T0,
    )


def one_call(tokens: int = 100, output: int = 50) -> dict[str, float]:
    return {"requests": 1, "input_tokens": tokens, "output_tokens": output}


# -- the arithmetic ---------------------------------------------------------------------


def test_no_sixty_second_window_sees_more_than_the_limit() -> None:
    policy = Policy(Limits(requests=600), share=0.9, burst=0.1)
    b = bucket()
    granted: list[float] = []
    t = 0.0
    while t < 180:  # callers that never stop asking
        now = T0 + timedelta(seconds=t)
        wait = b.take(now, one_call(), policy)
        if wait == 0:
            granted.append(t)
        else:
            t += max(wait, 0.001)  # as a caller sleeps: never less than a moment
    assert granted[:54] == [0.0] * 54  # a tenth of the planned minute goes at once
    window = 60 - 1e-6
    busiest = max(sum(1 for g in granted if start <= g < start + window) for start in granted)
    assert busiest <= 540
    assert len(granted) >= 54 + 8.1 * 180 - 2  # and the budget is used, not wasted


def test_a_call_larger_than_the_bucket_goes_when_it_is_full_and_is_paid_for_after() -> None:
    policy = Policy(Limits(requests=1000, input_tokens=60_000), share=1.0, burst=0.1)
    b = bucket()
    assert b.take(T0, one_call(20_000), policy) == 0
    assert b.available["input_tokens"] == 6_000 - 20_000
    wait = b.take(T0, one_call(100), policy)
    assert wait == pytest.approx((100 + 14_000) / 900)  # 54,000 tokens a minute refill


def test_unused_tokens_go_back_and_the_headers_teach_the_limits() -> None:
    policy = Policy(share=0.9, burst=0.1)
    b = bucket()
    # Nothing configured, nothing learned: the lowest tier's requests limit until told.
    assert b.limit("requests", policy) == pytest.approx(45)
    assert b.limit("input_tokens", policy) is None
    assert b.take(T0, one_call(2_000, 4_096), policy) == 0
    headers = RateHeaders.parse(
        {
            "anthropic-ratelimit-requests-limit": "1000",
            "anthropic-ratelimit-requests-remaining": "999",
            "anthropic-ratelimit-input-tokens-limit": "100000",
            "anthropic-ratelimit-input-tokens-remaining": "98000",
            "anthropic-ratelimit-output-tokens-limit": "20000",
            "anthropic-ratelimit-output-tokens-remaining": "1000",
        }
    )
    assert headers is not None
    b.learn(T0, headers, policy)
    assert b.learned == {"requests": 1000, "input_tokens": 100_000, "output_tokens": 20_000}
    # Learned: a tenth of 90% of each limit at once.
    assert b.available["requests"] == pytest.approx(90)
    assert b.available["input_tokens"] == pytest.approx(9_000)
    # Others spent the organisation's output tokens: of the 1,000 left, 2,000 are the 10%
    # we leave them, so we are 1,000 short.
    assert b.available["output_tokens"] == pytest.approx(-1_000)
    assert b.take(T0, one_call(3_000, 500), policy) > 0
    b.give_back(T0, {"output_tokens": 3_000}, policy)
    assert b.available["output_tokens"] == pytest.approx(1_800)  # no more than the bucket holds
    assert b.take(T0, one_call(3_000, 500), policy) == 0
    b.give_back(T0, {"input_tokens": 1_000, "output_tokens": -200}, policy)
    assert b.available["input_tokens"] == pytest.approx(9_000 - 3_000 + 1_000)
    assert b.available["output_tokens"] == pytest.approx(1_800 - 500 - 200)
    assert RateHeaders.parse({"content-type": "application/json"}) is None


def test_an_endpoint_without_rate_limit_headers_is_not_limited() -> None:
    policy = Policy()
    b = bucket()
    b.learn(T0, None, policy)
    assert all(b.limit(d, policy) is None for d in ("requests", "input_tokens", "output_tokens"))
    assert all(b.take(T0, one_call(), policy) == 0 for _ in range(1000))


def test_a_pause_stops_everyone_and_the_refill_starts_after_it() -> None:
    policy = Policy(Limits(requests=600), share=1.0, burst=0.1)
    b = bucket()
    assert b.take(T0, one_call(), policy) == 0
    b.pause(T0, 10, policy)
    assert b.take(T0 + timedelta(seconds=3), one_call(), policy) == pytest.approx(7)
    assert b.rate_limited == 1
    after = T0 + timedelta(seconds=10)
    assert b.take(after, one_call(), policy) == pytest.approx(1 / 9)
    assert b.take(after + timedelta(seconds=1), one_call(), policy) == 0


# -- the bucket in Postgres ---------------------------------------------------------------


@pytest.fixture
async def two_pools(dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    first, second = await create_pool(dsn, 1, 4), await create_pool(dsn, 1, 4)
    yield first, second
    await first.close()
    await second.close()


async def test_limiters_of_different_processes_share_one_bucket(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool], pool: asyncpg.Pool
) -> None:
    policy = Policy(Limits(requests=60), share=1.0, burst=0.1)
    a, b = (RateLimiter(p, policy, max_wait_s=30) for p in two_pools)
    await asyncio.gather(*(a.acquire("m", 10, 10) for _ in range(3)))
    await asyncio.gather(*(b.acquire("m", 10, 10) for _ in range(3)))
    started = time.monotonic()
    await b.acquire("m", 10, 10)  # the seventh call of the minute, whoever makes it
    assert time.monotonic() - started >= 1.0  # 54 a minute after the first 6
    row = await pool.fetchrow("SELECT * FROM ai_rate_limits WHERE bucket = 'm'")
    assert row["requests_available"] < 0.2
    impatient = RateLimiter(two_pools[0], policy, max_wait_s=0.5)
    with pytest.raises(BudgetExhausted) as caught:
        await impatient.acquire("m", 10, 10)
    assert caught.value.delay is not None and caught.value.delay > 0.5


async def test_the_calls_of_a_process_get_their_budget_in_the_order_they_asked(
    pool: asyncpg.Pool,
) -> None:
    limiter = RateLimiter(pool, Policy(Limits(requests=600), share=1.0, burst=0.1))
    served: list[int] = []

    async def call(number: int) -> None:
        await limiter.acquire("m", 10, 10)
        served.append(number)

    async with asyncio.TaskGroup() as calls:
        for number in range(70):  # 60 at once, then 9 a second
            calls.create_task(call(number))
    assert served == list(range(70))


async def test_answers_settle_the_shared_bucket(pool: asyncpg.Pool) -> None:
    policy = Policy(Limits(output_tokens=60_000), share=1.0, burst=0.1)
    limiter = RateLimiter(pool, policy)
    reservation = await limiter.acquire("m", 1_000, 6_000)
    row = await pool.fetchrow("SELECT * FROM ai_rate_limits WHERE bucket = 'm'")
    assert row["output_tokens_available"] == pytest.approx(0, abs=50)
    await limiter.answered(reservation, Usage(1, 900, 500, 0, 0), {})
    row = await pool.fetchrow("SELECT * FROM ai_rate_limits WHERE bucket = 'm'")
    assert row["output_tokens_available"] == pytest.approx(5_500, abs=50)
    await limiter.rejected(reservation, 429, {}, 2.0)
    row = await pool.fetchrow("SELECT * FROM ai_rate_limits WHERE bucket = 'm'")
    assert row["output_tokens_available"] <= 0
    assert row["rate_limited"] == 1
    assert row["paused_until"] > row["refilled_at"] - timedelta(seconds=0.01)


@contextlib.asynccontextmanager
async def counting_pool(dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    """A pool, and the statements its connections have run so far, in order."""
    statements: list[str] = []

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    counted = await asyncpg.create_pool(dsn, min_size=1, max_size=4, init=init)
    assert counted is not None
    try:
        yield counted, statements
    finally:
        await counted.close()


async def test_concurrent_calls_of_a_process_share_their_trips_to_the_bucket(
    dsn: str, pool: asyncpg.Pool
) -> None:
    policy = Policy(Limits(requests=60_000, output_tokens=6_000_000), share=1.0, burst=0.1)
    async with counting_pool(dsn) as (counted, statements):
        limiter = RateLimiter(counted, policy)
        started = time.monotonic()
        await limiter.acquire("m", 10, 10)  # the bucket exists
        statements.clear()
        reservations = await asyncio.gather(*(limiter.acquire("m", 10, 1_000) for _ in range(200)))
        await asyncio.gather(
            *(limiter.answered(r, Usage(1, 10, 100, 0, 0), {}) for r in reservations)
        )
        elapsed = time.monotonic() - started
    # 400 changes of the bucket; one at a time, they took a read and a write each.
    assert len([q for q in statements if "ai_rate_limits" in q]) < 100
    row = await pool.fetchrow("SELECT * FROM ai_rate_limits WHERE bucket = 'm'")
    # Every one of them is in the bucket: 201 requests taken, 900 output tokens back each;
    # the bucket refills meanwhile (1,000 requests and 100,000 output tokens a second), so a
    # slow run sees more, never less.
    requests = 6_000 - 201
    assert requests - 20 <= row["requests_available"] <= requests + 20 + 1_000 * elapsed
    tokens = 600_000 - 10 - 200 * 100
    assert tokens - 2_000 <= row["output_tokens_available"] <= tokens + 2_000 + 100_000 * elapsed


async def test_concurrent_processes_lose_none_of_each_others_takes(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool], pool: asyncpg.Pool
) -> None:
    # 600 requests at once, then 90 a second.
    policy = Policy(Limits(requests=6_000), share=1.0, burst=0.1)
    a, b = (RateLimiter(p, policy, max_wait_s=30) for p in two_pools)
    await a.acquire("m", 10, 10)
    started = time.monotonic()
    await asyncio.gather(*(limiter.acquire("m", 10, 10) for _ in range(299) for limiter in (a, b)))
    elapsed = time.monotonic() - started
    row = await pool.fetchrow("SELECT * FROM ai_rate_limits WHERE bucket = 'm'")
    # Both wrote the one row at once, and no write undid the other's: all 599 are taken
    # (a lost write would leave hundreds in the bucket).
    assert row["requests_available"] <= 2 + 90 * elapsed


async def test_a_caller_that_gives_up_takes_nothing(pool: asyncpg.Pool) -> None:
    policy = Policy(Limits(requests=600), share=1.0, burst=0.1)  # 60 at once, 9 a second
    limiter = RateLimiter(pool, policy)
    await asyncio.gather(*(limiter.acquire("m", 10, 10) for _ in range(60)))
    waiting = [asyncio.create_task(limiter.acquire("m", 10, 10)) for _ in range(5)]
    await asyncio.sleep(0.05)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    started = time.monotonic()
    await limiter.acquire("m", 10, 10)  # first in line now: the cancelled took nothing
    assert time.monotonic() - started < 0.5


# -- workers ------------------------------------------------------------------------------


async def make_mappings(entities: EntityStore, count: int) -> list[int]:
    requirement = await entities.create_requirement("R-1", "Records", "Keep records")
    ids = []
    for i in range(count):
        doc = await entities.create_document(f"Doc {i}", f"Records are kept for doc {i}.")
        ids.append((await entities.create_mapping(requirement["id"], doc["id"]))["id"])
    return ids


async def test_a_429_to_one_worker_pauses_the_others(
    dsn: str,
    settings: Settings,
    pool: asyncpg.Pool,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
) -> None:
    mapping_ids = await make_mappings(entities, 6)
    first_pool, second_pool = await create_pool(dsn, 1, 5), await create_pool(dsn, 1, 5)
    try:
        async with running_worker(settings, dsn, first_pool):
            learned = await jobs.enqueue("ai-match", mapping_ids[0])
            assert (await wait_for_job(jobs, learned.id)).status == "completed"
            fake.enqueue(Error(429, retry_after=4))
            limited = await jobs.enqueue("ai-match", mapping_ids[1])
            await fake.wait_for_requests(2, answered=True)
            rejected = fake.requests[1]
            assert rejected.status == 429 and rejected.answered_at is not None

            async def handed_back() -> bool:
                job = await jobs.get(limited.id)
                return job is not None and job.status == "pending"

            await wait_until(handed_back)
        # Another worker, which never saw the 429, takes the next jobs at once.
        async with running_worker(settings, dsn, second_pool):
            others = [await jobs.enqueue("ai-match", m) for m in mapping_ids[2:]]
            done = [await wait_for_job(jobs, j.id, within=20) for j in [limited, *others]]
    finally:
        await first_pool.close()
        await second_pool.close()
    assert {j.status for j in done} == {"completed"}
    later = fake.requests[2:]
    assert len(later) == 5
    assert min(r.received_at for r in later) >= rejected.answered_at + 4 - 0.25
    row = await pool.fetchrow("SELECT rate_limited, paused_until FROM ai_rate_limits")
    assert row["rate_limited"] == 1


async def test_a_stopped_worker_leaves_no_connection_in_use(
    dsn: str, settings: Settings, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping_ids = await make_mappings(entities, 3)
    worker_pool = await create_pool(dsn, 1, 5)
    try:
        async with running_worker(settings, dsn, worker_pool):
            started = [await jobs.enqueue("ai-match", m) for m in mapping_ids]
            done = [await wait_for_job(jobs, j.id) for j in started]
        # The budget's settles and the usage writes went before the worker returned: none of
        # their writers still holds a connection, waiting for more.
        assert worker_pool.get_idle_size() == worker_pool.get_size()
    finally:
        await worker_pool.close()
    assert {j.status for j in done} == {"completed"}
    assert {j.result["usage"]["calls"] for j in done if j.result} == {1}


@pytest.mark.timeout(180)
async def test_three_worker_processes_stay_under_the_organisations_limit(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    fake.rate_limit(900)  # requests per minute, for every client together
    mapping_ids = await make_mappings(entities, 300)
    workers = [await start_worker_process(dsn, fake, 10) for _ in range(3)]
    try:
        queued = [await jobs.enqueue("ai-match", m) for m in mapping_ids]
        done = [await wait_for_job(jobs, j.id, within=120) for j in queued]
    finally:
        for worker in workers:
            worker.signal(signal.SIGTERM)
        for worker in workers:
            assert await worker.wait() == 0
    assert {j.status for j in done} == {"completed"}
    assert fake.rate_limited == 0
    assert fake.count(429) == 0
    # Nothing was configured: the limit was learned from the answers' headers...
    row = await pool.fetchrow("SELECT requests_limit, rate_limited FROM ai_rate_limits")
    assert (row["requests_limit"], row["rate_limited"]) == (900, 0)
    # ...and the calls were paced to it: 5% of 95% of it at once, then 13.5 a second
    # (without the limiter, all 300 would arrive within a second or two).
    arrivals = sorted(r.received_at for r in fake.requests)
    busiest = max(sum(1 for a in arrivals if s <= a < s + 10) for s in arrivals)
    assert busiest <= 5 + 43 + 135 + 5
    assert arrivals[-1] - arrivals[0] > 15
    by_worker = {j.locked_by for j in done}
    assert len(by_worker) == 3


def test_settings_of_the_budget() -> None:
    settings = Settings.from_env(
        {
            "AIJOBS_CLAUDE_RPM": "50",
            "AIJOBS_CLAUDE_ITPM": "30000",
            "AIJOBS_CLAUDE_LIMIT_SHARE": "0.5",
            "AIJOBS_CLAUDE_BURST": "0.2",
            "AIJOBS_CLAUDE_RATE_LIMIT": "off",
        }
    )
    assert (settings.claude_rpm, settings.claude_itpm, settings.claude_otpm) == (50, 30000, None)
    assert (settings.claude_limit_share, settings.claude_burst) == (0.5, 0.2)
    assert settings.claude_rate_limit is False
    assert dataclasses.replace(settings, claude_rate_limit=True).claude_rate_limit
