"""Nothing lost, nothing twice: cancellation, idempotent dispatch, retries and their waits,
timeouts, a lost LISTEN connection, a killed worker, a graceful stop, a database that goes
away. Real processes and a real Postgres throughout."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.runtime import running_worker
from tests.conftest import (
    api_behind_a_proxy,
    make_settings,
    start_worker_process,
    wait_for_job,
    wait_until,
)
from tests.fake_anthropic import Delay, Error, FakeAnthropic, Reply
from tests.tcp_proxy import TcpProxy
from tests.test_api_entities import error_of
from tests.test_api_jobs import make_mapping

Client = TestClient[Any, Any]


async def dispatch(client: Client, path: str, **headers: str) -> dict[str, Any]:
    response = await client.post(path, headers=headers)
    assert response.status == 202, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def make_mappings(entities: EntityStore, count: int) -> list[int]:
    requirement = await entities.create_requirement("R", "Requirement", "Keep records")
    ids = []
    for i in range(count):
        doc = await entities.create_document(f"Doc-{i:03d}", f"Records are kept. Doc-{i:03d}")
        ids.append((await entities.create_mapping(requirement["id"], doc["id"]))["id"])
    return ids


async def count_match_writes(pool: asyncpg.Pool) -> None:
    """Record every write of a match result, to prove each happens exactly once."""
    await pool.execute(
        """
        CREATE TABLE test_match_writes (mapping_id bigint, at timestamptz DEFAULT now());
        CREATE FUNCTION test_record_match_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO test_match_writes (mapping_id) VALUES (NEW.id); RETURN NEW; END $$;
        CREATE TRIGGER test_match_writes AFTER UPDATE OF ai_match_score ON requirement_mappings
          FOR EACH ROW EXECUTE FUNCTION test_record_match_write();
        """
    )


async def match_writes(pool: asyncpg.Pool) -> Counter[int]:
    """How many times each mapping's match result was written (see count_match_writes)."""
    return Counter(
        r["mapping_id"] for r in await pool.fetch("SELECT mapping_id FROM test_match_writes")
    )


# -- cancellation -----------------------------------------------------------------------


async def test_cancel_a_pending_job(client: Client, entities: EntityStore) -> None:
    mapping = await make_mapping(entities)
    job = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    response = await client.post(f"/api/ai-jobs/{job['jobId']}/cancel")
    assert response.status == 200
    body = await response.json()
    assert (body["status"], body["errorMessage"]) == ("failed", "Cancelled")
    await error_of(await client.post(f"/api/ai-jobs/{job['jobId']}/cancel"), 409)
    await error_of(await client.post(f"/api/ai-jobs/{uuid.uuid4()}/cancel"), 404)
    await error_of(await client.post("/api/ai-jobs/nope/cancel"), 400)
    # A cancelled job no longer blocks a new dispatch of the same analysis.
    again = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    assert again["jobId"] != job["jobId"]


async def test_cancel_a_running_job_stops_its_actor_and_leaves_the_entity(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.default = Delay(30)
    job = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    await fake.wait_for_requests(1)
    response = await client.post(f"/api/ai-jobs/{job['jobId']}/cancel")
    assert response.status == 200
    assert (await response.json())["status"] == "failed"

    async def actor_gone() -> bool:
        return not worker.running_jobs

    await wait_until(actor_gone, within=5)
    final = await jobs.get(uuid.UUID(job["jobId"]))
    assert final is not None and (final.status, final.error_message) == ("failed", "Cancelled")
    row = await entities.get_mapping(mapping["id"])
    assert row is not None and row["ai_match_score"] is None


async def test_cancel_a_completed_job_is_a_conflict(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore
) -> None:
    mapping = await make_mapping(entities)
    job = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    await wait_for_job(jobs, job["jobId"])
    error = await error_of(await client.post(f"/api/ai-jobs/{job['jobId']}/cancel"), 409)
    assert "completed" in error["message"]


# -- idempotent dispatch ----------------------------------------------------------------


async def test_fifty_identical_dispatches_create_one_job(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    mapping = await make_mapping(entities)
    path = f"/api/gap-analysis/ai-match/{mapping['id']}"
    responses = await asyncio.gather(*(client.post(path) for _ in range(50)))
    assert {r.status for r in responses} == {202}
    ids = {(await r.json())["jobId"] for r in responses}
    assert len(ids) == 1
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 1


async def test_idempotency_key_returns_the_first_job(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore
) -> None:
    mapping = await make_mapping(entities)
    path = f"/api/gap-analysis/ai-match/{mapping['id']}"
    first = await dispatch(client, path, **{"Idempotency-Key": "abc-1"})
    await wait_for_job(jobs, first["jobId"])
    # Finished, but the key still names it.
    again = await dispatch(client, path, **{"Idempotency-Key": "abc-1"})
    assert again == {"jobId": first["jobId"], "status": "completed"}
    other = f"/api/requirements/{mapping['requirement_id']}/ai-coverage"
    response = await client.post(other, headers={"Idempotency-Key": "abc-1"})
    assert (await error_of(response, 422))["code"] == "idempotency_key_reused"
    fresh = await dispatch(client, path, **{"Idempotency-Key": "abc-2"})
    assert fresh["jobId"] != first["jobId"]


# -- retries and timeouts ---------------------------------------------------------------


async def test_overloaded_twice_then_completes_on_attempt_3_with_waits_honoured(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(Error(529, retry_after=1), Error(529, retry_after=1), Reply())
    job = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    done = await wait_for_job(jobs, job["jobId"])
    assert (done.status, done.attempts) == ("completed", 3)
    times = [r.received_at for r in fake.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 1.0


async def test_rate_limited_waits_retry_after_and_says_so(
    client: Client,
    worker: Any,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(Error(429, retry_after=2), Reply())
    job = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    await fake.wait_for_requests(1, answered=True)

    async def waiting() -> dict[str, Any] | None:
        body: dict[str, Any] = await (await client.get(f"/api/ai-jobs/{job['jobId']}")).json()
        return body if body["status"] == "pending" and body["attempts"] == 1 else None

    pending = await wait_until(waiting, within=5)
    # A rate limit's wait costs no attempt (docs/fairness.md).
    assert pending["progressMessage"] == "Rate limited; waiting 2 s (a wait costs no attempt)"
    assert pending["maxAttempts"] == 4
    done = await wait_for_job(jobs, job["jobId"])
    assert (done.status, done.attempts) == ("completed", 2)
    assert fake.requests[1].received_at - fake.requests[0].received_at >= 2.0


async def test_a_job_past_its_time_limit_is_retried(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    settings = make_settings(dsn, fake.url, timeout_by_type={"ai-match": 0.5})
    fake.enqueue(Delay(20))
    async with running_worker(settings, dsn, pool):
        job = await jobs.enqueue("ai-match", mapping["id"], max_attempts=3)
        done = await wait_for_job(jobs, job.id)
    assert (done.status, done.attempts) == ("completed", 2)


# -- connections ------------------------------------------------------------------------


async def test_jobs_dispatched_while_the_listener_is_cut_off_still_run(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping_ids = await make_mappings(entities, 5)
    # No poll to fall back on within the test: only the catch-up after reconnecting.
    settings = make_settings(dsn, fake.url, poll_interval_s=300)
    async with running_worker(settings, dsn, pool) as worker:
        await asyncio.wait_for(worker.listener.connected.wait(), 10)
        backend = worker.listener.backend_pid
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", backend)
        queued = [await jobs.enqueue("ai-match", m) for m in mapping_ids]
        done = [await wait_for_job(jobs, j.id, within=20) for j in queued]

        # A job may finish before the listener has counted its reconnect (a notification
        # can reach the dying backend): wait for the count rather than read it once.
        async def reconnected() -> bool:
            return worker.listener.reconnects >= 1 and worker.listener.backend_pid != backend

        await wait_until(reconnected, within=10)
    assert {j.status for j in done} == {"completed"}


async def test_api_answers_503_while_the_database_is_away_then_recovers(
    dsn: str, fake: FakeAnthropic, entities: EntityStore
) -> None:
    mapping = await make_mapping(entities)
    async with api_behind_a_proxy(dsn, fake.url) as (client, proxy):
        ok = await client.get(f"/api/gap-analysis/mappings/{mapping['id']}")
        assert ok.status == 200
        await proxy.cut()
        for _ in range(3):
            response = await asyncio.wait_for(
                client.get(f"/api/gap-analysis/mappings/{mapping['id']}"), 15
            )
            error = await error_of(response, 503)
            assert error["code"] == "database_unavailable"
            assert response.headers["Retry-After"]
        await proxy.start()

        async def answering() -> bool:
            response = await client.get(f"/api/gap-analysis/mappings/{mapping['id']}")
            return response.status == 200

        await wait_until(answering, within=10, interval=0.1)


async def test_worker_carries_on_after_the_database_comes_back(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping_ids = await make_mappings(entities, 2)
    proxy = TcpProxy.for_dsn(dsn)
    await proxy.start()
    proxied = proxy.dsn(dsn)
    settings = make_settings(proxied, fake.url, poll_interval_s=1)
    from service.db.pool import create_pool

    worker_pool = await create_pool(proxied, 1, 4)
    try:
        async with running_worker(settings, proxied, worker_pool) as worker:
            first = await jobs.enqueue("ai-match", mapping_ids[0])
            assert (await wait_for_job(jobs, first.id)).status == "completed"
            await proxy.cut()
            second = await jobs.enqueue("ai-match", mapping_ids[1])
            await proxy.start()
            assert (await wait_for_job(jobs, second.id, within=20)).status == "completed"
            assert worker.listener.reconnects >= 1
    finally:
        await worker_pool.close()
        await proxy.stop()


# -- processes that die or are stopped ---------------------------------------------------


async def test_a_killed_workers_jobs_run_again_elsewhere_exactly_once(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    await count_match_writes(pool)
    mapping_ids = await make_mappings(entities, 20)
    fake.default = Delay(1.5)
    lease = {"AIJOBS_LEASE": "2", "AIJOBS_HEARTBEAT": "0.5"}
    doomed = await start_worker_process(dsn, fake, 20, **lease)
    queued = [await jobs.enqueue("ai-match", m) for m in mapping_ids]
    await fake.wait_for_requests(20, timeout=30)
    doomed.signal(signal.SIGKILL)
    await doomed.wait()
    killed_at = time.monotonic()
    rescuer = await start_worker_process(dsn, fake, 20, **lease)
    try:
        done = [await wait_for_job(jobs, j.id, within=30) for j in queued]
        recovered_after = time.monotonic() - killed_at
    finally:
        rescuer.signal(signal.SIGTERM)
        assert await rescuer.wait() == 0
    assert {j.status for j in done} == {"completed"}
    # A job whose model call had answered just before the kill may have finished on its
    # first attempt; the others ran again.
    assert {j.attempts for j in done} <= {1, 2}
    assert sum(j.attempts == 2 for j in done) >= 10
    writes = await match_writes(pool)
    assert writes == Counter({m: 1 for m in mapping_ids})
    # Lease (2 s) + reaper interval (1 s) + one model call (1.5 s), with room for a slow day.
    assert recovered_after < 30


async def test_sigterm_hands_running_jobs_back_and_loses_none(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    await count_match_writes(pool)
    mapping_ids = await make_mappings(entities, 5)
    fake.default = Delay(20)
    stopping = await start_worker_process(dsn, fake, 5, AIJOBS_SHUTDOWN_GRACE="0.5")
    queued = [await jobs.enqueue("ai-match", m) for m in mapping_ids]
    await fake.wait_for_requests(5, timeout=30)
    stopping.signal(signal.SIGTERM)
    assert await stopping.wait() == 0
    rows = await pool.fetch("SELECT status, attempts FROM ai_jobs")
    assert {(r["status"], r["attempts"]) for r in rows} == {("pending", 0)}
    released = [e for e in stopping.log_lines() if e["event"] == "job_released"]
    assert len(released) == 5

    fake.default = Reply()
    successor = await start_worker_process(dsn, fake, 5)
    try:
        done = [await wait_for_job(jobs, j.id, within=30) for j in queued]
    finally:
        successor.signal(signal.SIGTERM)
        assert await successor.wait() == 0
    assert {(j.status, j.attempts) for j in done} == {("completed", 1)}
    assert await pool.fetchval("SELECT count(*) FROM test_match_writes") == 5


async def test_a_job_reclaimed_by_the_same_worker_runs_once_in_effect(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    """The lease of a running job ran out (the database was away, say) and the worker's own
    reaper and dispatcher took the job again: the earlier actor stops, the new one finishes."""
    await count_match_writes(pool)
    mapping = await make_mapping(entities)
    settings = make_settings(dsn, fake.url, lease_s=4.0, heartbeat_s=1.0)
    fake.enqueue(Delay(30), Delay(1.5))
    async with running_worker(settings, dsn, pool) as worker:
        job = await jobs.enqueue("ai-match", mapping["id"], max_attempts=3)
        await fake.wait_for_requests(1)
        await pool.execute(
            "UPDATE ai_jobs SET locked_until = now() - interval '1 second' WHERE id = $1", job.id
        )
        await fake.wait_for_requests(2, timeout=15)
        # One actor runs the job, for the second attempt; the first no longer holds a slot.
        assert worker.running_jobs == [job.id]
        done = await wait_for_job(jobs, job.id)
        assert worker.running_jobs == []
    assert (done.status, done.attempts) == ("completed", 2)
    assert await pool.fetchval("SELECT count(*) FROM test_match_writes") == 1
    # The first attempt's model call was abandoned rather than awaited for 30 s.
    assert fake.requests[0].status in (None, 0)
