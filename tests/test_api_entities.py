"""The entity endpoints: what a client sends, what it gets back, and what is stored."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


async def test_requirement_created_and_read(client: Client, pool: asyncpg.Pool) -> None:
    response = await client.post(
        "/api/requirements",
        json={"code": "R-1", "title": "Access reviews", "description": "Review access."},
    )
    assert response.status == 201
    created = await response.json()
    assert created["code"] == "R-1"
    assert created["coverageScore"] is None
    row = await pool.fetchrow("SELECT * FROM requirements WHERE id = $1", created["id"])
    assert row["title"] == "Access reviews"

    response = await client.get(f"/api/requirements/{created['id']}")
    assert response.status == 200
    assert (await response.json())["description"] == "Review access."


async def test_document_created_and_read(client: Client) -> None:
    text = "Quotes ' \" emoji \U0001f512 rtl \u200f and SQL '); DROP TABLE documents; --"
    response = await client.post("/api/documents", json={"title": "Policy", "content": text})
    assert response.status == 201
    created = await response.json()
    response = await client.get(f"/api/documents/{created['id']}")
    assert (await response.json())["content"] == text


async def test_controls_created_one_or_many(client: Client, pool: asyncpg.Pool) -> None:
    one = await client.post(
        "/api/controls", json={"code": "AC-1", "title": "Access", "description": "d"}
    )
    assert one.status == 201
    assert (await one.json())["code"] == "AC-1"
    many = await client.post(
        "/api/controls",
        json=[{"code": "AC-2", "title": "Two"}, {"code": "AC-3", "title": "Three"}],
    )
    assert many.status == 201
    assert [c["code"] for c in await many.json()] == ["AC-2", "AC-3"]
    assert await pool.fetchval("SELECT count(*) FROM controls") == 3


async def test_duplicate_control_code_is_a_conflict_and_writes_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    await client.post("/api/controls", json={"code": "AC-1", "title": "Access"})
    response = await client.post(
        "/api/controls", json=[{"code": "AC-9", "title": "New"}, {"code": "AC-1", "title": "Dup"}]
    )
    await error_of(response, 409)
    assert await pool.fetchval("SELECT count(*) FROM controls") == 1


async def test_mapping_created_and_read(client: Client) -> None:
    req = await (await client.post("/api/requirements", json={"code": "R", "title": "T"})).json()
    doc = await (await client.post("/api/documents", json={"title": "D", "content": "x"})).json()
    response = await client.post(
        "/api/gap-analysis/mappings", json={"requirementId": req["id"], "documentId": doc["id"]}
    )
    assert response.status == 201
    mapping = await response.json()
    assert mapping["requirementId"] == req["id"] and mapping["documentId"] == doc["id"]
    assert mapping["aiMatchScore"] is None
    response = await client.get(f"/api/gap-analysis/mappings/{mapping['id']}")
    assert (await response.json())["id"] == mapping["id"]
    again = await client.post(
        "/api/gap-analysis/mappings", json={"requirementId": req["id"], "documentId": doc["id"]}
    )
    await error_of(again, 409)


async def test_mapping_to_missing_entities_is_404(client: Client, pool: asyncpg.Pool) -> None:
    doc = await (await client.post("/api/documents", json={"title": "D", "content": "x"})).json()
    response = await client.post(
        "/api/gap-analysis/mappings", json={"requirementId": 999, "documentId": doc["id"]}
    )
    assert "Requirement 999" in (await error_of(response, 404))["message"]
    req = await (await client.post("/api/requirements", json={"code": "R", "title": "T"})).json()
    response = await client.post(
        "/api/gap-analysis/mappings", json={"requirementId": req["id"], "documentId": 999}
    )
    assert "Document 999" in (await error_of(response, 404))["message"]
    assert await pool.fetchval("SELECT count(*) FROM requirement_mappings") == 0


async def test_document_controls_lists_mapped_controls(client: Client) -> None:
    doc = await (await client.post("/api/documents", json={"title": "D", "content": "x"})).json()
    response = await client.get(f"/api/documents/{doc['id']}/controls")
    assert response.status == 200
    assert await response.json() == []
    await error_of(await client.get("/api/documents/424242/controls"), 404)


BAD_BODIES = [
    ("/api/requirements", b"{not json", "invalid_json"),
    ("/api/requirements", b"", "invalid_json"),
    ("/api/requirements", b"[1, 2]", "invalid_body"),
    ("/api/requirements", b'{"title": "no code"}', "validation_error"),
    ("/api/requirements", b'{"code": 5, "title": "t"}', "validation_error"),
    ("/api/requirements", b'{"code": "  ", "title": "t"}', "validation_error"),
    ("/api/requirements", b'{"code": "c", "title": "t\\u0000"}', "validation_error"),
    ("/api/documents", b'{"title": "t"}', "validation_error"),
    ("/api/documents", b'{"title": "t", "content": 12}', "validation_error"),
    ("/api/controls", b"[]", "validation_error"),
    ("/api/controls", b'[{"code": "A", "title": "t"}, 3]', "invalid_body"),
    (
        "/api/controls",
        b'[{"code": "A", "title": "t"}, {"code": "A", "title": "u"}]',
        "validation_error",
    ),
    ("/api/gap-analysis/mappings", b'{"requirementId": "1", "documentId": 1}', "validation_error"),
    ("/api/gap-analysis/mappings", b'{"requirementId": true, "documentId": 1}', "validation_error"),
    ("/api/gap-analysis/mappings", b'{"requirementId": 1}', "validation_error"),
    (
        "/api/gap-analysis/mappings",
        b'{"requirementId": 1, "documentId": 99999999999999999999}',
        "validation_error",
    ),
]


async def test_bad_bodies_get_400_and_write_nothing(client: Client, pool: asyncpg.Pool) -> None:
    for path, body, code in BAD_BODIES:
        response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        error = await error_of(response, 400)
        assert error["code"] == code, (path, body, error)
    counts = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM requirements) AS r, (SELECT count(*) FROM documents) AS d,"
        " (SELECT count(*) FROM controls) AS c, (SELECT count(*) FROM requirement_mappings) AS m"
    )
    assert tuple(counts) == (0, 0, 0, 0)


async def test_malformed_and_unknown_ids(client: Client) -> None:
    for path in (
        "/api/requirements/abc",
        "/api/documents/-1",
        "/api/documents/0",
        "/api/gap-analysis/mappings/1.5",
        "/api/requirements/99999999999999999999",
        "/api/documents/%D9%A3",
    ):
        error = await error_of(await client.get(path), 400)
        assert error["code"] == "invalid_id", path
    for path in (
        "/api/requirements/12345",
        "/api/documents/12345",
        "/api/gap-analysis/mappings/12345",
    ):
        await error_of(await client.get(path), 404)


async def test_unknown_route_and_method_answer_json(client: Client) -> None:
    await error_of(await client.get("/api/nothing-here"), 404)
    error = await error_of(await client.delete("/api/requirements"), 405)
    assert error["code"] == "method_not_allowed"


async def test_lists_of_requirements_documents_and_mappings(client: Client) -> None:
    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(path, json=body)
        assert response.status == 201, await response.text()
        return await response.json()  # type: ignore[no-any-return]

    reqs = [
        await post("/api/requirements", {"code": f"R-{i}", "title": f"Req {i}"}) for i in (1, 2)
    ]
    text = "Policy \U0001f512 text"
    docs = [
        await post("/api/documents", {"title": "Policy", "content": text}),
        await post("/api/documents", {"title": "Empty", "content": ""}),
    ]
    mapping = await post(
        "/api/gap-analysis/mappings", {"requirementId": reqs[1]["id"], "documentId": docs[0]["id"]}
    )

    requirements = await (await client.get("/api/requirements")).json()
    assert requirements == [
        await (await client.get(f"/api/requirements/{r['id']}")).json() for r in reqs
    ]

    documents = await (await client.get("/api/documents")).json()
    assert [set(d) for d in documents] == [{"id", "title", "length", "createdAt", "updatedAt"}] * 2
    assert [(d["id"], d["title"], d["length"]) for d in documents] == [
        (docs[0]["id"], "Policy", len(text)),
        (docs[1]["id"], "Empty", 0),
    ]

    mappings = await (await client.get("/api/gap-analysis/mappings")).json()
    assert mappings == [
        {
            **await (await client.get(f"/api/gap-analysis/mappings/{mapping['id']}")).json(),
            "requirementCode": "R-2",
            "requirementTitle": "Req 2",
            "documentTitle": "Policy",
        }
    ]

    for path in ("/api/requirements", "/api/documents"):
        first = await (await client.get(f"{path}?limit=1")).json()
        assert [item["id"] for item in first] == [
            min(r["id"] for r in (reqs if "req" in path else docs))
        ]
        for limit in ("0", "501", "x"):
            error = await error_of(await client.get(f"{path}?limit={limit}"), 400)
            assert error["code"] == "invalid_query"
