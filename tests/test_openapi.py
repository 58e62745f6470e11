"""The OpenAPI description at /api/openapi.json: it describes every route, it is a valid
OpenAPI 3.1 document, and schemathesis, run against a live server, finds no 5xx and no answer
that the description does not allow."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
import schemathesis
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.api.openapi import PATH, build_document
from service.entities.store import EntityStore
from tests.conftest import DOCUMENT, make_settings, seed_controls

Client = TestClient[Any, Any]

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# The jobs page and its assets: HTML, CSS and JavaScript for people, not part of the API.
UNDESCRIBED = frozenset({("GET", "/"), ("GET", "/static/{name}")})
# Answered without a token.
PUBLIC = frozenset({PATH, "/api/session", "/healthz", "/readyz", "/metrics"})
# A stream that lasts as long as its job: described, not fuzzed.
NOT_FUZZED = ("getJobEvents",)

JWT_SECRET = "openapi-test-secret-long-enough-for-hs256"
EXAMPLES_PER_OPERATION = 25
SEED = 20250501
# About 50 s alone here; a shared machine under load has taken twice that.
RUN_TIMEOUT_S = 300
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
    # Not positive_data_acceptance: it wants every schema-valid request accepted, and the API
    # rightly refuses some that no schema can tell apart (422 for an empty document or a
    # reused Idempotency-Key, 400 for a list of controls that repeats a code).
)
# An invalid request may be refused for its size before it is read: 413 rejects it too.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
                     "429", "5xx"]
"""


def described(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_every_route_is_described_and_every_description_is_a_route() -> None:
    app = create_app(make_settings("postgresql://unused/unused", None), "postgresql://unused")
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        # aiohttp answers HEAD for every GET by itself.
        if route.method != "HEAD" and route.resource is not None
    }
    document = build_document()
    assert registered - UNDESCRIBED - described(document) == set(), "routes not described"
    assert described(document) - registered == set(), "described, but no such route"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]  # a KeyError: the reference leads nowhere
        node = target
    return node


def test_the_document_is_valid_openapi_3_1() -> None:
    document = build_document()
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    for ref in _refs(document):
        assert ref.startswith("#/components/"), ref
        _resolve(document, {"$ref": ref})
    operation_ids: list[str] = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            operation_ids.append(operation["operationId"])
            parameters = [_resolve(document, p) for p in operation.get("parameters", [])]
            in_path = {p["name"] for p in parameters if p["in"] == "path"}
            assert in_path == set(re.findall(r"{(\w+)}", path)), where
            secured = operation.get("security", document["security"]) != []
            assert secured == (path not in PUBLIC), where
            if secured:
                responses = operation["responses"]
                assert {"401", "403", "503"} <= set(responses), where
                assert "WWW-Authenticate" in _resolve(document, responses["401"])["headers"]
    assert len(operation_ids) == len(set(operation_ids)), "an operationId repeats"


async def test_the_document_is_served_without_a_token(client: Client) -> None:
    async with (
        aiohttp.ClientSession() as session,  # not the test client: it sends a token
        session.get(client.make_url(PATH)) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        assert await response.json() == build_document()


def _token() -> str:
    claims = {"sub": "openapi-user", "role": "authenticated", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def _seed(entities: EntityStore) -> None:
    """Id 1 of each kind exists, as the description's examples say; document 2 is empty."""
    requirement = await entities.create_requirement("AC-1", "Access control", "Review access")
    document = await entities.create_document("Access policy", DOCUMENT)
    await entities.create_document("Empty", "")
    await entities.create_mapping(requirement["id"], document["id"])
    await seed_controls(entities, 3)


async def _schemathesis(url: str, cwd: Path) -> tuple[int, str]:
    """Run the schemathesis CLI against the live server; its exit code and its report."""
    config = cwd / "schemathesis.toml"
    await asyncio.to_thread(config.write_text, CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        url,
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--header",
        f"Authorization: Bearer {_token()}",
    ]
    for operation_id in NOT_FUZZED:
        command += ["--exclude-operation-id", operation_id]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_description(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, tmp_path: Path
) -> None:
    # No dispatch rate limit: dispatch is fuzzed like everything else.
    settings = make_settings(dsn, None, jwt_secret=JWT_SECRET, dispatch_per_minute=0)
    await _seed(entities)
    async with TestServer(create_app(settings, dsn, pool)) as server:
        started = time.monotonic()
        code, report = await _schemathesis(str(server.make_url(PATH)), tmp_path)
        elapsed = time.monotonic() - started
    # A failing request can carry a body of megabytes: shorten each line of the report.
    shortened = "\n".join(line[:400] for line in report.splitlines())
    assert code == 0, f"schemathesis failed in {elapsed:.0f} s:\n{shortened}"
