"""Requirements, documents, controls and mappings."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from service.api import parse, render, shapes
from service.api.errors import ApiError, bad_request, not_found
from service.api.state import ENTITIES, SETTINGS
from service.entities.store import ControlInput

routes = web.RouteTableDef()

MAX_CONTROLS_PER_REQUEST = 1000
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500


def _list_limit(request: web.Request) -> int:
    return parse.query_int(request, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)


@routes.post("/api/requirements")
async def create_requirement(request: web.Request) -> web.Response:
    body = await parse.json_shape(request, shapes.RequirementInput)
    row = await request.app[ENTITIES].create_requirement(
        body.code, body.title, body.description or ""
    )
    return render.json_response(render.requirement_json(row), 201)


@routes.get("/api/requirements")
async def list_requirements(request: web.Request) -> web.Response:
    rows = await request.app[ENTITIES].list_requirements(_list_limit(request))
    return render.json_response([render.requirement_json(r) for r in rows])


@routes.get("/api/requirements/{id}")
async def get_requirement(request: web.Request) -> web.Response:
    requirement_id = parse.path_id(request, what="requirement id")
    row = await request.app[ENTITIES].get_requirement(requirement_id)
    if row is None:
        raise not_found(f"Requirement {requirement_id} not found")
    return render.json_response(render.requirement_json(row))


@routes.post("/api/documents")
async def create_document(request: web.Request) -> web.Response:
    body = await parse.json_shape(
        request, shapes.DocumentInput, request.app[SETTINGS].max_document_body_bytes
    )
    row = await request.app[ENTITIES].create_document(body.title, body.content)
    return render.json_response(render.document_json(row), 201)


@routes.get("/api/documents")
async def list_documents(request: web.Request) -> web.Response:
    rows = await request.app[ENTITIES].list_documents(_list_limit(request))
    return render.json_response([render.document_summary_json(r) for r in rows])


@routes.get("/api/documents/{id}")
async def get_document(request: web.Request) -> web.Response:
    document_id = parse.path_id(request, what="document id")
    row = await request.app[ENTITIES].get_document(document_id)
    if row is None:
        raise not_found(f"Document {document_id} not found")
    return render.json_response(render.document_json(row))


@routes.get("/api/documents/{id}/controls")
async def get_document_controls(request: web.Request) -> web.Response:
    document_id = parse.path_id(request, what="document id")
    entities = request.app[ENTITIES]
    if await entities.get_document(document_id) is None:
        raise not_found(f"Document {document_id} not found")
    rows = await entities.document_controls(document_id)
    return render.json_response([render.document_control_json(r) for r in rows])


def _control_input(item: object, what: str) -> ControlInput:
    control = parse.validated(shapes.ControlInput, item, what)
    return ControlInput(control.code, control.title, control.description or "")


@routes.post("/api/controls")
async def create_controls(request: web.Request) -> web.Response:
    data = await parse.json_body(request)
    many = isinstance(data, list)
    items = data if many else [data]
    if many and not items:
        raise bad_request("The list of controls is empty", "validation_error")
    if len(items) > MAX_CONTROLS_PER_REQUEST:
        raise bad_request(
            f"At most {MAX_CONTROLS_PER_REQUEST} controls per request", "validation_error"
        )
    controls = [
        _control_input(item, f"controls[{i}]" if many else "The request body")
        for i, item in enumerate(items)
    ]
    codes = [c.code for c in controls]
    if len(set(codes)) != len(codes):
        raise bad_request("The list repeats a control code", "validation_error")
    try:
        rows = await request.app[ENTITIES].create_controls(controls)
    except asyncpg.UniqueViolationError:
        raise ApiError(409, "conflict", "A control with this code already exists") from None
    body = [render.control_json(r) for r in rows]
    return render.json_response(body if many else body[0], 201)


@routes.post("/api/gap-analysis/mappings")
async def create_mapping(request: web.Request) -> web.Response:
    body = await parse.json_shape(request, shapes.MappingInput)
    requirement_id, document_id = body.requirement_id, body.document_id
    try:
        row = await request.app[ENTITIES].create_mapping(requirement_id, document_id)
    except asyncpg.ForeignKeyViolationError as exc:
        if "requirement_id" in (exc.constraint_name or ""):
            raise not_found(f"Requirement {requirement_id} not found") from None
        raise not_found(f"Document {document_id} not found") from None
    except asyncpg.UniqueViolationError:
        raise ApiError(
            409,
            "conflict",
            f"Requirement {requirement_id} is already mapped to document {document_id}",
        ) from None
    return render.json_response(render.mapping_json(row), 201)


@routes.get("/api/gap-analysis/mappings")
async def list_mappings(request: web.Request) -> web.Response:
    rows = await request.app[ENTITIES].list_mappings(_list_limit(request))
    return render.json_response([render.mapping_summary_json(r) for r in rows])


@routes.get("/api/gap-analysis/mappings/{id}")
async def get_mapping(request: web.Request) -> web.Response:
    mapping_id = parse.path_id(request, what="mapping id")
    row = await request.app[ENTITIES].get_mapping(mapping_id)
    if row is None:
        raise not_found(f"Mapping {mapping_id} not found")
    return render.json_response(render.mapping_json(row))
