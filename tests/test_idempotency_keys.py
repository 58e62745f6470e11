"""An Idempotency-Key keeps the first job it was answered with: one it made, or the live job
of the same analysis it found (made without a key, or with another one). The same key then
returns that job whatever became of it, and the same key for another analysis is a 422;
the key goes when retention deletes its job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from service.ai.dispatch import Dispatched, Dispatcher, IdempotencyKeyReused
from service.config import Settings
from service.entities.store import EntityStore
from service.jobs.retention import Pruner
from service.jobs.store import JobStore
from service.runtime import running_worker
from tests.conftest import DOCUMENT, seed_controls, wait_for_job, wait_until
from tests.test_api_entities import error_of

Client = TestClient[Any, Any]

# For each job type: (the dispatch path of one entity, of another entity of that type).
Paths = tuple[str, str]


async def match_paths(entities: EntityStore) -> Paths:
    requirement = await entities.create_requirement("R-1", "Requirement", "Keep records")
    paths = []
    for title in ("Doc-1", "Doc-2"):
        document = await entities.create_document(title, DOCUMENT)
        mapping = await entities.create_mapping(requirement["id"], document["id"])
        paths.append(f"/api/gap-analysis/ai-match/{mapping['id']}")
    return paths[0], paths[1]


async def coverage_paths(entities: EntityStore) -> Paths:
    paths = []
    for code in ("R-1", "R-2"):
        requirement = await entities.create_requirement(code, "Requirement", "Keep records")
        document = await entities.create_document(f"Doc-{code}", DOCUMENT)
        await entities.create_mapping(requirement["id"], document["id"])
        paths.append(f"/api/requirements/{requirement['id']}/ai-coverage")
    return paths[0], paths[1]


async def map_controls_paths(entities: EntityStore) -> Paths:
    await seed_controls(entities, 3)
    paths = []
    for title in ("Doc-1", "Doc-2"):
        document = await entities.create_document(title, DOCUMENT)
        paths.append(f"/api/documents/{document['id']}/ai-map-controls")
    return paths[0], paths[1]


MAKE_PATHS: dict[str, Callable[[EntityStore], Awaitable[Paths]]] = {
    "ai-match": match_paths,
    "ai-coverage": coverage_paths,
    "ai-map-controls": map_controls_paths,
}


async def dispatch(client: Client, path: str, key: str | None = None) -> dict[str, Any]:
    headers = {} if key is None else {"Idempotency-Key": key}
    response = await client.post(path, headers=headers)
    assert response.status == 202, await response.text()
    body: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"/api/ai-jobs/{body['jobId']}"
    return body


async def reused(client: Client, path: str, key: str) -> str:
    response = await client.post(path, headers={"Idempotency-Key": key})
    error = await error_of(response, 422)
    assert error["code"] == "idempotency_key_reused"
    message: str = error["message"]
    return message


@pytest.mark.parametrize("job_type", list(MAKE_PATHS))
async def test_a_key_that_found_a_live_job_keeps_it_after_the_job_is_cancelled(
    job_type: str, client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    path, other = await MAKE_PATHS[job_type](entities)
    live = await dispatch(client, path)
    job_id = live["jobId"]
    assert await dispatch(client, path, "K") == {"jobId": job_id, "status": "pending"}

    cancel = await client.post(f"/api/ai-jobs/{job_id}/cancel")
    assert cancel.status == 200
    # The job has failed, but the key still names it, for this analysis only.
    assert await dispatch(client, path, "K") == {"jobId": job_id, "status": "failed"}
    assert job_type in await reused(client, other, "K")
    # Without the key, the analysis gets a new job, and the key still names the first.
    fresh = await dispatch(client, path)
    assert fresh["jobId"] != job_id and fresh["status"] == "pending"
    assert await dispatch(client, path, "K") == {"jobId": job_id, "status": "failed"}
    # Another key joins the new job; nothing for the other entity was ever made.
    assert await dispatch(client, path, "K2") == fresh
    rows = await pool.fetch("SELECT id FROM ai_jobs ORDER BY created_at")
    assert [str(r["id"]) for r in rows] == [job_id, fresh["jobId"]]


async def test_a_key_that_found_another_keys_job_keeps_it_after_the_job_completes(
    client: Client, settings: Settings, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore
) -> None:
    path, other = await match_paths(entities)
    first = await dispatch(client, path, "K1")
    second = await dispatch(client, path, "K2")
    assert second["jobId"] == first["jobId"]
    assert settings.database_url
    async with running_worker(settings, settings.database_url, pool):
        assert (await wait_for_job(jobs, first["jobId"])).status == "completed"

    for key in ("K1", "K2"):
        assert await dispatch(client, path, key) == {
            "jobId": first["jobId"],
            "status": "completed",
        }
        await reused(client, other, key)
    # A key first used now makes a job of its own.
    third = await dispatch(client, path, "K3")
    assert third["jobId"] != first["jobId"]


async def test_a_key_goes_with_its_job_when_retention_deletes_it(
    client: Client, entities: EntityStore, jobs: JobStore, pool: asyncpg.Pool
) -> None:
    path, other = await match_paths(entities)
    made = await dispatch(client, path, "K1")  # made with K1
    assert await dispatch(client, path, "K2") == made  # found live by K2
    assert (await client.post(f"/api/ai-jobs/{made['jobId']}/cancel")).status == 200
    await pool.execute(
        "UPDATE ai_jobs SET finished_at = now() - interval '40 days' WHERE id = $1",
        uuid.UUID(made["jobId"]),
    )
    assert await pool.fetchval("SELECT count(*) FROM ai_idempotency_keys") == 2

    assert await Pruner(jobs, timedelta(days=30).total_seconds(), 60).prune() == 1
    assert await pool.fetchval("SELECT count(*) FROM ai_idempotency_keys") == 0
    # Both keys are free again: K2 makes a job for the other entity, K1 one for the first.
    again = await dispatch(client, other, "K2")
    assert again["jobId"] != made["jobId"]
    assert (await dispatch(client, path, "K1"))["jobId"] not in (made["jobId"], again["jobId"])


# -- two transactions giving one key a job at once ---------------------------------------------


async def _blocked(pool: asyncpg.Pool) -> bool:
    """Whether some statement waits for another transaction's lock."""
    return bool(await pool.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))


async def _mapping_ids(entities: EntityStore) -> tuple[int, int]:
    requirement = await entities.create_requirement("R-1", "Requirement", "Keep records")
    ids = []
    for title in ("Doc-1", "Doc-2"):
        document = await entities.create_document(title, DOCUMENT)
        ids.append((await entities.create_mapping(requirement["id"], document["id"]))["id"])
    return ids[0], ids[1]


@pytest.mark.parametrize("first_makes_a_job", [True, False], ids=["made", "found"])
async def test_a_key_given_a_job_by_another_transaction_meanwhile_gets_that_job(
    first_makes_a_job: bool, pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mapping, other = await _mapping_ids(entities)
    dispatcher = Dispatcher(pool, lambda _t: 5)
    # A live job without a key: of the mapping the open transaction's request is for when it
    # finds one, else of the other mapping, which the dispatch below then finds.
    live = await dispatcher.dispatch(
        "ai-match", other if first_makes_a_job else mapping, created_by="u"
    )
    conn = await pool.acquire()
    try:
        transaction = conn.transaction()
        await transaction.start()
        first = await conn.fetchrow(
            "SELECT * FROM ai_jobs_enqueue('ai-match', $1, 'u', 5, 'K')", mapping
        )
        assert first is not None
        assert (first["id"] != live.job_id) is first_makes_a_job
        # The same key for the other mapping: it makes a job (or finds the live one), then
        # waits for the open transaction's record of the key.
        racing = asyncio.create_task(
            dispatcher.dispatch("ai-match", other, created_by="u", idempotency_key="K")
        )
        await wait_until(lambda: _blocked(pool), within=10)
        await transaction.commit()
    finally:
        await pool.release(conn)
    with pytest.raises(IdempotencyKeyReused):
        await racing
    # Nothing else was made: the live job, and the open transaction's if it made one.
    rows = await pool.fetch("SELECT id FROM ai_jobs")
    assert {r["id"] for r in rows} == {live.job_id, first["id"]}
    keys = await pool.fetch("SELECT owner, idempotency_key, job_id FROM ai_idempotency_keys")
    assert [tuple(r) for r in keys] == [("u", "K", first["id"])]
    assert not await pool.fetch(
        "SELECT FROM ai_job_events AS e WHERE NOT EXISTS (SELECT FROM ai_jobs WHERE id = e.job_id)"
    )


async def test_identical_keyed_dispatches_of_two_processes_at_once_get_one_job(
    pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mapping, other = await _mapping_ids(entities)
    # Two writers, as two API processes have: their groups are written concurrently.
    writers = [Dispatcher(pool, lambda _t: 5), Dispatcher(pool, lambda _t: 5)]
    await writers[0].dispatch("ai-match", other, created_by="u")  # live, without a key

    async def race(mapping_id: int, key: str) -> list[Dispatched]:
        return list(
            await asyncio.gather(
                *(
                    writer.dispatch("ai-match", mapping_id, created_by="u", idempotency_key=key)
                    for writer in writers * 20
                )
            )
        )

    made, found = await asyncio.gather(race(mapping, "new-key"), race(other, "found-key"))
    assert len({d.job_id for d in made}) == 1
    assert sum(d.created for d in made) == 1
    assert len({d.job_id for d in found}) == 1 and not any(d.created for d in found)
    keys = dict(await pool.fetch("SELECT idempotency_key, job_id FROM ai_idempotency_keys"))
    assert keys == {"new-key": made[0].job_id, "found-key": found[0].job_id}
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 2


@pytest.mark.parametrize("fair_share", [True, False], ids=["fair", "in_order"])
async def test_a_pending_job_is_claimed_while_a_key_is_being_recorded_for_it(
    fair_share: bool, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore
) -> None:
    mapping, _ = await _mapping_ids(entities)
    live = await Dispatcher(pool, lambda _t: 5).dispatch("ai-match", mapping, created_by="u")
    conn = await pool.acquire()
    try:
        async with conn.transaction():
            # A dispatch with a key finds the pending job and records the key for it; its
            # transaction is still open when a worker claims.
            found = await conn.fetchrow(
                "SELECT * FROM ai_jobs_enqueue('ai-match', $1, 'u', 5, 'K')", mapping
            )
            assert found is not None and found["id"] == live.job_id
            claimed = await jobs.claim(5, "worker-1", 30, fair_share=fair_share)
            assert [job.id for job in claimed] == [live.job_id]
    finally:
        await pool.release(conn)
    assert await pool.fetchval("SELECT job_id FROM ai_idempotency_keys") == live.job_id
