"""ai-map-controls' batches: run several at once under the shared limit, read the document from
the prompt cache after the first, are retried alone, and are checkpointed so that a job that
crashed or failed pays only for the batches it is missing."""

from __future__ import annotations

import dataclasses
import re
import signal
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest

from service.config import Settings
from service.entities.store import EntityStore
from service.jobs.context import JobContext
from service.jobs.store import JobStore, LeaseLost
from service.logs import get_logger
from service.runtime import running_worker
from tests.conftest import (
    DOCUMENT,
    make_settings,
    seed_controls,
    start_worker_process,
    wait_for_job,
    wait_until,
)
from tests.fake_anthropic import Delay, Error, FakeAnthropic, Reply, request_text


def controls_in(body: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(i) for i in re.findall(r'<control id="(\d+)"', request_text(body)))


def every_third(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "mapped_controls": [
            {"control_id": c, "confidence": 80, "rationale": f"covers {c}"}
            for c in controls_in(body)
            if c % 3 == 0
        ]
    }


async def progress_log(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[tuple[str, Any, Any]]:
    rows = await pool.fetch(
        "SELECT progress_message, progress_current, progress_total FROM ai_job_events"
        " WHERE job_id = $1 AND status = 'processing' ORDER BY id",
        job_id,
    )
    return [(r["progress_message"], r["progress_current"], r["progress_total"]) for r in rows]


@pytest.fixture
def settings(dsn: str, fake: FakeAnthropic) -> Settings:
    return make_settings(dsn, fake.url, parallel_batches=4)


async def map_controls_job(entities: EntityStore, jobs: JobStore, controls: int) -> uuid.UUID:
    doc = await entities.create_document("Access policy", DOCUMENT)
    await seed_controls(entities, controls)
    return (await jobs.enqueue("ai-map-controls", doc["id"])).id


async def test_batches_run_at_once_after_the_first_and_progress_counts_finished_ones(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic, pool: asyncpg.Pool
) -> None:
    fake.responder = every_third
    fake.default = Delay(0.3)
    job_id = await map_controls_job(entities, jobs, 100)  # 4 batches of 25
    job = await wait_for_job(jobs, job_id)
    assert job.status == "completed", job.error_message

    first, *rest = fake.requests
    assert len(rest) == 3
    # The first batch writes the cache alone; the other three then run at once.
    assert first.answered_at is not None
    assert all(r.received_at >= first.answered_at for r in rest)
    assert max(r.received_at for r in rest) < min(r.answered_at or 0 for r in rest)
    # Progress is truthful: each batch is announced as it starts, and the count is of the
    # batches that finished, in order, never ahead.
    assert await progress_log(pool, job_id) == [
        ("Starting...", None, None),
        ("Analyzing batch 1 of 4...", 0, 4),
        ("Analyzed 1 of 4 batches", 1, 4),
        ("Analyzing batch 2 of 4...", 1, 4),
        # Started while batch 2 runs: the message tells the bar's count too.
        *[(f"Analyzing batch {n} of 4... (1 of 4 done)", 1, 4) for n in range(3, 5)],
        *[(f"Analyzed {n} of 4 batches", n, 4) for n in range(2, 5)],
    ]
    assert job.progress_current == job.progress_total == 4
    mapped = {c["controlId"] for c in job.result["mappedControls"]}
    assert mapped == {r["id"] for r in await entities.list_controls() if r["id"] % 3 == 0}
    assert sorted(controls_in(r.body) for r in fake.requests) == sorted(
        tuple(range(i, i + 25)) for i in (1, 26, 51, 76)
    )
    assert job.checkpoint is None  # cleared on completion


async def test_later_batches_read_the_document_from_the_prompt_cache(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic, pool: asyncpg.Pool
) -> None:
    job_id = await map_controls_job(entities, jobs, 75)  # 3 batches
    job = await wait_for_job(jobs, job_id)
    assert job.status == "completed", job.error_message

    prefixes = [r.body["messages"][0]["content"][0] for r in fake.requests]
    assert all(p == prefixes[0] for p in prefixes)
    assert prefixes[0]["cache_control"] == {"type": "ephemeral"}
    assert DOCUMENT in prefixes[0]["text"]
    assert all(r.body["tools"] == fake.requests[0].body["tools"] for r in fake.requests)
    first, *later = fake.usages
    assert first["cache_creation_input_tokens"] > 0 and first["cache_read_input_tokens"] == 0
    assert all(u["cache_read_input_tokens"] == first["cache_creation_input_tokens"] for u in later)
    usage = job.result["usage"]
    assert usage["calls"] == 3
    assert usage["cacheReadInputTokens"] == sum(u["cache_read_input_tokens"] for u in later) > 0
    assert usage["cacheCreationInputTokens"] == first["cache_creation_input_tokens"]
    row = await pool.fetchrow(
        "SELECT usage_calls, usage_cache_read_tokens, usage_cache_write_tokens FROM ai_jobs"
        " WHERE id = $1",
        job_id,
    )
    assert tuple(row) == (3, usage["cacheReadInputTokens"], usage["cacheCreationInputTokens"])


async def test_a_batch_that_fails_transiently_is_retried_alone(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    fake.responder = every_third
    fake.enqueue(Reply(), Error(529), Delay(0.2), Delay(0.2))
    job_id = await map_controls_job(entities, jobs, 100)
    job = await wait_for_job(jobs, job_id)
    assert job.status == "completed", job.error_message
    assert job.attempts == 1
    assert fake.count(529) == 1 and fake.count(200) == 4
    failed = next(r for r in fake.requests if r.status == 529)
    sent = Counter(controls_in(r.body) for r in fake.requests)
    assert sent[controls_in(failed.body)] == 2
    assert sorted(sent.values()) == [1, 1, 1, 2]
    assert job.result["usage"]["calls"] == 4


async def test_a_batch_that_keeps_failing_hands_the_job_back_and_done_batches_are_kept(
    dsn: str,
    pool: asyncpg.Pool,
    settings: Settings,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
) -> None:
    fake.responder = every_third
    # The second batch to go fails twice in a row: no retry in place, the job retries.
    fake.enqueue(Reply(), Error(500), Delay(0.3), Delay(0.3))
    assert settings.database_url
    no_retries = dataclasses.replace(settings, batch_retries=0)
    async with running_worker(no_retries, dsn, pool):
        job_id = await map_controls_job(entities, jobs, 100)
        job = await wait_for_job(jobs, job_id)
    assert job.status == "completed", job.error_message
    assert job.attempts == 2
    answered = Counter(controls_in(r.body) for r in fake.requests if r.status == 200)
    assert sorted(answered.values()) == [1, 1, 1, 1]  # no batch paid for twice
    assert len(fake.requests) == 5
    assert job.result["usage"]["calls"] == 4
    assert len(job.result["mappedControls"]) == 33


async def test_a_crash_after_three_of_six_batches_resumes_without_sending_them_again(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    fake.responder = every_third
    fake.default = Delay(0.6)
    env = {"AIJOBS_LEASE": "2", "AIJOBS_HEARTBEAT": "0.5", "AIJOBS_PARALLEL_BATCHES": "1"}
    doomed = await start_worker_process(dsn, fake, 2, **env)
    job_id = await map_controls_job(entities, jobs, 150)  # 6 batches

    async def three_done() -> bool:
        saved = await pool.fetchval("SELECT checkpoint FROM ai_jobs WHERE id = $1", job_id)
        return saved is not None and len(saved["done"]) >= 3

    await wait_until(three_done, within=30, interval=0.01)
    doomed.signal(signal.SIGKILL)
    await doomed.wait()
    before = list(fake.requests)
    done_before = [controls_in(r.body) for r in before if r.status == 200]
    assert len(done_before) >= 3

    rescuer = await start_worker_process(dsn, fake, 2, **env)
    try:
        job = await wait_for_job(jobs, job_id, within=60)
    finally:
        rescuer.signal(signal.SIGTERM)
        assert await rescuer.wait() == 0
    assert job.status == "completed", job.error_message
    assert job.attempts == 2
    after = [controls_in(r.body) for r in fake.requests[len(before) :]]
    checkpointed = done_before[:3]
    assert not set(checkpointed) & set(after)  # the three saved batches were not sent again
    assert sorted(set(done_before) | set(after)) == [
        tuple(range(i, i + 25)) for i in (1, 26, 51, 76, 101, 126)
    ]
    assert len(job.result["mappedControls"]) == 50
    resumed = [e for e in rescuer.log_lines() if e["event"] == "job_resumed_from_checkpoint"]
    assert resumed and resumed[0]["calls_done"] >= 3


async def test_a_checkpoint_is_fenced_like_every_write_of_a_claimed_job(
    jobs: JobStore, pool: asyncpg.Pool
) -> None:
    await jobs.enqueue("ai-match", 1)
    [job] = await jobs.claim(1, "worker-a", 30)
    assert job.checkpoint is None
    ctx = JobContext(job, jobs, get_logger("test"))
    await ctx.checkpoint({"done": {"a": 1}})
    assert ctx.job.checkpoint == {"done": {"a": 1}}
    assert await pool.fetchval("SELECT checkpoint FROM ai_jobs") == {"done": {"a": 1}}
    # Handed back and claimed again: the next attempt reads what was saved.
    await jobs.retry(job, 0, "again", "transient")
    [again] = await jobs.claim(1, "worker-b", 30)
    assert again.checkpoint == {"done": {"a": 1}}
    # The first worker lost the job: its checkpoint changes nothing.
    with pytest.raises(LeaseLost):
        await ctx.checkpoint({"done": {}})
    assert await pool.fetchval("SELECT checkpoint FROM ai_jobs") == {"done": {"a": 1}}
