"""Fair to every user, with a real worker and the fake model: fair share between owners, a
cap per owner, priorities, daily budgets, and rate-limit waits that cost no attempt."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.entities.store import EntityStore
from service.jobs.model import Job
from service.jobs.store import JobStore
from service.runtime import running_worker
from tests.conftest import DOCUMENT, auth_headers, make_settings, wait_for_job, wait_until
from tests.fake_anthropic import Delay, Error, FakeAnthropic, Reply

Client = TestClient[Any, Any]


async def make_mappings(entities: EntityStore, count: int) -> list[int]:
    req = await entities.create_requirement("AC-R", "Access control", "Review access quarterly")
    ids = []
    for i in range(count):
        doc = await entities.create_document(f"Policy {i}", f"{DOCUMENT} Copy {i}.")
        ids.append((await entities.create_mapping(req["id"], doc["id"]))["id"])
    return ids


async def dispatch(
    client: Client, mapping_id: int, user: str, body: Any = None, expect: int = 202
) -> Any:
    response = await client.post(
        f"/api/gap-analysis/ai-match/{mapping_id}", json=body, headers=auth_headers(user)
    )
    assert response.status == expect, await response.text()
    return await response.json()


async def all_finished(jobs: JobStore, ids: list[str], within: float = 60) -> list[Job]:
    return [await wait_for_job(jobs, job_id, within) for job_id in ids]


def start_order(done: list[Job]) -> list[uuid.UUID]:
    return [j.id for j in sorted(done, key=lambda j: (j.started_at, j.id))]


async def test_one_job_of_another_user_waits_for_a_slot_not_for_the_backlog(
    dsn: str, pool: asyncpg.Pool, client: Client, entities: EntityStore, jobs: JobStore,
    fake: FakeAnthropic,
) -> None:  # fmt: skip
    mappings = await make_mappings(entities, 24)
    fake.default = Delay(0.1, Reply())
    backlog = [(await dispatch(client, m, "user-a"))["jobId"] for m in mappings]
    settings = make_settings(dsn, fake.url)
    async with running_worker(settings, dsn, pool, concurrency=2):

        async def started() -> bool:
            query = "SELECT count(*) >= 2 FROM ai_jobs WHERE started_at IS NOT NULL"
            return bool(await pool.fetchval(query))

        await wait_until(started)
        late = [(await dispatch(client, m, "user-b"))["jobId"] for m in mappings[:2]]
        done = await all_finished(jobs, backlog + late)
    assert {j.status for j in done} == {"completed"}
    order = start_order(done)
    positions = sorted(order.index(uuid.UUID(job_id)) for job_id in late)
    # user-a's backlog has at most a few jobs started (or claimed) ahead of user-b's two:
    # first in, first out would put them last (positions 24 and 25).
    assert positions[-1] <= 7, positions


async def test_without_fair_share_the_backlog_goes_first(
    dsn: str, pool: asyncpg.Pool, client: Client, entities: EntityStore, jobs: JobStore,
    fake: FakeAnthropic,
) -> None:  # fmt: skip
    mappings = await make_mappings(entities, 8)
    backlog = [(await dispatch(client, m, "user-a"))["jobId"] for m in mappings]
    late = [(await dispatch(client, m, "user-b"))["jobId"] for m in mappings[:2]]
    settings = make_settings(dsn, fake.url, fair_share=False)
    async with running_worker(settings, dsn, pool, concurrency=1):
        done = await all_finished(jobs, backlog + late)
    assert start_order(done)[-2:] == [uuid.UUID(j) for j in late]


async def test_the_cap_per_user_holds_one_users_jobs_to_it(
    dsn: str, pool: asyncpg.Pool, client: Client, entities: EntityStore, jobs: JobStore,
    fake: FakeAnthropic,
) -> None:  # fmt: skip
    mappings = await make_mappings(entities, 5)
    fake.default = Delay(0.1, Reply())
    ids = [(await dispatch(client, m, "user-a"))["jobId"] for m in mappings]
    ids += [(await dispatch(client, m, "user-b"))["jobId"] for m in mappings]
    settings = make_settings(dsn, fake.url, user_concurrency=2)
    async with running_worker(settings, dsn, pool, concurrency=6):
        done = await all_finished(jobs, ids)
    assert {j.status for j in done} == {"completed"}
    for user in ("user-a", "user-b"):
        spans = [(j.started_at, j.finished_at) for j in done if j.created_by == user]
        most = max(
            sum(1 for s, f in spans if s is not None and f is not None and s <= t < f)
            for t, _ in spans
        )
        assert most == 2, (user, most)


async def test_priority_orders_before_fair_share(
    dsn: str, pool: asyncpg.Pool, client: Client, entities: EntityStore, jobs: JobStore,
    fake: FakeAnthropic,
) -> None:  # fmt: skip
    mappings = await make_mappings(entities, 5)
    normal = [(await dispatch(client, m, "user-a"))["jobId"] for m in mappings[:3]]
    urgent = (await dispatch(client, mappings[3], "user-a", {"priority": 10}))["jobId"]
    low = (await dispatch(client, mappings[4], "user-b", {"priority": -3}))["jobId"]
    response = await client.get(f"/api/ai-jobs/{urgent}", headers=auth_headers("user-a"))
    assert (await response.json())["priority"] == 10
    settings = make_settings(dsn, fake.url)
    async with running_worker(settings, dsn, pool, concurrency=1):
        done = await all_finished(jobs, [*normal, urgent, low])
    order = start_order(done)
    # user-b has nothing running, but its job's lower priority comes first.
    assert order[0] == uuid.UUID(urgent)
    assert order[-1] == uuid.UUID(low)


async def test_an_invalid_priority_is_a_400_that_says_why(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    [mapping] = await make_mappings(entities, 1)
    for body in ({"priority": 11}, {"priority": "high"}, {"priority": 1.5}, {"priority": True}):
        answer = await dispatch(client, mapping, "user-a", body, expect=400)
        assert answer["error"]["code"] == "invalid_priority"
        assert "from -10 to 10" in answer["error"]["message"]
    answer = await dispatch(client, mapping, "user-a", [1], expect=400)
    assert answer["error"]["code"] == "invalid_body"
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 0
    answer = await dispatch(client, mapping, "user-a", {})
    assert (await pool.fetchval("SELECT priority FROM ai_jobs")) == 0
    # From psql too.
    row = await pool.fetchrow(
        "SELECT * FROM ai_jobs_enqueue('ai-match', $1, 'op', priority => -10)", mapping
    )
    assert row["priority"] == -10


async def test_a_spent_daily_budget_refuses_new_jobs_and_lets_queued_ones_finish(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mappings = await make_mappings(entities, 3)
    settings = make_settings(dsn, fake.url, user_daily_budget_usd=0.000001)
    app = create_app(settings, dsn, pool)
    async with TestClient(TestServer(app)) as client:
        queued = [(await dispatch(client, m, "user-a"))["jobId"] for m in mappings[:2]]
        async with running_worker(settings, dsn, pool):
            done = await all_finished(jobs, queued)
        # The first job spent the budget; the second, queued already, still ran.
        assert [j.status for j in done] == ["completed", "completed"]

        response = await client.post(
            f"/api/gap-analysis/ai-match/{mappings[2]}", headers=auth_headers("user-a")
        )
        assert response.status == 429
        error = (await response.json())["error"]
        assert error["code"] == "budget_exhausted"
        assert "daily budget of 0.00 USD" in error["message"]
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        until_reset = (midnight + timedelta(days=1) - datetime.now(UTC)).total_seconds()
        assert abs(int(response.headers["Retry-After"]) - until_reset) < 5
        # Another user has a budget of their own.
        await dispatch(client, mappings[2], "user-b")

        by_user = {r["created_by"]: r for r in await pool.fetch("SELECT * FROM ai_jobs_by_user")}
        assert by_user["user-a"]["completed_today"] == 2
        assert by_user["user-a"]["calls_today"] == 2
        assert by_user["user-a"]["cost_usd_today"] > 0
        assert by_user["user-a"]["input_tokens_today"] > 0
        assert by_user["user-b"]["queued"] == 1

        # An operator lifts user-a's budget from psql.
        await pool.execute("INSERT INTO ai_user_budgets VALUES ('user-a', NULL)")
        await dispatch(client, mappings[2], "user-a")
        assert (await pool.fetchrow("SELECT * FROM ai_jobs_by_user WHERE created_by = 'user-a'"))[
            "daily_budget_usd"
        ] is None


async def test_an_operator_budget_applies_without_a_default(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    mappings = await make_mappings(entities, 2)
    await pool.execute("INSERT INTO ai_user_budgets VALUES ('user-a', 0)")
    answer = await dispatch(client, mappings[0], "user-a", expect=429)
    assert answer["error"]["code"] == "budget_exhausted"
    await pool.execute("UPDATE ai_user_budgets SET daily_budget_usd = 10")
    await dispatch(client, mappings[0], "user-a")


async def test_rate_limit_waits_cost_no_attempt(
    dsn: str, pool: asyncpg.Pool, client: Client, entities: EntityStore, jobs: JobStore,
    fake: FakeAnthropic,
) -> None:  # fmt: skip
    [mapping] = await make_mappings(entities, 1)
    # Four refusals in a row, more than the job's 3 attempts, then an answer.
    fake.enqueue(*[Error(429, retry_after=0.1)] * 2, *[Error(529, retry_after=0.1)] * 2)
    settings = make_settings(dsn, fake.url)
    async with running_worker(settings, dsn, pool):
        job_id = (await dispatch(client, mapping, "user-a"))["jobId"]
        job = await wait_for_job(jobs, job_id)
    assert job.status == "completed"
    assert len(fake.requests) == 5
    # Each refused attempt was given back: 5 attempts, of 3 + 4.
    assert (job.attempts, job.max_attempts) == (5, 7)
    assert job.rate_limit_wait_s >= 0.4


async def test_a_job_kept_waiting_fails_after_the_longest_wait_and_says_so(
    dsn: str, pool: asyncpg.Pool, client: Client, entities: EntityStore, jobs: JobStore,
    fake: FakeAnthropic,
) -> None:  # fmt: skip
    [mapping] = await make_mappings(entities, 1)
    fake.default = Error(529, retry_after=0.3)
    settings = make_settings(dsn, fake.url, max_wait_s=1.0)
    async with running_worker(settings, dsn, pool):
        job_id = (await dispatch(client, mapping, "user-a"))["jobId"]
        job = await wait_for_job(jobs, job_id)
    assert job.status == "failed"
    assert "gave up after waiting 1 s in all" in (job.error_message or "")
    assert "AIJOBS_MAX_WAIT" in (job.error_message or "")
    # More model calls than the job has attempts: the waits did not use them.
    assert len(fake.requests) > settings.max_attempts


async def test_other_transient_errors_still_count_attempts(
    dsn: str, pool: asyncpg.Pool, client: Client, entities: EntityStore, jobs: JobStore,
    fake: FakeAnthropic,
) -> None:  # fmt: skip
    [mapping] = await make_mappings(entities, 1)
    fake.enqueue(Error(529, retry_after=0.05), Error(500), Error(500), Error(500))
    settings = make_settings(dsn, fake.url)
    async with running_worker(settings, dsn, pool):
        job_id = (await dispatch(client, mapping, "user-a"))["jobId"]
        job = await wait_for_job(jobs, job_id)
    assert job.status == "failed"
    assert "gave up after 4 of 4 attempts" in (job.error_message or "")
