"""The HTTP contract held still: the OpenAPI document and the bytes of real answers (created
entities, dispatches, jobs, lists, cancels and every kind of 4xx) compared with fixtures in
tests/golden/. Ids, times and ETags vary from run to run and are replaced by placeholders;
everything else (key order, null against absent, status, headers, message text) must match.

After a deliberate change of the contract, rewrite the fixtures with
`AIJOBS_WRITE_GOLDEN=1 .venv/bin/pytest tests/test_http_golden.py` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from service.api import parse, shapes
from service.api.errors import ApiError
from service.api.openapi import build_document
from service.entities.store import EntityStore
from tests.conftest import DOCUMENT, seed_controls, token_for

Client = TestClient[Any, Any]

GOLDEN = Path(__file__).resolve().parent / "golden"
WRITE = os.environ.get("AIJOBS_WRITE_GOLDEN") == "1"
# The headers of an answer that are part of the contract.
HEADERS = (
    "Content-Type",
    "Location",
    "ETag",
    "Retry-After",
    "Cache-Control",
    "Allow",
    "WWW-Authenticate",
)
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+\+00:00")
_ETAG = re.compile(rb'"j([0-9]+)\.[0-9]+-[0-9]+"')


def _stable(raw: bytes) -> str:
    raw = _UUID.sub(b"<uuid>", raw)
    raw = _TIME.sub(b"<time>", raw)
    raw = _ETAG.sub(rb'"j\1.<tag>"', raw)
    return raw.decode()


def _compare(name: str, found: Any) -> None:
    path = GOLDEN / name
    text = orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n"
    if WRITE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    expected = orjson.loads(path.read_bytes())
    if found != expected:
        # A readable account of each difference, rather than one assertion on a huge value.
        if isinstance(found, list):
            for want, got in zip(expected, found, strict=False):
                assert got == want
        assert found == expected


def test_the_openapi_document_is_the_golden_one() -> None:
    _compare("openapi.json", build_document())


async def _answer(client: Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = await client.request(method, path, **kwargs)
    body = await response.read()
    return {
        "request": _stable(f"{method} {path}".encode()),
        "status": response.status,
        "headers": {
            h: _stable(response.headers[h].encode()) for h in HEADERS if h in response.headers
        },
        "body": _stable(body),
    }


async def test_answers_are_the_golden_ones(
    client: Client, entities: EntityStore, pool: asyncpg.Pool
) -> None:
    answers: list[dict[str, Any]] = []

    async def ask(method: str, path: str, **kwargs: Any) -> bytes:
        answers.append(await _answer(client, method, path, **kwargs))
        return str(answers[-1]["body"]).encode()

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    as_json = {"Content-Type": "application/json"}
    # Entities: created, read, listed, and each way a body can be wrong.
    await ask("POST", "/api/requirements", json={"code": "AC-1", "title": "Access control"})
    await ask(
        "POST",
        "/api/requirements",
        json={"code": "AC-2", "title": "Reviews", "description": "Review access", "extra": 1},
    )
    await ask("GET", "/api/requirements/1")
    await ask("GET", "/api/requirements?limit=1")
    await ask("POST", "/api/documents", json={"title": "Access policy", "content": DOCUMENT})
    await ask("POST", "/api/documents", json={"title": "Empty", "content": ""})
    await ask("GET", "/api/documents/1")
    await ask("GET", "/api/documents")
    await ask("GET", "/api/documents/1/controls")
    await ask("POST", "/api/gap-analysis/mappings", json={"requirementId": 1, "documentId": 1})
    await ask("POST", "/api/gap-analysis/mappings", json={"requirementId": 2, "documentId": 2})
    await ask("GET", "/api/gap-analysis/mappings/1")
    await ask("GET", "/api/gap-analysis/mappings")
    await ask("POST", "/api/controls", json={"code": "C-1", "title": "MFA"})
    await ask(
        "POST",
        "/api/controls",
        json=[
            {"code": "C-2", "title": "Backups", "description": None},
            {"code": "C-3", "title": "Logs", "description": "Kept"},
        ],
    )
    for body in (
        {},
        {"code": None, "title": "T"},
        {"code": 5, "title": "T"},
        {"code": " \t", "title": "T"},
        {"code": "x" * 101, "title": "T"},
        {"code": "a\x00b", "title": "T"},
        {"code": "C", "title": ""},
        {"code": "C", "title": "T", "description": 7},
        {"code": "C", "title": "T", "description": "d\x00"},
        {"code": "C", "title": "T", "description": "x" * 50_001},
        {"code": [], "title": 3},
        [],
        "text",
        None,
        3,
    ):
        await ask("POST", "/api/requirements", json=body)
    await ask("POST", "/api/requirements", data=b"", headers=as_json)
    await ask("POST", "/api/requirements", data=b"{code:", headers=as_json)
    await ask("POST", "/api/requirements", data=b"code=R&title=T", headers=form)
    await ask(
        "POST", "/api/requirements", data=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    await ask("POST", "/api/requirements", data=b"[" * 5000 + b"]" * 5000, headers=as_json)
    await ask("POST", "/api/requirements", data=b'{"code": NaN, "title": "T"}', headers=as_json)
    await ask(
        "POST", "/api/requirements", data=b'{"code": "\\ud800", "title": "T"}', headers=as_json
    )
    await ask(
        "POST",
        "/api/requirements",
        data=b'{"code": "A", "code": "B", "title": "T"}',
        headers=as_json,
    )
    await ask(
        "POST", "/api/requirements", json={"code": "R", "title": "T", "description": "z" * 70_000}
    )
    for body in (
        {"title": "T"},
        {"title": "T", "content": None},
        {"title": "T", "content": 1},
        {"title": "", "content": "c"},
        {"title": "T", "content": "\x00"},
    ):
        await ask("POST", "/api/documents", json=body)
    for body in (
        {},
        {"requirementId": 1},
        {"requirementId": "1", "documentId": 1},
        {"requirementId": True, "documentId": 1},
        {"requirementId": 1.0, "documentId": 1},
        {"requirementId": 0, "documentId": 1},
        {"requirementId": 2**63, "documentId": 1},
        {"requirementId": 1, "documentId": -1},
        {"requirementId": 999, "documentId": 1},
        {"requirementId": 1, "documentId": 999},
        {"requirementId": 1, "documentId": 1},
        [1],
    ):
        await ask("POST", "/api/gap-analysis/mappings", json=body)
    for body in (
        [],
        [1],
        [{"code": "C-9", "title": "T"}, "x"],
        [{"code": "C-9", "title": "T"}, {"code": "C-9", "title": "U"}],
        [{"code": "C-9", "title": "T"}, {"code": "C-8"}],
        [{"code": f"C-{i}", "title": "T"} for i in range(1001)],
        {"code": "C-1", "title": "Again"},
        {"title": "T"},
        "text",
        None,
    ):
        await ask("POST", "/api/controls", json=body)
    for path in (
        "/api/requirements/abc",
        "/api/requirements/0",
        "/api/requirements/99999999999999999999",
        "/api/requirements/%D9%A3",
        "/api/requirements/999",
        "/api/documents/999",
        "/api/documents/999/controls",
        "/api/gap-analysis/mappings/999",
        "/api/requirements?limit=abc",
        "/api/requirements?limit=0",
        "/api/requirements?limit=501",
        "/api/documents?limit=",
        "/api/nowhere",
    ):
        await ask("GET", path)
    await ask("DELETE", "/api/requirements")
    await ask("PUT", "/api/ai-jobs")

    # Dispatch: each job type, priorities, keys and refusals.
    await seed_controls(entities, 3)
    await ask("POST", "/api/gap-analysis/ai-match/1")
    await ask("POST", "/api/requirements/1/ai-coverage", json={"priority": 5})
    await ask(
        "POST", "/api/documents/1/ai-map-controls", json={}, headers={"Idempotency-Key": "k-1"}
    )
    await ask("POST", "/api/documents/1/ai-map-controls", headers={"Idempotency-Key": "k-1"})
    await ask("POST", "/api/gap-analysis/ai-match/1", headers={"Idempotency-Key": "k-1"})
    await ask("POST", "/api/documents/2/ai-map-controls")
    await ask("POST", "/api/gap-analysis/ai-match/2")
    await ask("POST", "/api/gap-analysis/ai-match/999")
    await ask("POST", "/api/gap-analysis/ai-match/x")
    await ask("POST", "/api/gap-analysis/ai-match/1", headers={"Idempotency-Key": "x" * 256})
    await ask("POST", "/api/gap-analysis/ai-match/1", data=b"  \n", headers=as_json)
    for raw in (
        b'{"priority": 11}',
        b'{"priority": -11}',
        b'{"priority": "5"}',
        b'{"priority": true}',
        b'{"priority": 1.5}',
        b'{"priority": 2.0}',
        b'{"priority": null}',
        b'{"priority": [1]}',
        b'{"priority": 99999999999999999999}',
        b"[]",
        b"5",
        b"{priority",
    ):
        await ask("POST", "/api/requirements/1/ai-coverage", data=raw, headers=as_json)
    await ask("POST", "/api/requirements/1/ai-coverage", data=b"priority=1", headers=form)

    # Jobs: read, listed, cancelled, with progress and a result.
    job_ids = [r["id"] for r in await pool.fetch("SELECT id FROM ai_jobs ORDER BY created_at")]
    # And the entities an analysis has written to.
    await pool.execute(
        "INSERT INTO document_control_mappings (document_id, control_id, confidence, rationale,"
        " job_id) VALUES (1, 1, 90, 'MFA is required', $1), (1, 2, 40, '', NULL)",
        job_ids[2],
    )
    await pool.execute(
        "UPDATE requirements SET coverage_score = 70, coverage_summary = 'Partly',"
        ' coverage_gaps = \'["Reviews"]\', coverage_documents = \'[{"documentId": 1,'
        ' "score": 70}]\', coverage_analyzed_at = now() WHERE id = 1'
    )
    await pool.execute(
        "UPDATE requirement_mappings SET ai_match_score = 55, ai_match_rationale = 'Some',"
        " ai_match_recommendations = '[\"More\"]', ai_matched_at = now() WHERE id = 1"
    )
    for path in (
        "/api/documents/1/controls",
        "/api/requirements/1",
        "/api/requirements",
        "/api/gap-analysis/mappings/1",
        "/api/gap-analysis/mappings",
    ):
        await ask("GET", path)
    await pool.execute(
        "UPDATE ai_jobs SET progress_current = 1, progress_total = 3,"
        " progress_message = 'Analyzing batch 1 of 3...' WHERE id = $1",
        job_ids[0],
    )
    await pool.execute(
        "UPDATE ai_jobs SET status = 'completed', finished_at = now(),"
        ' result = \'{"aiMatchScore": 80, "aiMatchRationale": "r",'
        ' "aiMatchRecommendations": [], "analyzer": "offline"}\'::jsonb WHERE id = $1',
        job_ids[1],
    )
    for job_id in job_ids:
        await ask("GET", f"/api/ai-jobs/{job_id}")
    first = await client.get(f"/api/ai-jobs/{job_ids[0]}")
    await ask("GET", f"/api/ai-jobs/{job_ids[0]}", headers={"If-None-Match": first.headers["ETag"]})
    await ask("GET", f"/api/ai-jobs/{job_ids[0]}", headers={"If-None-Match": '"other", *'})
    await ask("GET", "/api/ai-jobs")
    await ask("GET", "/api/ai-jobs?status=pending&jobType=ai-match&entityId=1&limit=2")
    for query in ("status=done", "jobType=x", "entityId=x", "entityId=0", "limit=501", "limit=-"):
        await ask("GET", f"/api/ai-jobs?{query}")
    await ask("GET", "/api/ai-jobs/not-a-uuid")
    await ask("GET", "/api/ai-jobs/00000000-0000-0000-0000-000000000000")
    await ask("POST", f"/api/ai-jobs/{job_ids[0]}/cancel")
    await ask("POST", f"/api/ai-jobs/{job_ids[0]}/cancel")
    await ask("POST", "/api/ai-jobs/00000000-0000-0000-0000-000000000000/cancel")
    await ask("GET", f"/api/ai-jobs/{job_ids[0]}/events", headers={"Last-Event-ID": "x"})
    await ask("GET", f"/api/ai-jobs/{job_ids[0]}/events?lastEventId=1")

    # Session and tokens.
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    for body in ({"accessToken": token_for()}, {}, {"accessToken": 5}, {"accessToken": "bad"}):
        await ask("POST", "/api/session", json=body, headers=origin)
    await ask("POST", "/api/session", data=b"[]", headers={**origin, **as_json})
    await ask("GET", "/api/ai-jobs", headers={"Authorization": "Bearer garbage"})
    await ask("GET", "/api/ai-jobs", headers={"Authorization": "Basic x"})
    await ask("GET", "/api/ai-jobs", headers={"Authorization": f"Bearer {token_for(role='anon')}"})
    await ask("GET", "/healthz")

    _compare("answers.json", answers)


@pytest.mark.parametrize(
    "shape",
    [
        shapes.RequirementInput,
        shapes.DocumentInput,
        shapes.ControlInput,
        shapes.MappingInput,
        shapes.SessionInput,
    ],
)
def test_every_wrong_field_is_told_in_our_words(shape: type[shapes.Shape]) -> None:
    """Whatever a field holds, a refused body names the field and what to send, in one of the
    API's own sentences: no pydantic wording reaches a client."""
    ours = re.compile(
        r"'(\w+)' (is required|must be a string|must be an integer id|is out of range"
        r"|must not be empty|is longer than [0-9]+ characters|contains a NUL character)"
    )
    good = {
        "code": "C",
        "title": "T",
        "content": "",
        "requirementId": 1,
        "documentId": 1,
        "accessToken": "t",
    }
    wrong: list[object] = [None, True, 1.5, -1, 0, 2**64, "", " ", "\x00", "x" * 3_000_000]
    wrong += [[], {}, [1], {"a": 1}, "1"]
    for name in (field.alias for field in shape.model_fields.values()):
        for value in wrong:
            body = {key: good[key] for key in good if key != name} | {name: value}
            try:
                parse.validated(shape, body)
            except ApiError as exc:
                assert exc.status == 400 and exc.code == "validation_error"
                told = ours.fullmatch(exc.message)
                assert told is not None and told[1] == name, (name, value, exc.message)
