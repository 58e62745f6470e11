"""Browsers as clients: the session cookie (ours and @supabase/ssr's), the origin check that
requests authenticated by a cookie pass, and CORS for the origins in AIJOBS_CORS_ORIGINS."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.config import ConfigError, Settings
from service.entities.store import EntityStore
from tests.conftest import TEST_JWT_SECRET, make_settings, token_for

Client = TestClient[Any, Any]

APP_ORIGIN = "https://app.example.com"


@pytest.fixture
def cors_settings(settings: Settings) -> Settings:
    return Settings(**{**settings.__dict__, "cors_origins": (APP_ORIGIN,)})


@pytest.fixture
async def bare(cors_settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Client]:
    """A client that sends no credentials of its own."""
    assert cors_settings.database_url
    app = create_app(cors_settings, cors_settings.database_url, pool)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def cookie(name: str, value: str) -> dict[str, str]:
    return {"Cookie": f"{name}={value}"}


def own_origin(client: Client) -> str:
    return str(client.make_url("/")).rstrip("/")


def supabase_value(session: Any, *, base64url: bool) -> str:
    text = json.dumps(session)
    if base64url:
        return "base64-" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    return urllib.parse.quote(text, safe="")


async def error_code(response: Any) -> str:
    code: str = (await response.json())["error"]["code"]
    return code


async def test_the_token_in_our_cookie_authenticates_like_the_header(bare: Client) -> None:
    assert (await bare.get("/api/ai-jobs")).status == 401
    ok = await bare.get("/api/ai-jobs", headers=cookie("aijobs_token", token_for()))
    assert ok.status == 200, await ok.text()
    # Verified alike: a bad signature, an expired token, a role we do not serve.
    other_secret = "another-secret-that-is-long-enough-for-hs256"
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, other_secret)
    expired = jwt.encode({"sub": "x", "exp": int(time.time()) - 60}, TEST_JWT_SECRET)
    for token, status in ((forged, 401), (expired, 401), (token_for(role="anon"), 403)):
        response = await bare.get("/api/ai-jobs", headers=cookie("aijobs_token", token))
        assert response.status == status, token


@pytest.mark.parametrize("base64url", [True, False], ids=["base64url", "json"])
@pytest.mark.parametrize("chunks", [1, 3])
async def test_the_supabase_ssr_session_cookie_authenticates(
    bare: Client, entities: EntityStore, base64url: bool, chunks: int
) -> None:
    session = {
        "access_token": token_for("supabase-user"),
        "refresh_token": "r" * 40,
        "user": {"id": "supabase-user", "email": "someone@example.com"},
    }
    value = supabase_value(session, base64url=base64url)
    key = "sb-abcdefghijklmnop-auth-token"
    if chunks == 1:
        header = f"{key}={value}"
    else:
        size = -(-len(value) // chunks)
        parts = [value[i : i + size] for i in range(0, len(value), size)]
        header = "; ".join(f"{key}.{n}={part}" for n, part in enumerate(parts))
    header += f"; {key}-code-verifier=abc; theme=dark"
    doc = await entities.create_document("Policy", "Access is reviewed quarterly.")
    response = await bare.post(
        f"/api/documents/{doc['id']}/ai-map-controls",
        headers={"Cookie": header, "Origin": own_origin(bare)},
    )
    # Authenticated as the session's user (the catalogue is empty, so 422, not 401).
    assert response.status == 422, await response.text()
    listed = await bare.get("/api/ai-jobs", headers={"Cookie": header})
    assert listed.status == 200


async def test_the_header_wins_over_a_cookie(bare: Client, pool: asyncpg.Pool) -> None:
    job_id = await pool.fetchval(
        "INSERT INTO ai_jobs (job_type, entity_id, created_by) VALUES ('ai-match', 1, 'alice')"
        " RETURNING id"
    )
    headers = {
        "Authorization": f"Bearer {token_for('bob')}",
        "Cookie": f"aijobs_token={token_for('alice')}",
    }
    assert (await bare.get(f"/api/ai-jobs/{job_id}", headers=headers)).status == 404
    alice_cookie = cookie("aijobs_token", token_for("alice"))
    alice = await bare.get(f"/api/ai-jobs/{job_id}", headers=alice_cookie)
    assert alice.status == 200
    # A bad header is not rescued by a good cookie.
    headers["Authorization"] = "Bearer not-a-token"
    assert (await bare.get(f"/api/ai-jobs/{job_id}", headers=headers)).status == 401


async def test_posts_authenticated_by_a_cookie_must_come_from_an_allowed_origin(
    bare: Client, entities: EntityStore
) -> None:
    doc = await entities.create_document("Policy", "")
    path = f"/api/documents/{doc['id']}/ai-map-controls"
    session = cookie("aijobs_token", token_for())
    refused = {
        "no Origin, no Referer": {},
        "another site": {"Origin": "https://evil.example"},
        "an opaque origin": {"Origin": "null"},
        "another site's page": {"Referer": "https://evil.example/app/page"},
    }
    for why, headers in refused.items():
        response = await bare.post(path, headers={**session, **headers})
        assert response.status == 403, why
        body = await response.json()
        assert body["error"]["code"] == "cross_site_request", why
        assert "cookie" in body["error"]["message"], why
    allowed = {
        "its own origin": {"Origin": own_origin(bare)},
        "a listed origin": {"Origin": APP_ORIGIN},
        "its own page": {"Referer": own_origin(bare) + "/jobs?x=1"},
        "behind a proxy": {
            "Origin": "https://jobs.example.org",
            "X-Forwarded-Host": "jobs.example.org",
            "X-Forwarded-Proto": "https",
        },
    }
    for why, headers in allowed.items():
        response = await bare.post(path, headers={**session, **headers})
        # Past the check: the empty document is what the API refuses.
        assert response.status == 422, (why, await response.text())
    # A bearer token needs no origin: no browser sends it on its own.
    bearer = {"Authorization": f"Bearer {token_for()}", "Origin": "https://evil.example"}
    assert (await bare.post(path, headers=bearer)).status == 422
    # Reads are not checked.
    read = await bare.get("/api/ai-jobs", headers={**session, **refused["another site"]})
    assert read.status == 200


async def test_a_session_cookie_is_set_by_signing_in_and_removed_by_signing_out(
    bare: Client,
) -> None:
    origin = {"Origin": own_origin(bare)}
    bad = await bare.post("/api/session", json={"accessToken": "nope"}, headers=origin)
    assert bad.status == 401
    foreign = await bare.post(
        "/api/session",
        json={"accessToken": token_for()},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status == 403
    assert await error_code(foreign) == "cross_site_request"
    # Without any origin, the refusal says what the request is and what to send.
    unsourced = await bare.post("/api/session", json={"accessToken": token_for()})
    assert unsourced.status == 403
    message = (await unsourced.json())["error"]["message"]
    assert message.startswith("A sign-in or sign-out (it sets the session cookie) must say")
    assert "Origin or Referer" in message

    signed_in = await bare.post("/api/session", json={"accessToken": token_for()}, headers=origin)
    assert signed_in.status == 200, await signed_in.text()
    assert (await signed_in.json())["userId"] == "test-user"
    set_cookie = signed_in.headers["Set-Cookie"]
    assert set_cookie.startswith("aijobs_token=ey")
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    # The test client keeps the cookie, as a browser does.
    assert (await bare.get("/api/ai-jobs")).status == 200

    signed_out = await bare.delete("/api/session", headers=origin)
    assert signed_out.status == 204
    assert (await bare.get("/api/ai-jobs")).status == 401


# -- CORS -----------------------------------------------------------------------------------


async def test_a_listed_origin_gets_its_preflight_answered_without_credentials(
    bare: Client,
) -> None:
    preflight = await bare.options(
        "/api/documents/1/ai-map-controls",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status == 204
    headers = preflight.headers
    assert headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert headers["Access-Control-Allow-Credentials"] == "true"
    methods = {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST"} <= methods
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed


async def test_a_listed_origin_may_read_answers_and_their_headers(
    bare: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    await pool.execute(
        "INSERT INTO controls (code, title, description) VALUES ('C-1', 'Control', 'x')"
    )
    doc = await entities.create_document("Policy", "Access is reviewed quarterly.")
    headers = {"Origin": APP_ORIGIN, "Authorization": f"Bearer {token_for()}"}
    dispatched = await bare.post(f"/api/documents/{doc['id']}/ai-map-controls", headers=headers)
    assert dispatched.status == 202, await dispatched.text()
    assert dispatched.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert dispatched.headers["Access-Control-Allow-Credentials"] == "true"
    exposed = {h.strip() for h in dispatched.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {"ETag", "Location", "Retry-After"}
    assert "Origin" in dispatched.headers.getall("Vary")
    # Errors too, so that the app can read why.
    unauthorized = await bare.get("/api/ai-jobs", headers={"Origin": APP_ORIGIN})
    assert unauthorized.status == 401
    assert unauthorized.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    # And the event stream.
    job_id = (await dispatched.json())["jobId"]
    stream = await bare.get(f"/api/ai-jobs/{job_id}/events", headers=headers)
    assert stream.status == 200
    assert stream.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    stream.close()


async def test_origins_not_listed_get_no_cors_headers(bare: Client) -> None:
    preflight = await bare.options(
        "/api/ai-jobs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status == 204
    assert not any(h.startswith("Access-Control-") for h in preflight.headers)
    answer = await bare.get(
        "/api/ai-jobs",
        headers={"Origin": "https://evil.example", "Authorization": f"Bearer {token_for()}"},
    )
    assert answer.status == 200
    assert not any(h.startswith("Access-Control-") for h in answer.headers)


async def test_without_listed_origins_there_is_no_cors(client: Client) -> None:
    preflight = await client.options(
        "/api/ai-jobs", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status == 204
    assert not any(h.startswith("Access-Control-") for h in preflight.headers)
    answer = await client.get("/api/ai-jobs", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "Vary" not in answer.headers or "Origin" not in answer.headers.getall("Vary")


def test_cors_origins_and_the_cookie_name_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {"AIJOBS_CORS_ORIGINS": "https://App.example.com/, http://localhost:5173,,"}
    )
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:5173")
    assert settings.auth_cookie == "aijobs_token"
    assert Settings.from_env({"AIJOBS_AUTH_COOKIE": "session"}).auth_cookie == "session"
    for bad in ("*", "https://app.example.com/path", "app.example.com"):
        with pytest.raises(ConfigError, match="AIJOBS_CORS_ORIGINS"):
            Settings.from_env({"AIJOBS_CORS_ORIGINS": bad})
    with pytest.raises(ConfigError, match="AIJOBS_AUTH_COOKIE"):
        Settings.from_env({"AIJOBS_AUTH_COOKIE": "a b"})


def test_settings_for_tests_list_no_origins() -> None:
    assert make_settings("postgresql://unused/unused", None).cors_origins == ()
