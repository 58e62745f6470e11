"""Dispatch answers at once with a job; the job is read back by polling."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from service.entities.store import EntityStore
from tests.conftest import DOCUMENT, seed_controls
from tests.fake_anthropic import FakeAnthropic
from tests.test_api_entities import error_of

Client = TestClient[Any, Any]

JOB_KEYS = {
    "id",
    "jobType",
    "entityId",
    "status",
    "progressMessage",
    "progress",
    "result",
    "errorMessage",
    "attempts",
    "createdAt",
    "updatedAt",
}


async def make_mapping(entities: EntityStore, content: str = DOCUMENT) -> dict[str, Any]:
    req = await entities.create_requirement("AC-R", "Access control", "Review access quarterly")
    doc = await entities.create_document("Access policy", content)
    return await entities.create_mapping(req["id"], doc["id"])


async def test_each_dispatch_answers_202_with_a_pending_job(
    client: Client, entities: EntityStore, pool: asyncpg.Pool, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    await seed_controls(entities, 3)
    paths = {
        "ai-match": (f"/api/gap-analysis/ai-match/{mapping['id']}", mapping["id"]),
        "ai-coverage": (
            f"/api/requirements/{mapping['requirement_id']}/ai-coverage",
            mapping["requirement_id"],
        ),
        "ai-map-controls": (
            f"/api/documents/{mapping['document_id']}/ai-map-controls",
            mapping["document_id"],
        ),
    }
    for job_type, (path, entity_id) in paths.items():
        response = await client.post(path)
        assert response.status == 202, await response.text()
        body = await response.json()
        assert set(body) == {"jobId", "status"}
        assert body["status"] == "pending"
        assert response.headers["Location"] == f"/api/ai-jobs/{body['jobId']}"
        row = await pool.fetchrow("SELECT * FROM ai_jobs WHERE id = $1", uuid.UUID(body["jobId"]))
        assert (row["job_type"], row["entity_id"], row["status"]) == (
            job_type,
            entity_id,
            "pending",
        )
    # No worker runs here: the requests recorded jobs and never waited for the model.
    assert fake.requests == []


async def test_dispatch_rejections(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    empty_mapping = await make_mapping(entities, content="   ")
    full = await entities.create_document("Full", DOCUMENT)
    cases = [
        ("/api/gap-analysis/ai-match/9999", 404),
        ("/api/requirements/9999/ai-coverage", 404),
        ("/api/documents/9999/ai-map-controls", 404),
        ("/api/gap-analysis/ai-match/abc", 400),
        ("/api/requirements/1e3/ai-coverage", 400),
        ("/api/documents/-4/ai-map-controls", 400),
        (f"/api/gap-analysis/ai-match/{empty_mapping['id']}", 422),
        (f"/api/documents/{empty_mapping['document_id']}/ai-map-controls", 422),
        # The catalogue is empty.
        (f"/api/documents/{full['id']}/ai-map-controls", 422),
    ]
    for path, status in cases:
        await error_of(await client.post(path), status)
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 0


async def test_job_read_back(client: Client, entities: EntityStore) -> None:
    mapping = await make_mapping(entities)
    dispatched = await (await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}")).json()
    response = await client.get(f"/api/ai-jobs/{dispatched['jobId']}")
    assert response.status == 200
    job = await response.json()
    assert set(job) >= JOB_KEYS
    assert job["id"] == dispatched["jobId"]
    assert job["jobType"] == "ai-match"
    assert job["entityId"] == mapping["id"]
    assert job["status"] == "pending"
    assert job["progress"] is None and job["result"] is None and job["errorMessage"] is None
    assert job["attempts"] == 0


async def test_job_lookup_errors(client: Client) -> None:
    await error_of(await client.get(f"/api/ai-jobs/{uuid.uuid4()}"), 404)
    assert (await error_of(await client.get("/api/ai-jobs/not-a-uuid"), 400))[
        "code"
    ] == "invalid_id"


async def test_list_jobs_filters_newest_first(client: Client, entities: EntityStore) -> None:
    mapping = await make_mapping(entities)
    first = await (await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}")).json()
    second = await (
        await client.post(f"/api/requirements/{mapping['requirement_id']}/ai-coverage")
    ).json()
    listed = await (await client.get("/api/ai-jobs")).json()
    assert [j["id"] for j in listed] == [second["jobId"], first["jobId"]]
    only = await (await client.get("/api/ai-jobs?jobType=ai-match")).json()
    assert [j["id"] for j in only] == [first["jobId"]]
    by_entity = await (
        await client.get(f"/api/ai-jobs?entityId={mapping['requirement_id']}&jobType=ai-coverage")
    ).json()
    assert [j["id"] for j in by_entity] == [second["jobId"]]
    assert len(await (await client.get("/api/ai-jobs?limit=1")).json()) == 1
    assert await (await client.get("/api/ai-jobs?status=completed")).json() == []
    await error_of(await client.get("/api/ai-jobs?status=done"), 400)
    await error_of(await client.get("/api/ai-jobs?limit=0"), 400)
    await error_of(await client.get("/api/ai-jobs?limit=--5"), 400)
    await error_of(await client.get("/api/ai-jobs?entityId=1e3"), 400)
    await error_of(await client.get("/api/ai-jobs?jobType=ai-nothing"), 400)
