"""Who may see what: tokens, ownership enforced by row level security, hostile input."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import jwt
import orjson
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.db.embedded import _free_port
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from tests.conftest import (
    TEST_JWT_SECRET,
    auth_headers,
    make_settings,
    token_for,
    wait_for_job,
    wait_until,
)
from tests.fake_anthropic import Delay, FakeAnthropic
from tests.test_api_entities import error_of
from tests.test_api_jobs import make_mapping

Client = TestClient[Any, Any]


async def wait_answering(http: aiohttp.ClientSession, url: str) -> None:
    """Wait until a server starting in another process answers `url` with 200."""

    async def answering() -> bool:
        try:
            async with http.get(url) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(answering, within=30, interval=0.2)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "user-a", "role": "authenticated", "exp": int(time.time()) + 600, **overrides}


async def anonymous(client: Client, method: str, path: str, headers: dict[str, str]) -> Any:
    """A request with only these headers: the fixture's client would add a valid token."""
    async with aiohttp.ClientSession() as session:
        response = await session.request(method, client.make_url(path), headers=headers)
        await response.read()
        return response


async def test_requests_without_a_valid_token_get_401(client: Client) -> None:
    job = f"/api/ai-jobs/{uuid.uuid4()}"
    bad_tokens = {
        "missing": {"Authorization": ""},
        "not bearer": {"Authorization": f"Token {token_for()}"},
        "empty bearer": {"Authorization": "Bearer "},
        "garbage": bearer("not.a.token"),
        "expired": bearer(jwt.encode(claims(exp=int(time.time()) - 10), TEST_JWT_SECRET)),
        "wrong secret": bearer(jwt.encode(claims(), "another-secret-entirely-but-long")),
        "alg none": bearer(jwt.encode(claims(), None, algorithm="none")),
        "no exp": bearer(jwt.encode({"sub": "user-a", "role": "authenticated"}, TEST_JWT_SECRET)),
        "no sub": bearer(jwt.encode({"role": "authenticated", "exp": 2**31}, TEST_JWT_SECRET)),
    }
    for name, headers in bad_tokens.items():
        for method, path in (
            ("GET", job),
            ("GET", "/api/ai-jobs"),
            ("POST", "/api/gap-analysis/ai-match/1"),
            ("POST", "/api/requirements"),
            ("GET", f"{job}/events"),
        ):
            response = await anonymous(client, method, path, {} if name == "missing" else headers)
            error = await error_of(response, 401)
            assert error["code"] == "unauthorized", (name, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (name, path)


async def test_4xx_messages_are_ours_and_say_what_to_send(client: Client) -> None:
    library_words = ("segments", "padding", "verification failed", "alg value", "Token is")
    for token in (
        "garbage",
        "not.a.token",
        jwt.encode(claims(), "another-secret-entirely-but-long"),
        jwt.encode({"sub": "user-a", "role": "authenticated"}, TEST_JWT_SECRET),
    ):
        response = await anonymous(client, "GET", "/api/ai-jobs", bearer(token))
        message = (await error_of(response, 401))["message"]
        assert not any(w in message for w in library_words), message
        assert "send" in message.lower(), message
    # A form-encoded POST: not the JSON parser's words, but what to send.
    response = await client.post(
        "/api/requirements",
        data={"code": "R-1", "title": "A requirement"},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    message = (await error_of(response, 400))["message"]
    assert "invalid literal" not in message and "line 1" not in message, message
    assert "form" in message and "application/json" in message, message
    response = await client.post("/api/requirements", data=b"{code:")
    message = (await error_of(response, 400))["message"]
    assert "application/json" in message and "line 1" not in message, message
    response = await client.delete("/api/requirements")
    assert "send" in (await error_of(response, 405))["message"]


async def test_a_token_of_another_role_is_forbidden(client: Client) -> None:
    anon = bearer(jwt.encode(claims(role="anon"), TEST_JWT_SECRET))
    error = await error_of(await anonymous(client, "GET", "/api/ai-jobs", anon), 403)
    assert error["code"] == "forbidden"


async def test_supabase_shaped_tokens_are_accepted(client: Client) -> None:
    supabase = bearer(
        jwt.encode(claims(aud="authenticated", email="a@example.com"), TEST_JWT_SECRET)
    )
    response = await anonymous(client, "GET", "/api/ai-jobs", supabase)
    assert response.status == 200


async def test_event_stream_takes_the_token_as_a_query_parameter(
    client: Client, entities: EntityStore, jobs: JobStore
) -> None:
    mapping = await make_mapping(entities)
    job = await jobs.enqueue("ai-match", mapping["id"], created_by="test-user")
    await jobs.cancel(job.id)
    events = f"/api/ai-jobs/{job.id}/events?access_token={token_for()}"
    response = await anonymous(client, "GET", events, {})
    assert response.status == 200
    assert "Cancelled" in await response.text()
    # Only there: elsewhere a token in the URL would end up in access logs.
    plain = f"/api/ai-jobs/{job.id}?access_token={token_for()}"
    assert (await anonymous(client, "GET", plain, {})).status == 401


async def test_users_see_only_their_own_jobs(client: Client, entities: EntityStore) -> None:
    mapping = await make_mapping(entities)
    alice, bob = auth_headers("alice"), auth_headers("bob")
    operator = auth_headers("ops", "service_role")
    response = await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}", headers=alice)
    job_id = (await response.json())["jobId"]
    for method, path in (
        ("GET", f"/api/ai-jobs/{job_id}"),
        ("GET", f"/api/ai-jobs/{job_id}/events"),
        ("POST", f"/api/ai-jobs/{job_id}/cancel"),
    ):
        error = await error_of(await client.request(method, path, headers=bob), 404)
        assert error["message"] == f"Job {job_id} not found", path
    assert await (await client.get("/api/ai-jobs", headers=bob)).json() == []
    mine = await (await client.get("/api/ai-jobs", headers=alice)).json()
    assert [j["id"] for j in mine] == [job_id]
    assert (await client.get(f"/api/ai-jobs/{job_id}", headers=alice)).status == 200
    assert (await client.get(f"/api/ai-jobs/{job_id}", headers=operator)).status == 200
    everything = await (await client.get("/api/ai-jobs", headers=operator)).json()
    assert [j["id"] for j in everything] == [job_id]
    # Bob's identical dispatch is his own job, not Alice's.
    response = await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}", headers=bob)
    assert (await response.json())["jobId"] != job_id
    # Bob could not cancel it: it is still pending.
    assert (await (await client.get(f"/api/ai-jobs/{job_id}", headers=alice)).json())[
        "status"
    ] == "pending"


async def test_row_level_security_alone_hides_other_users_jobs(
    pool: asyncpg.Pool, jobs: JobStore
) -> None:
    """Even a query with no owner condition at all shows a user only their own rows."""
    alices = await jobs.enqueue("ai-match", 1, created_by="alice")
    bobs = await jobs.enqueue("ai-match", 2, created_by="bob")
    await jobs.enqueue("ai-match", 3)  # no owner: a job from psql
    bob = {"sub": "bob", "role": "authenticated"}
    async with jobs.reader(bob) as reader:
        assert await reader.get(alices.id) is None
        assert (await reader.get(bobs.id)) is not None
        listed = await reader.list_jobs(created_by=None)  # the WHERE a buggy handler forgot
        assert [j.id for j in listed] == [bobs.id]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('role', 'authenticated', true)")
        await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", json.dumps(bob))
        rows = await conn.fetch("SELECT id FROM ai_jobs")
        events = await conn.fetch("SELECT DISTINCT job_id FROM ai_job_events")
    assert [r["id"] for r in rows] == [bobs.id]
    assert [r["job_id"] for r in events] == [bobs.id]
    async with jobs.reader(None) as reader:
        assert len(await reader.list_jobs()) == 3


async def test_oversized_bodies_get_413_and_change_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    def body(data: object) -> dict[str, Any]:
        return {
            "data": io.BytesIO(orjson.dumps(data)),
            "headers": {"Content-Type": "application/json"},
        }

    big = "x" * (3 * 1024 * 1024)
    response = await client.post("/api/documents", **body({"title": "Huge", "content": big}))
    assert (await error_of(response, 413))["code"] == "payload_too_large"
    fine = await client.post("/api/documents", **body({"title": "Big", "content": "y" * 1_500_000}))
    assert fine.status == 201
    response = await client.post(
        "/api/requirements", json={"code": "R", "title": "T", "description": "z" * 70_000}
    )
    await error_of(response, 413)
    # Without a Content-Length: the limit holds for a streamed body too.

    async def chunks() -> Any:
        for _ in range(80):
            yield b"a" * 1024

    response = await client.post(
        "/api/requirements", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await error_of(response, 413)
    assert await pool.fetchval("SELECT count(*) FROM documents") == 1
    assert await pool.fetchval("SELECT count(*) FROM requirements") == 0


async def test_deeply_nested_json_is_a_400(client: Client) -> None:
    body = "[" * 5000 + "]" * 5000
    response = await client.post(
        "/api/controls", data=body, headers={"Content-Type": "application/json"}
    )
    await error_of(response, 400)


async def test_dispatches_per_minute_are_limited_per_user(
    dsn: str, pool: asyncpg.Pool, fake: FakeAnthropic, entities: EntityStore
) -> None:
    settings = make_settings(dsn, fake.url, dispatch_per_minute=3)
    requirement = await entities.create_requirement("R", "T", "d")
    async with TestClient(
        TestServer(create_app(settings, dsn, pool)), headers=auth_headers("eager")
    ) as client:
        for _ in range(3):
            doc = await entities.create_document("D", "content")
            mapping = await entities.create_mapping(requirement["id"], doc["id"])
            response = await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}")
            assert response.status == 202
        response = await client.post(f"/api/requirements/{requirement['id']}/ai-coverage")
        error = await error_of(response, 429)
        assert error["code"] == "too_many_requests"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        # Another user is not held back.
        other = await client.post(
            f"/api/requirements/{requirement['id']}/ai-coverage", headers=auth_headers("calm")
        )
        assert other.status == 202


async def test_open_event_streams_are_limited_per_user(
    dsn: str, pool: asyncpg.Pool, fake: FakeAnthropic, jobs: JobStore
) -> None:
    settings = make_settings(dsn, fake.url, sse_streams_per_user=2)
    job = await jobs.enqueue("ai-match", 1, created_by="test-user")
    async with TestClient(
        TestServer(create_app(settings, dsn, pool)), headers=auth_headers()
    ) as client:
        first = await client.get(f"/api/ai-jobs/{job.id}/events")
        second = await client.get(f"/api/ai-jobs/{job.id}/events")
        assert (first.status, second.status) == (200, 200)
        third = await client.get(f"/api/ai-jobs/{job.id}/events")
        assert (await error_of(third, 429))["code"] == "too_many_streams"
        first.close()

        async def freed() -> bool:
            response = await client.get(f"/api/ai-jobs/{job.id}/events")
            ok = response.status == 200
            response.close()
            return ok

        await wait_until(freed, within=10, interval=0.1)
        second.close()


async def test_the_api_refuses_to_start_without_a_secret(dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AIJOBS_JWT_SECRET"}
    env["DATABASE_URL"] = dsn
    port = str(_free_port())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "api",
        "--port",
        port,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"AIJOBS_JWT_SECRET" in err and b"--insecure-dev-auth" in err

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "api",
        "--port",
        port,
        "--insecure-dev-auth",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            await wait_answering(http, f"http://127.0.0.1:{port}/api/ai-jobs")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_secrets_and_document_text_stay_out_of_logs(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    api_key = "sk-ant-test-" + uuid.uuid4().hex
    secret = "jwt-secret-" + uuid.uuid4().hex
    marker = "CONFIDENTIAL-" + uuid.uuid4().hex
    requirement = await entities.create_requirement("R", "Records", "Keep records")
    doc = await entities.create_document("Policy", f"Records are kept. {marker}")
    mapping = await entities.create_mapping(requirement["id"], doc["id"])
    fake.default = Delay(0.1)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "ANTHROPIC_API_KEY": api_key,
        "ANTHROPIC_BASE_URL": fake.url,
        "AIJOBS_JWT_SECRET": secret,
        "AIJOBS_LOG_FORMAT": "json",
        "AIJOBS_WORKER_PORT": "off",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    token = jwt.encode(claims(sub="logger"), secret)
    try:
        async with aiohttp.ClientSession(headers=bearer(token)) as http:
            base = f"http://127.0.0.1:{port}"
            await wait_answering(http, f"{base}/healthz")
            async with http.post(f"{base}/api/gap-analysis/ai-match/{mapping['id']}") as r:
                job_id = (await r.json())["jobId"]
            async with http.get(f"{base}/api/ai-jobs/nope", headers=bearer("bad")) as r:
                assert r.status == 401
        done = await wait_for_job(jobs, job_id)
        assert done.status == "completed"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    logs = out.decode() + err.decode()
    assert "job_completed" in logs
    for secret_text in (api_key, secret, token, marker):
        assert secret_text not in logs
    row = await pool.fetchrow(
        "SELECT result::text, error_message FROM ai_jobs WHERE id = $1", done.id
    )
    assert api_key not in row["result"] and secret not in row["result"]


async def test_odd_but_signed_tokens_get_401_with_a_well_formed_challenge(client: Client) -> None:
    nul = bearer(jwt.encode(claims(sub="a\u0000b"), TEST_JWT_SECRET))
    for method, path in (("GET", "/api/ai-jobs"), ("POST", "/api/requirements/1/ai-coverage")):
        await error_of(await anonymous(client, method, path, nul), 401)
    no_exp = bearer(jwt.encode({"sub": "a", "role": "authenticated"}, TEST_JWT_SECRET))
    response = await anonymous(client, "GET", "/api/ai-jobs", no_exp)
    challenge = response.headers["WWW-Authenticate"]
    description = challenge.split('error_description="', 1)[1]
    assert description.count('"') == 1 and description.endswith('"')


async def test_a_verified_token_still_expires(client: Client) -> None:
    soon = bearer(jwt.encode(claims(exp=int(time.time()) + 2), TEST_JWT_SECRET))
    assert (await anonymous(client, "GET", "/api/ai-jobs", soon)).status == 200
    assert (await anonymous(client, "GET", "/api/ai-jobs", soon)).status == 200  # remembered

    async def refused() -> bool:
        return (await anonymous(client, "GET", "/api/ai-jobs", soon)).status == 401

    await wait_until(refused, within=10, interval=0.2)
