"""Dispatches that arrive together are written together, and each still gets the answer it
would get alone; reads of single jobs likewise, each under its own user's row level
security."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.ai.dispatch import (
    Dispatcher,
    EntityMissing,
    IdempotencyKeyReused,
    NotAnalysable,
    RateLimited,
)
from service.api.app import create_app
from service.db.pool import connect
from service.entities.store import EntityStore
from service.jobs.store import JobRead, JobStore
from tests.conftest import DOCUMENT, api_behind_a_proxy, auth_headers, make_settings, wait_until
from tests.fake_anthropic import FakeAnthropic
from tests.test_api_entities import error_of
from tests.test_api_jobs import make_mapping

Client = TestClient[Any, Any]


async def make_mappings(entities: EntityStore, count: int, content: str = DOCUMENT) -> list[int]:
    requirement = await entities.create_requirement("R", "Requirement", "Keep records")
    ids = []
    for i in range(count):
        doc = await entities.create_document(f"Doc-{i:03d}", content)
        ids.append((await entities.create_mapping(requirement["id"], doc["id"]))["id"])
    return ids


def match_path(mapping_id: int | str) -> str:
    return f"/api/gap-analysis/ai-match/{mapping_id}"


async def test_fifty_dispatches_of_distinct_entities_each_get_their_own_job(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    mappings = await make_mappings(entities, 50)
    responses = await asyncio.gather(*(client.post(match_path(m)) for m in mappings))
    assert [r.status for r in responses] == [202] * 50
    bodies = [await r.json() for r in responses]
    assert all(b["status"] == "pending" for b in bodies)
    assert len({b["jobId"] for b in bodies}) == 50
    rows = await pool.fetch("SELECT id, entity_id, created_by FROM ai_jobs")
    by_id = {str(r["id"]): r for r in rows}
    # Each answer names the job of its own mapping, made by its own user.
    assert [by_id[b["jobId"]]["entity_id"] for b in bodies] == mappings
    assert {r["created_by"] for r in rows} == {"test-user"}
    for response, body in zip(responses, bodies, strict=True):
        assert response.headers["Location"] == f"/api/ai-jobs/{body['jobId']}"


async def test_fifty_identical_dispatches_at_once_give_one_job(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    (mapping,) = await make_mappings(entities, 1)
    responses = await asyncio.gather(*(client.post(match_path(mapping)) for _ in range(50)))
    assert {r.status for r in responses} == {202}
    assert len({(await r.json())["jobId"] for r in responses}) == 1
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 1


async def test_a_rate_limited_user_gets_429_while_the_others_get_202(
    dsn: str, pool: asyncpg.Pool, fake: FakeAnthropic, entities: EntityStore
) -> None:
    settings = make_settings(dsn, fake.url, dispatch_per_minute=3)
    mappings = await make_mappings(entities, 10)
    eager, calm = auth_headers("eager"), [auth_headers(f"calm-{i}") for i in range(5)]
    async with TestClient(TestServer(create_app(settings, dsn, pool))) as client:
        responses = await asyncio.gather(
            *(client.post(match_path(m), headers=eager) for m in mappings[:5]),
            *(
                client.post(match_path(m), headers=h)
                for m, h in zip(mappings[5:], calm, strict=True)
            ),
        )
        assert Counter(r.status for r in responses[:5]) == {202: 3, 429: 2}
        for response in responses[:5]:
            if response.status == 429:
                error = await error_of(response, 429)
                assert error["code"] == "too_many_requests"
                assert error["message"].startswith("At most 3 dispatches a minute")
                assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert [r.status for r in responses[5:]] == [202] * 5
        # The limit still holds for the next dispatch on its own, and says when it frees.
        later = await client.post(match_path(mappings[9]), headers=eager)
        await error_of(later, 429)
        assert 1 <= int(later.headers["Retry-After"]) <= 60
    counts = dict(await pool.fetch("SELECT created_by, count(*) FROM ai_jobs GROUP BY 1"))
    assert counts == {"eager": 3, **{f"calm-{i}": 1 for i in range(5)}}


async def test_bad_dispatches_among_good_ones_fail_alone(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    good = await make_mappings(entities, 6)
    (empty,) = await make_mappings(entities, 1, content="   ")
    await client.post(match_path(good[0]), headers={"Idempotency-Key": "k-1"})
    requirement_id = await pool.fetchval(
        "SELECT requirement_id FROM requirement_mappings WHERE id = $1", good[0]
    )
    requests = [
        ("POST", match_path(good[1]), {}),
        ("POST", match_path(999_999), {}),  # no such mapping
        ("POST", match_path(good[2]), {}),
        ("POST", match_path(empty), {}),  # nothing to analyse
        ("POST", match_path(good[3]), {}),
        # A key used for another analysis.
        ("POST", f"/api/requirements/{requirement_id}/ai-coverage", {"Idempotency-Key": "k-1"}),
        ("POST", match_path("12x"), {}),  # malformed
        ("POST", match_path(good[4]), {}),
        ("POST", "/api/documents/999999/ai-map-controls", {}),
        ("POST", match_path(good[5]), {}),
    ]
    responses = await asyncio.gather(
        *(client.request(method, path, headers=headers) for method, path, headers in requests)
    )
    assert [r.status for r in responses] == [202, 404, 202, 422, 202, 422, 400, 202, 404, 202]
    assert (await error_of(responses[1], 404))["message"] == "Mapping 999999 not found"
    assert (await error_of(responses[3], 422))["code"] == "not_analysable"
    assert (await error_of(responses[5], 422))["code"] == "idempotency_key_reused"
    assert (await error_of(responses[8], 404))["message"] == "Document 999999 not found"
    jobs = await pool.fetch("SELECT job_type, entity_id FROM ai_jobs ORDER BY entity_id")
    assert [(j["job_type"], j["entity_id"]) for j in jobs] == [("ai-match", m) for m in good]


async def test_a_group_is_one_statement_with_one_notify_of_each_kind(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mappings = await make_mappings(entities, 40)
    listener = await connect(dsn)
    heard: list[tuple[str, str]] = []
    for channel in ("ai_jobs_new", "ai_job_events"):
        await listener.add_listener(
            channel, lambda _c, _p, ch, payload: heard.append((ch, payload))
        )
    try:
        dispatcher = Dispatcher(pool, lambda _t: 3)
        # Submitted in one turn of the loop: one group.
        done = await asyncio.gather(
            *(dispatcher.dispatch("ai-match", m, created_by=f"user-{m}") for m in mappings)
        )
        assert all(d.created and d.status == "pending" for d in done)

        # Notifications arrive in commit order: once one sent after the group's commit is
        # heard, every one the group sent has been.
        await pool.execute("SELECT pg_notify('ai_jobs_new', 'end')")

        async def all_heard() -> bool:
            return ("ai_jobs_new", "end") in heard

        await wait_until(all_heard, within=5)
        heard.remove(("ai_jobs_new", "end"))
    finally:
        await listener.close()
    assert [channel for channel, _ in heard] == ["ai_job_events", "ai_jobs_new"]
    assert len(heard[0][1].split(",")) == 40
    # One transaction: every job has the same creation time.
    assert await pool.fetchval("SELECT count(DISTINCT created_at) FROM ai_jobs") == 1
    rows = await pool.fetch("SELECT max_attempts FROM ai_jobs")
    assert {r["max_attempts"] for r in rows} == {3}


async def test_requests_of_one_user_in_one_group_are_answered_as_one_after_another(
    pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mapping, other = await make_mappings(entities, 2)
    dispatcher = Dispatcher(pool, lambda _t: 5)
    results = await asyncio.gather(
        dispatcher.dispatch("ai-match", mapping, created_by="u", idempotency_key="a"),
        # Same analysis, another key: the live job of the first.
        dispatcher.dispatch("ai-match", mapping, created_by="u", idempotency_key="b"),
        # The first key for another analysis.
        dispatcher.dispatch("ai-match", other, created_by="u", idempotency_key="a"),
        # Identical to the first.
        dispatcher.dispatch("ai-match", mapping, created_by="u", idempotency_key="a"),
        # Another user's, of the same analysis: a job of their own.
        dispatcher.dispatch("ai-match", mapping, created_by="v", idempotency_key="a"),
        return_exceptions=True,
    )
    first, same, reused, again, theirs = results
    assert not isinstance(first, BaseException) and first.created
    assert not isinstance(same, BaseException) and same.job_id == first.job_id
    assert not same.created
    assert isinstance(reused, IdempotencyKeyReused)
    assert str(reused) == f"Idempotency-Key 'a' was used for a ai-match job of entity {mapping}"
    assert not isinstance(again, BaseException) and again.job_id == first.job_id
    assert not isinstance(theirs, BaseException) and theirs.created
    assert theirs.job_id != first.job_id
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 2


async def test_a_request_the_database_refuses_fails_alone(
    pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mappings = await make_mappings(entities, 3)
    dispatcher = Dispatcher(pool, lambda _t: 5)
    results = await asyncio.gather(
        dispatcher.dispatch("ai-match", mappings[0], created_by="u"),
        dispatcher.dispatch("ai-match", 2**63, created_by="u"),  # out of bigint's range
        dispatcher.dispatch("ai-match", mappings[1], created_by="u"),
        dispatcher.dispatch("ai-coverage", 10**9, created_by="u"),
        dispatcher.dispatch("ai-match", mappings[2], created_by="u"),
        return_exceptions=True,
    )
    assert isinstance(results[1], (asyncpg.DataError, OverflowError))
    assert isinstance(results[3], EntityMissing)
    assert all(not isinstance(results[i], BaseException) for i in (0, 2, 4))
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 3


async def test_the_limit_counts_the_jobs_of_earlier_requests_in_the_same_group(
    pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mappings = await make_mappings(entities, 4)
    dispatcher = Dispatcher(pool, lambda _t: 5, per_minute=2)
    results = await asyncio.gather(
        dispatcher.dispatch("ai-match", mappings[0], created_by="u"),
        dispatcher.dispatch("ai-match", mappings[0], created_by="u"),  # no new job: counts none
        dispatcher.dispatch("ai-match", mappings[1], created_by="u"),
        dispatcher.dispatch("ai-match", mappings[2], created_by="u"),
        dispatcher.dispatch("ai-match", 999_999, created_by="u"),  # over the limit first
        return_exceptions=True,
    )
    created = [r for r in results[:3] if not isinstance(r, BaseException)]
    assert len(created) == 3 and created[0].job_id == created[1].job_id
    for limited in results[3:]:
        assert isinstance(limited, RateLimited)
        assert limited.retry_after_s == 60
        assert str(limited) == "At most 2 dispatches a minute; try again in 60 s"


async def test_dispatch_and_reads_answer_503_while_the_database_is_away(
    dsn: str, fake: FakeAnthropic, entities: EntityStore
) -> None:
    mapping = await make_mapping(entities)
    async with api_behind_a_proxy(dsn, fake.url) as (client, proxy):
        first = await client.post(match_path(mapping["id"]))
        job = f"/api/ai-jobs/{(await first.json())['jobId']}"
        await proxy.cut()
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(client.post(match_path(mapping["id"])) for _ in range(3)),
                *(client.get(job) for _ in range(3)),
            ),
            30,
        )
        for response in answers:
            assert (await error_of(response, 503))["code"] == "database_unavailable"
        await proxy.start()

        async def answering() -> bool:
            read = await client.get(job)
            again = await client.post(match_path(mapping["id"]))
            return read.status == 200 and again.status == 202

        await wait_until(answering, within=15, interval=0.1)


# -- reads ------------------------------------------------------------------------------


async def test_reads_at_once_each_see_only_their_own_users_jobs(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    mappings = await make_mappings(entities, 2)
    users = ["alice", "bob"]
    jobs = {}
    for user, mapping in zip(users, mappings, strict=True):
        response = await client.post(match_path(mapping), headers=auth_headers(user))
        jobs[user] = (await response.json())["jobId"]
    operator = auth_headers("ops", "service_role")
    reads = [
        (reader, owner, headers)
        for reader, headers in [*((u, auth_headers(u)) for u in users), ("ops", operator)]
        for owner in users
        for _ in range(5)
    ]
    responses = await asyncio.gather(
        *(client.get(f"/api/ai-jobs/{jobs[owner]}", headers=h) for _, owner, h in reads)
    )
    for (reader, owner, _), response in zip(reads, responses, strict=True):
        if reader in (owner, "ops"):
            assert response.status == 200
            assert (await response.json())["id"] == jobs[owner]
        else:
            assert (await error_of(response, 404))["message"] == f"Job {jobs[owner]} not found"
    # The grouped reads left no user scope behind on the pool's connections.
    for _ in range(3):
        assert await pool.fetchval("SELECT current_setting('role')") == "none"
        assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 2


async def test_conditional_reads(client: Client, entities: EntityStore, pool: asyncpg.Pool) -> None:
    mapping = await make_mapping(entities)
    job_id = (await (await client.post(match_path(mapping["id"]))).json())["jobId"]
    path = f"/api/ai-jobs/{job_id}"
    first = await client.get(path)
    etag = first.headers["ETag"]
    cases = {
        "*": 304,
        etag: 304,
        f"W/{etag}": 304,
        f'"stale", {etag}': 304,
        '"stale"': 200,
        etag[:-2] + '"': 200,
        "not even a tag": 200,
    }
    for header, status in cases.items():
        response = await client.get(path, headers={"If-None-Match": header})
        assert response.status == status, header
        assert response.headers["ETag"] == etag
        if status == 200:
            assert await response.json() == await first.json()
    # The version changes with any change of the row, and an old version's tag is a 200.
    await pool.execute("UPDATE ai_jobs SET max_attempts = max_attempts WHERE id = $1", job_id)
    changed = await client.get(path, headers={"If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag
    await error_of(
        await client.get(f"/api/ai-jobs/{uuid.uuid4()}", headers={"If-None-Match": "*"}), 404
    )


async def test_many_reads_in_one_call(jobs: JobStore, entities: EntityStore) -> None:
    mappings = await make_mappings(entities, 3)
    made = [await jobs.enqueue("ai-match", m, created_by=f"u{i}") for i, m in enumerate(mappings)]
    scope = '{"sub": "u0", "role": "authenticated"}'
    first = await jobs.read_many([JobRead(made[0].id, None)])
    assert first[0] is not None and not isinstance(first[0], Exception)
    tag = first[0].tag
    versions = await jobs.read_many(
        [
            JobRead(made[0].id, scope),
            JobRead(made[1].id, scope),  # another user's
            JobRead(made[2].id, None),  # the service's own rights
            JobRead(made[0].id, scope, (tag,)),
            JobRead(made[0].id, scope, ("1-2", "*")),
            JobRead(uuid.uuid4(), None),
        ]
    )
    own, others, service, known, star, missing = versions
    assert own is not None and not isinstance(own, Exception) and own.job == made[0]
    assert others is None and missing is None
    assert service is not None and not isinstance(service, Exception)
    assert service.job == made[2]
    for unchanged in (known, star):
        assert unchanged is not None and not isinstance(unchanged, Exception)
        assert (unchanged.tag, unchanged.status, unchanged.job) == (tag, "pending", None)


@pytest.mark.parametrize("limit", [0, 2])
async def test_enqueue_many_from_psql(
    pool: asyncpg.Pool, entities: EntityStore, limit: int
) -> None:
    """The function the API's groups use, as an operator would call it."""
    mappings = await make_mappings(entities, 3)
    rows = await pool.fetch(
        "SELECT * FROM ai_jobs_enqueue_many($1, $2, $3, $4, $5, $6)",
        ["ai-match", "ai-match", "ai-nothing", "ai-match", "ai-match"],
        [mappings[0], mappings[0], 1, mappings[1], mappings[2]],
        ["op", "op", "op", "op", "op"],
        [5, 5, 5, 5, 5],
        [None, None, None, None, None],
        limit,
    )
    outcomes = [(r["n"], r["outcome"]) for r in sorted(rows, key=lambda r: r["n"])]
    if limit:
        assert outcomes == [
            (1, "created"),
            (2, "existing"),
            (3, "not_analysable"),
            (4, "created"),
            (5, "rate_limited"),
        ]
    else:
        assert [o for _, o in outcomes] == [
            "created",
            "existing",
            "not_analysable",
            "created",
            "created",
        ]
    unknown = next(r for r in rows if r["n"] == 3)
    assert unknown["message"].startswith("Unknown job type ai-nothing")


async def test_cancelled_requests_do_not_disturb_their_group(
    pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mappings = await make_mappings(entities, 3)
    dispatcher = Dispatcher(pool, lambda _t: 5)
    tasks = [
        asyncio.create_task(dispatcher.dispatch("ai-match", m, created_by="u")) for m in mappings
    ]
    await asyncio.sleep(0)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert all(not isinstance(done[i], BaseException) for i in (0, 2))
    # A request cancelled after it was handed over may still have made its job, as one that
    # had been sent to the database alone might have.
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") in (2, 3)


async def test_grouped_answers_say_what_a_single_dispatch_said(
    pool: asyncpg.Pool, entities: EntityStore
) -> None:
    (empty,) = await make_mappings(entities, 1, content="  ")
    empty_document = await pool.fetchval(
        "SELECT document_id FROM requirement_mappings WHERE id = $1", empty
    )
    document = await entities.create_document("Full", DOCUMENT)
    dispatcher = Dispatcher(pool, lambda _t: 5)
    grouped = await asyncio.gather(
        dispatcher.dispatch("ai-match", empty),
        dispatcher.dispatch("ai-map-controls", document["id"]),
        dispatcher.dispatch("ai-map-controls", empty_document),
        dispatcher.dispatch("ai-coverage", 999_999),
        dispatcher.dispatch("ai-map-controls", 999_999),
        return_exceptions=True,
    )
    assert [type(g) for g in grouped] == [NotAnalysable] * 3 + [EntityMissing] * 2
    assert [str(g) for g in grouped] == [
        f"Document {empty_document} of mapping {empty} has no content to analyse",
        "The control catalogue is empty; add controls first",
        f"Document {empty_document} has no content to analyse",
        "Requirement 999999 not found",
        "Document 999999 not found",
    ]
