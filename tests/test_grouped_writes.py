"""The worker's writes in groups (completions, progress), slots freed while outcomes are
written, and the worker's commits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from service.config import ConfigError, Settings
from service.jobs.completer import Completer
from service.jobs.grouped import Grouped
from service.jobs.model import Completion
from service.jobs.registry import JobType
from service.jobs.store import JobStore, LeaseLost
from service.jobs.worker import Worker, WorkerOptions
from service.runtime import create_worker_pool
from tests.conftest import wait_until


async def run_until_all_completed(
    dsn: str,
    pool: asyncpg.Pool,
    jobs: JobStore,
    run: Callable[[Any], Awaitable[Completion]],
    concurrency: int,
) -> None:
    """A worker runs the queued ai-match jobs with `run` until every one is completed."""
    worker = Worker(dsn, jobs, {"ai-match": JobType("ai-match", run)}, WorkerOptions(concurrency))
    await worker.start()
    try:

        async def drained() -> bool:
            left = await pool.fetchval("SELECT count(*) FROM ai_jobs WHERE status <> 'completed'")
            return bool(left == 0)

        await wait_until(drained, within=30)
    finally:
        await worker.stop()


async def test_jobs_without_an_effect_complete_in_groups_each_with_its_own_result(
    dsn: str, pool: asyncpg.Pool, jobs: JobStore
) -> None:
    created = [await jobs.enqueue("ai-match", entity_id) for entity_id in range(1, 121)]

    async def run(ctx: Any) -> Completion:
        return Completion({"entity": ctx.job.entity_id}, message=f"Done {ctx.job.entity_id}")

    await run_until_all_completed(dsn, pool, jobs, run, concurrency=20)

    rows = await pool.fetch(
        "SELECT entity_id, result, progress_message, finished_at, locked_until FROM ai_jobs"
    )
    assert len(rows) == len(created)
    for row in rows:
        assert row["result"] == {"entity": row["entity_id"]}
        assert row["progress_message"] == f"Done {row['entity_id']}"
        assert row["locked_until"] is None
    # Jobs completed in one statement share its transaction's time: fewer times than jobs.
    assert len({row["finished_at"] for row in rows}) < len(rows)
    # Every job's stream got exactly one final event.
    finals = await pool.fetch(
        "SELECT job_id, count(*) AS n FROM ai_job_events WHERE status = 'completed' GROUP BY job_id"
    )
    assert len(finals) == len(created)
    assert {row["n"] for row in finals} == {1}


async def test_a_completion_that_is_no_longer_ours_fails_alone_in_its_group(
    pool: asyncpg.Pool, jobs: JobStore
) -> None:
    for entity_id in (1, 2, 3):
        await jobs.enqueue("ai-match", entity_id)
    claimed = await jobs.claim(3, "worker-a", 60)
    assert len(claimed) == 3
    cancelled = claimed[1]
    await jobs.cancel(cancelled.id)

    completer = Completer(jobs)
    outcomes = await asyncio.gather(
        *(completer.complete(job, {"n": job.entity_id}, "Done", None) for job in claimed),
        return_exceptions=True,
    )

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], LeaseLost)
    by_id = {row["id"]: row for row in await pool.fetch("SELECT * FROM ai_jobs")}
    assert by_id[claimed[0].id]["status"] == "completed"
    assert by_id[claimed[2].id]["result"] == {"n": claimed[2].entity_id}
    assert by_id[cancelled.id]["status"] == "failed"
    assert by_id[cancelled.id]["result"] is None


async def test_a_result_the_database_refuses_fails_its_own_job_only(
    pool: asyncpg.Pool, jobs: JobStore
) -> None:
    for entity_id in (1, 2, 3):
        await jobs.enqueue("ai-match", entity_id)
    claimed = await jobs.claim(3, "worker-a", 60)
    # Postgres' jsonb holds no NUL character: this result cannot be written.
    results: list[object] = [{"n": 1}, {"text": "a\u0000b"}, {"n": 3}]

    completer = Completer(jobs)
    outcomes = await asyncio.gather(
        *(
            completer.complete(job, result, "Done", None)
            for job, result in zip(claimed, results, strict=True)
        ),
        return_exceptions=True,
    )

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], asyncpg.PostgresError)
    status = {row["id"]: row["status"] for row in await pool.fetch("SELECT * FROM ai_jobs")}
    assert [status[job.id] for job in claimed] == ["completed", "processing", "completed"]


async def test_a_group_splits_for_bad_data_not_when_the_database_is_away() -> None:
    calls: list[list[int]] = []

    def grouped(error: Exception) -> Grouped[int, int]:
        async def run(items: list[int]) -> list[int | Exception]:
            calls.append(items)
            if 2 in items:
                raise error
            return [item * 10 for item in items]

        return Grouped(run)

    refused = asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence")
    groups = grouped(refused)
    answers = await asyncio.gather(*(groups.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert answers == [10, refused, 30]
    assert calls == [[1, 2, 3], [1], [2], [3]]

    calls.clear()
    away = ConnectionRefusedError("the database is away")
    groups = grouped(away)
    answers = await asyncio.gather(*(groups.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert answers == [away, away, away]
    assert calls == [[1, 2, 3]]


async def test_progress_of_many_jobs_is_written_together_each_its_own(
    pool: asyncpg.Pool, jobs: JobStore
) -> None:
    for entity_id in range(1, 31):
        await jobs.enqueue("ai-match", entity_id)
    claimed = await jobs.claim(30, "worker-a", 60)
    gone = claimed[7]
    await jobs.cancel(gone.id)
    first = claimed[0]

    outcomes = await asyncio.gather(
        *(jobs.progress(job, f"Step of {job.entity_id}", 1, 3) for job in claimed),
        # The same job twice in one group: the later report is the one that stays.
        jobs.progress(first, "Later step", 2, 3),
        return_exceptions=True,
    )

    assert [type(o) for o in outcomes].count(LeaseLost) == 1
    assert isinstance(outcomes[7], LeaseLost)
    rows = {
        row["id"]: row
        for row in await pool.fetch(
            "SELECT id, status, progress_message, progress_current, progress_total FROM ai_jobs"
        )
    }
    assert rows[first.id]["progress_message"] == "Later step"
    assert rows[first.id]["progress_current"] == 2
    for job in claimed[1:]:
        row = rows[job.id]
        if job is gone:
            assert row["status"] == "failed"
            assert row["progress_message"] != f"Step of {job.entity_id}"
        else:
            assert (row["progress_message"], row["progress_current"], row["progress_total"]) == (
                f"Step of {job.entity_id}",
                1,
                3,
            )
    # One statement wrote them all: their events share its transaction's time.
    times = await pool.fetch(
        "SELECT DISTINCT created_at FROM ai_job_events WHERE progress_message LIKE 'Step of %'"
    )
    assert len(times) < len(claimed) - 1


async def test_at_most_concurrency_processors_run_at_once(
    dsn: str, pool: asyncpg.Pool, jobs: JobStore
) -> None:
    for entity_id in range(1, 41):
        await jobs.enqueue("ai-match", entity_id)
    running = 0
    most = 0

    async def run(ctx: Any) -> Completion:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        running -= 1
        return Completion(None)

    await run_until_all_completed(dsn, pool, jobs, run, concurrency=4)
    assert most == 4


async def test_the_worker_pool_commits_asynchronously_unless_told_otherwise(dsn: str) -> None:
    for configured, expected in (({}, "off"), ({"AIJOBS_WORKER_SYNCHRONOUS_COMMIT": "on"}, "on")):
        settings = Settings.from_env({"DATABASE_URL": dsn, **configured})
        worker_pool = await create_worker_pool(settings, dsn)
        try:
            assert await worker_pool.fetchval("SHOW synchronous_commit") == expected
        finally:
            await worker_pool.close()


def test_an_unknown_synchronous_commit_level_is_refused() -> None:
    with pytest.raises(ConfigError, match="AIJOBS_WORKER_SYNCHRONOUS_COMMIT"):
        Settings.from_env({"AIJOBS_WORKER_SYNCHRONOUS_COMMIT": "sometimes"})
