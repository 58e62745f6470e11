"""The worker: claiming, waking, outcomes, and two worker processes sharing one queue."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import asyncpg

from service.entities.store import EntityStore
from service.jobs.model import Completion, PermanentFailure, RetryLater
from service.jobs.registry import JobType
from service.jobs.store import JobStore
from service.jobs.worker import Worker, WorkerOptions
from service.runtime import running_worker
from tests.conftest import make_settings, start_worker_process, wait_for_job, wait_until
from tests.fake_anthropic import Error, FakeAnthropic
from tests.test_api_jobs import make_mapping


async def test_job_enqueued_before_any_worker_runs_when_one_starts(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    job = await jobs.enqueue("ai-match", mapping["id"])
    # A long poll interval: the catch-up on connect must find the job, not the poll.
    settings = make_settings(dsn, fake.url, poll_interval_s=60)
    async with running_worker(settings, dsn, pool):
        done = await wait_for_job(jobs, job.id)
    assert done.status == "completed"


async def test_notify_wakes_an_idle_worker(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    settings = make_settings(dsn, fake.url, poll_interval_s=60)
    async with running_worker(settings, dsn, pool) as worker:
        await asyncio.wait_for(worker.listener.connected.wait(), 10)
        job = await jobs.enqueue("ai-match", mapping["id"])
        done = await wait_for_job(jobs, job.id, within=10)
    assert done.status == "completed"


def scripted_registry(calls: Counter[int]) -> dict[str, JobType]:
    """ai-match jobs whose outcome depends on the entity id: 1 raises, 2 retries once."""

    async def run(ctx: Any) -> Completion:
        calls[ctx.job.entity_id] += 1
        if ctx.job.entity_id == 1:
            raise RuntimeError("processor bug")
        if ctx.job.entity_id == 2 and ctx.job.attempts == 1:
            raise RetryLater("try again", delay=0.01)
        if ctx.job.entity_id == 3:
            raise PermanentFailure("cannot be done")
        return Completion({"ok": ctx.job.entity_id})

    return {"ai-match": JobType("ai-match", run)}


async def test_outcomes_and_a_crashing_processor_does_not_stop_the_worker(
    dsn: str, jobs: JobStore
) -> None:
    calls: Counter[int] = Counter()
    worker = Worker(dsn, jobs, scripted_registry(calls), WorkerOptions(poll_interval_s=0.2))
    await worker.start()
    try:
        crashing = await jobs.enqueue("ai-match", 1)
        retried = await jobs.enqueue("ai-match", 2)
        permanent = await jobs.enqueue("ai-match", 3)
        fine = await jobs.enqueue("ai-match", 4)
        results = {j: await wait_for_job(jobs, j.id) for j in (crashing, retried, permanent, fine)}
    finally:
        await worker.stop()
    assert results[crashing].status == "failed"
    assert "RuntimeError: processor bug" in (results[crashing].error_message or "")
    assert (results[retried].status, results[retried].attempts) == ("completed", 2)
    assert results[retried].result == {"ok": 2}
    assert (results[permanent].status, results[permanent].error_message) == (
        "failed",
        "cannot be done",
    )
    assert results[fine].status == "completed"
    assert calls == Counter({1: 1, 2: 2, 3: 1, 4: 1})


async def test_transient_claude_errors_retry_and_permanent_ones_fail(
    client: Any, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(Error(529), Error(500))
    response = await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}")
    job = await wait_for_job(jobs, (await response.json())["jobId"])
    assert (job.status, job.attempts) == ("completed", 3)

    fake.enqueue(Error(401))
    response = await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}")
    job = await wait_for_job(jobs, (await response.json())["jobId"])
    assert (job.status, job.attempts) == ("failed", 1)
    assert "401" in (job.error_message or "")


async def test_attempts_run_out(
    client: Any, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    # A 500 counts attempts; a 429 or 529 would snooze the job instead (tests/test_fairness.py).
    fake.default = Error(500)
    response = await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}")
    job = await wait_for_job(jobs, (await response.json())["jobId"])
    assert (job.status, job.attempts) == ("failed", 3)
    assert "gave up after 3 of 3 attempts" in (job.error_message or "")
    assert len(fake.requests) == 3


async def test_two_worker_processes_run_each_of_200_jobs_exactly_once(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    requirement = await entities.create_requirement("R", "Requirement", "Keep records")
    mapping_ids = []
    for i in range(200):
        doc = await entities.create_document(f"Doc-{i:03d}", f"Records are kept. Doc-{i:03d}")
        mapping_ids.append((await entities.create_mapping(requirement["id"], doc["id"]))["id"])
    for mapping_id in mapping_ids:
        await jobs.enqueue("ai-match", mapping_id)

    workers = [await start_worker_process(dsn, fake, 10) for _ in range(2)]
    try:

        async def all_finished() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) = 200 FROM ai_jobs WHERE status IN ('completed', 'failed')"
                )
            )

        await wait_until(all_finished, within=90, interval=0.1)
    finally:
        for proc in workers:
            proc.signal(signal.SIGTERM)
        codes = [await proc.wait() for proc in workers]
    assert codes == [0, 0]

    rows = await pool.fetch("SELECT status, attempts, locked_by FROM ai_jobs")
    assert Counter(r["status"] for r in rows) == {"completed": 200}
    assert {r["attempts"] for r in rows} == {1}
    assert len({r["locked_by"] for r in rows}) == 2, "both workers took jobs"
    # The model was asked about each document exactly once.
    asked = Counter(doc for r in fake.requests for doc in set(re_docs(r.text)))
    assert set(asked) == {f"Doc-{i:03d}" for i in range(200)}
    assert set(asked.values()) == {1}
    scores = await pool.fetchval(
        "SELECT count(*) FROM requirement_mappings WHERE ai_match_score IS NOT NULL"
    )
    assert scores == 200

    # Every log line of a job's work names the job.
    for proc in workers:
        lines = proc.log_lines()
        job_lines = [line for line in lines if line["event"].startswith("job_")]
        assert job_lines
        assert all("job_id" in line and "job_type" in line for line in job_lines)


def re_docs(text: str) -> list[str]:
    import re

    return re.findall(r'title="(Doc-\d{3})"', text)
