"""The OpenAPI 3.1 description of the HTTP API, served at /api/openapi.json.

The description is data kept here, beside the handlers it describes: tests/test_openapi.py
checks that it covers every route, and runs schemathesis against a live server to keep it true.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web

from service.ai.dispatch import JOB_TYPES
from service.api.entities import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    MAX_CONTROLS_PER_REQUEST,
    MAX_DOCUMENT_CHARS,
)
from service.api.jobs import STATUSES
from service.api.parse import MAX_BIGINT, PRIORITY_RANGE
from service.api.sse import RETRY_MS

PATH = "/api/openapi.json"
PRIORITY_MIN, PRIORITY_MAX = PRIORITY_RANGE
# GET /api/ai-jobs?limit=
JOBS_LIMIT_DEFAULT = 50
JOBS_LIMIT_MAX = 500

routes = web.RouteTableDef()

Schema = dict[str, Any]

# Text that the API stores: any characters but NUL.
_NO_NUL = "^[^\x00]*$"
# The same, with at least one character that is not white space (str.isspace), as the
# handlers strip a value before they call it empty. The class is spelled out so that every
# regex dialect reads it alike: Python's \s also matches U+001C..U+001F, ECMAScript's does not.
_NOT_BLANK = "^[^\x00]*[^\\s\x00\x1c-\x1f][^\x00]*$"
# Printable ASCII, no space at either end (HTTP strips it from a header value).
_HEADER_TOKEN = "^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _response(
    description: str, schema: Schema | None = None, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if headers:
        response["headers"] = headers
    if schema is not None:
        response["content"] = _json(schema)
    return response


def _header(name: str) -> Schema:
    return {"$ref": f"#/components/headers/{name}"}


def _answer(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


_TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
_ID: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_BIGINT}
_SCORE: Schema = {"type": "integer", "minimum": 0, "maximum": 100}


def _text(max_length: int, *, blank: bool = False) -> Schema:
    return {"type": "string", "maxLength": max_length, "pattern": _NO_NUL if blank else _NOT_BLANK}


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
    }


def _schemas() -> dict[str, Schema]:
    error = _object(
        {
            "error": _object(
                {
                    "code": {
                        "type": "string",
                        "description": "Stable and machine readable, e.g. `not_found`, "
                        "`validation_error`, `invalid_id`, `not_analysable`",
                    },
                    "message": {"type": "string", "description": "For people"},
                }
            )
        }
    )
    requirement_input = _object(
        {
            "code": _text(100),
            "title": _text(1000),
            "description": _nullable(_text(50_000, blank=True)),
        },
        optional=("description",),
    )
    document_input = _object(
        {"title": _text(1000), "content": _text(MAX_DOCUMENT_CHARS, blank=True)}
    )
    document_input["properties"]["content"]["description"] = (
        "May be empty; an empty document cannot be analysed"
    )
    control_input = _object(
        {
            "code": _text(100),
            "title": _text(1000),
            "description": _nullable(_text(50_000, blank=True)),
        },
        optional=("description",),
    )
    mapping_input = _object({"requirementId": _ID, "documentId": _ID})
    document_score = _object({"documentId": _ID, "score": _SCORE})
    requirement = _object(
        {
            "id": _ID,
            "code": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "coverageScore": _nullable(_SCORE),
            "coverageSummary": _nullable({"type": "string"}),
            "coverageGaps": _nullable({"type": "array", "items": {"type": "string"}}),
            "coverageDocuments": _nullable({"type": "array", "items": _ref("DocumentScore")}),
            "coverageAnalyzedAt": _nullable(_TIMESTAMP),
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
        }
    )
    requirement["description"] = "The coverage fields are null until an ai-coverage job completes"
    document = _object(
        {
            "id": _ID,
            "title": {"type": "string"},
            "content": {"type": "string"},
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
        }
    )
    control = _object(
        {
            "id": _ID,
            "code": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "createdAt": _TIMESTAMP,
        }
    )
    mapping = _object(
        {
            "id": _ID,
            "requirementId": _ID,
            "documentId": _ID,
            "aiMatchScore": _nullable(_SCORE),
            "aiMatchRationale": _nullable({"type": "string"}),
            "aiMatchRecommendations": _nullable({"type": "array", "items": {"type": "string"}}),
            "aiMatchedAt": _nullable(_TIMESTAMP),
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
        }
    )
    mapping["description"] = "The aiMatch fields are null until an ai-match job completes"
    document_summary = _object(
        {
            "id": _ID,
            "title": {"type": "string"},
            "length": {
                "type": "integer",
                "minimum": 0,
                "description": "The number of characters of the content",
            },
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
        }
    )
    mapping_summary = {
        "allOf": [
            _ref("Mapping"),
            _object(
                {
                    "requirementCode": {"type": "string"},
                    "requirementTitle": {"type": "string"},
                    "documentTitle": {"type": "string"},
                }
            ),
        ]
    }
    document_control = _object(
        {
            "controlId": _ID,
            "code": {"type": "string"},
            "title": {"type": "string"},
            "confidence": _SCORE,
            "rationale": {"type": "string"},
            "jobId": _nullable({"type": "string", "format": "uuid"}),
            "createdAt": _TIMESTAMP,
        }
    )
    document_control["description"] = "A control that an ai-map-controls job found in a document"
    provenance: dict[str, Schema] = {
        "analyzer": {"type": "string", "enum": ["claude", "offline"]},
        "model": {"type": "string"},
        "usage": {"type": "object", "description": "Model calls and tokens spent"},
    }
    provenance_names = tuple(provenance)
    match_result = _object(
        {
            "aiMatchScore": _SCORE,
            "aiMatchRationale": {"type": "string"},
            "aiMatchRecommendations": {"type": "array", "items": {"type": "string"}},
            "sections": {"type": "integer", "minimum": 2},
            **provenance,
        },
        optional=("sections", *provenance_names),
    )
    coverage_result = _object(
        {
            "coverageScore": _SCORE,
            "summary": {"type": "string"},
            "gaps": {"type": "array", "items": {"type": "string"}},
            "documents": {"type": "array", "items": _ref("DocumentScore")},
            "parts": {"type": "integer", "minimum": 2},
            **provenance,
        },
        optional=("parts", *provenance_names),
    )
    map_controls_result = _object(
        {
            "mappedControls": {
                "type": "array",
                "items": _object(
                    {"controlId": _ID, "confidence": _SCORE, "rationale": {"type": "string"}}
                ),
            },
            "batches": {"type": "integer", "minimum": 0},
            "sections": {"type": "integer", "minimum": 2},
            **provenance,
        },
        optional=("sections", *provenance_names),
    )
    progress = _object(
        {
            "current": _nullable({"type": "integer"}),
            "total": _nullable({"type": "integer"}),
        }
    )
    job_status: Schema = {"type": "string", "enum": list(STATUSES)}
    job = _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "jobType": _ref("JobType"),
            "entityId": _ID,
            "status": _ref("JobStatus"),
            "progressMessage": _nullable({"type": "string"}),
            "progress": _nullable(_ref("Progress")),
            "result": {
                "description": "Null until the job completes; then the result of its job type",
                "anyOf": [
                    {"type": "null"},
                    _ref("MatchResult"),
                    _ref("CoverageResult"),
                    _ref("MapControlsResult"),
                ],
            },
            "errorMessage": _nullable({"type": "string"}),
            "attempts": {"type": "integer", "minimum": 0},
            "maxAttempts": {
                "type": "integer",
                "minimum": 1,
                "description": "Grows by one each time a rate limit or an overloaded model "
                "sends the job back to wait: such a wait costs no attempt",
            },
            "priority": {
                "type": "integer",
                "minimum": PRIORITY_MIN,
                "maximum": PRIORITY_MAX,
                "description": "Higher is started first",
            },
            "runAfter": _TIMESTAMP,
            "startedAt": _nullable(_TIMESTAMP),
            "finishedAt": _nullable(_TIMESTAMP),
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
        }
    )
    job["description"] = (
        "`entityId` is a mapping id for ai-match, a requirement id for ai-coverage and a "
        "document id for ai-map-controls. Clients stop polling on `completed` and `failed`; "
        "a cancelled job is `failed` with `errorMessage` saying so."
    )
    dispatched = _object(
        {"jobId": {"type": "string", "format": "uuid"}, "status": _ref("JobStatus")}
    )
    dispatched["description"] = (
        "The job recorded for the analysis: a new one (`pending`), the one already pending or "
        "running for the same entity, or the one named by the same Idempotency-Key"
    )
    dispatch_options = _object(
        {
            "priority": {
                "type": "integer",
                "minimum": PRIORITY_MIN,
                "maximum": PRIORITY_MAX,
                "default": 0,
                "description": "Higher is started first; priority comes before the fair "
                "share between users. Out of range or not an integer: 400 invalid_priority",
            }
        },
        optional=("priority",),
    )
    return {
        "Error": error,
        "DispatchOptions": dispatch_options,
        "RequirementInput": requirement_input,
        "DocumentInput": document_input,
        "ControlInput": control_input,
        "MappingInput": mapping_input,
        "Requirement": requirement,
        "Document": document,
        "Control": control,
        "Mapping": mapping,
        "DocumentSummary": document_summary,
        "MappingSummary": mapping_summary,
        "DocumentControl": document_control,
        "DocumentScore": document_score,
        "JobType": {"type": "string", "enum": list(JOB_TYPES)},
        "JobStatus": job_status,
        "Progress": progress,
        "MatchResult": match_result,
        "CoverageResult": coverage_result,
        "MapControlsResult": map_controls_result,
        "Job": job,
        "Dispatched": dispatched,
        "Session": _object(
            {
                "userId": {"type": "string"},
                "role": {"type": "string", "enum": ["authenticated", "service_role"]},
                "expiresAt": {"type": ["string", "null"], "format": "date-time"},
            }
        ),
    }


def _components() -> dict[str, Any]:
    seconds = {"type": "string", "pattern": "^[0-9]+$"}
    error = _ref("Error")
    return {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "HS256, signed with the server's AIJOBS_JWT_SECRET; claims `sub`, "
                "`role` (`authenticated` or `service_role`) and `exp`",
            },
            "accessTokenQuery": {
                "type": "apiKey",
                "in": "query",
                "name": "access_token",
                "description": "The same JWT, for EventSource clients, which cannot send headers",
            },
            "sessionCookie": {
                "type": "apiKey",
                "in": "cookie",
                "name": "aijobs_token",
                "description": "The same JWT in a browser session's cookie: the one named by "
                "AIJOBS_AUTH_COOKIE (`aijobs_token` by default, set by POST /api/session) holding "
                "the raw token, or the session cookie of @supabase/ssr, `sb-<ref>-auth-token` "
                "(possibly split into `.0`, `.1`, ...). The Authorization header wins over a "
                "cookie. A POST or DELETE authenticated by a cookie must carry an Origin (else "
                "Referer) that is the API's own origin or one of AIJOBS_CORS_ORIGINS, or it is "
                "refused with 403 `cross_site_request`.",
            },
        },
        "headers": {
            "RetryAfter": {
                "description": "Seconds to wait before asking again",
                "schema": seconds,
            },
            "RequiredRetryAfter": {
                "description": "Seconds to wait before asking again",
                "required": True,
                "schema": seconds,
            },
            "WWWAuthenticate": {
                "description": "The Bearer challenge",
                "required": True,
                "schema": {"type": "string"},
            },
            "Location": {
                "description": "The job's URL, `/api/ai-jobs/{jobId}`",
                "required": True,
                "schema": {"type": "string", "format": "uri-reference"},
            },
            "ETag": {
                "description": "Changes whenever the job's JSON changes",
                "required": True,
                "schema": {"type": "string"},
            },
        },
        "parameters": {
            "Id": {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "The entity's id",
                "schema": _ID,
                "example": 1,
            },
            "JobId": {
                "name": "jobId",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "The same key answers with the same job; the same key for "
                "another job type or entity is a 422",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": _HEADER_TOKEN,
                },
            },
        },
        "responses": {
            "BadRequest": _response(
                "Malformed: not JSON, a missing field, a wrong type, a malformed id or query",
                error,
            ),
            "Unauthorized": _response(
                "No bearer token, or one that is invalid or expired",
                error,
                {"WWW-Authenticate": _header("WWWAuthenticate")},
            ),
            "Forbidden": _response(
                "The token's role may not use this API, or a request authenticated by a cookie "
                "came from another origin (`cross_site_request`)",
                error,
            ),
            "NotFound": _response("No such entity or job", error),
            "Conflict": _response("It exists already", error),
            "PayloadTooLarge": _response(
                "The request body is larger than AIJOBS_MAX_BODY bytes (64 KiB by default), or "
                "for a document AIJOBS_MAX_DOCUMENT_BODY bytes (2 MiB by default)",
                error,
            ),
            "TooManyRequests": _response(
                "Too many requests; try again after Retry-After seconds",
                error,
                {"Retry-After": _header("RequiredRetryAfter")},
            ),
            "Unavailable": _response(
                "The database is unavailable; try again shortly",
                error,
                {"Retry-After": _header("RequiredRetryAfter")},
            ),
        },
        "schemas": _schemas(),
    }


def _errors(*statuses: int) -> dict[str, Any]:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        413: "PayloadTooLarge",
        429: "TooManyRequests",
        503: "Unavailable",
    }
    return {str(status): _answer(names[status]) for status in (*statuses, 401, 403, 503)}


def _body(schema: Schema) -> dict[str, Any]:
    return {"required": True, "content": _json(schema)}


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


def _create(
    operation_id: str,
    summary: str,
    tag: str,
    body: Schema,
    created: Schema,
    *,
    errors: tuple[int, ...] = (),
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    response = _response("Created", created)
    if links:
        response["links"] = links
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "requestBody": _body(body),
        "responses": {"201": response, **_errors(400, 413, *errors)},
    }


def _get_entity(operation_id: str, summary: str, tag: str, schema: Schema) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "parameters": [_param("Id")],
        "responses": {"200": _response("Found", schema), **_errors(400, 404)},
    }


def _query(name: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "query",
        "schema": schema,
        "allowEmptyValue": True,
        "description": "Optional; an empty value counts as absent",
    }


def _list(operation_id: str, summary: str, tag: str, item: Schema) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "parameters": [
            _query(
                "limit",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": LIST_LIMIT_MAX,
                    "default": LIST_LIMIT_DEFAULT,
                },
            )
        ],
        "responses": {
            "200": _response("Newest first", {"type": "array", "items": item}),
            **_errors(400),
        },
    }


def _dispatch(
    operation_id: str, job_type: str, entity: str, unanalysable: str | None = None
) -> dict[str, Any]:
    accepted = _response(
        "The job, recorded; follow it at Location",
        _ref("Dispatched"),
        {"Location": _header("Location")},
    )
    job_id = "$response.body#/jobId"
    accepted["links"] = {
        "GetJob": _link("getJob", jobId=job_id),
        "CancelJob": _link("cancelJob", jobId=job_id),
    }
    reused = "the Idempotency-Key was used for another job type or entity"
    unprocessable = _response(
        f"Nothing to analyse ({unanalysable}), or {reused}"
        if unanalysable
        else reused.capitalize(),
        _ref("Error"),
    )
    return {
        "operationId": operation_id,
        "summary": f"Start an {job_type} analysis of a {entity}",
        "description": "Validates, records a job and answers at once; never waits for the model.",
        "tags": ["dispatch"],
        "parameters": [
            {**_param("Id"), "description": f"The {entity}'s id"},
            _param("IdempotencyKey"),
        ],
        "requestBody": {
            "required": False,
            "description": "Optional; no body is priority 0",
            "content": _json(_ref("DispatchOptions")),
        },
        "responses": {
            "202": accepted,
            "422": unprocessable,
            **_errors(400, 404, 413),
            "429": _response(
                "`too_many_requests`: more than AIJOBS_DISPATCH_PER_MINUTE dispatches in a "
                "minute; `budget_exhausted`: the user's model calls cost their daily budget "
                "(AIJOBS_USER_DAILY_BUDGET_USD, or their own in ai_user_budgets) since 00:00 "
                "UTC, and the message says the budget and the spend. Retry-After: seconds "
                "until a dispatch can be accepted (for a budget, until the next 00:00 UTC)",
                _ref("Error"),
                {"Retry-After": _header("RequiredRetryAfter")},
            ),
        },
    }


def _paths() -> dict[str, Any]:
    control_or_list: Schema = {
        "oneOf": [
            _ref("ControlInput"),
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_CONTROLS_PER_REQUEST,
                "items": _ref("ControlInput"),
                "description": "Codes must differ from each other",
            },
        ]
    }
    created_controls: Schema = {
        "oneOf": [_ref("Control"), {"type": "array", "items": _ref("Control")}],
        "description": "A control for an object, a list for a list",
    }
    job_id = _param("JobId")
    job_headers = {
        "ETag": _header("ETag"),
        "Retry-After": {
            "$ref": "#/components/headers/RetryAfter",
            "description": "While the job is pending or processing: how often to poll",
        },
        "Cache-Control": {"schema": {"type": "string", "const": "no-cache"}},
    }
    event_id: Schema = {"type": "string", "pattern": "^\\s*[0-9]*\\s*$"}
    job_event = (
        f"`retry: {RETRY_MS}`, then events `event: job`, `id: <event sequence number>`, "
        "`data: <the job as JSON, as GET /api/ai-jobs/{jobId} shows it>`; a `: keepalive` "
        "comment after a silence. The first event is the job's current state (or, resuming, "
        "the first event after Last-Event-ID); the stream ends after the event that completes "
        "or fails the job."
    )
    health = _object({"status": {"type": "string"}, "reason": {"type": "string"}})
    health["required"] = ["status"]
    public: list[dict[str, Any]] = []
    return {
        "/api/requirements": {
            "post": _create(
                "createRequirement",
                "Create a requirement",
                "requirements",
                _ref("RequirementInput"),
                _ref("Requirement"),
                links={
                    "GetRequirement": _link("getRequirement", id="$response.body#/id"),
                    "DispatchCoverage": _link("dispatchCoverage", id="$response.body#/id"),
                },
            ),
            "get": _list(
                "listRequirements", "The requirements", "requirements", _ref("Requirement")
            ),
        },
        "/api/requirements/{id}": {
            "get": _get_entity(
                "getRequirement", "A requirement", "requirements", _ref("Requirement")
            )
        },
        "/api/requirements/{id}/ai-coverage": {
            "post": _dispatch("dispatchCoverage", "ai-coverage", "requirement")
        },
        "/api/documents": {
            "post": _create(
                "createDocument",
                "Create a document",
                "documents",
                _ref("DocumentInput"),
                _ref("Document"),
                links={
                    "GetDocument": _link("getDocument", id="$response.body#/id"),
                    "GetDocumentControls": _link("getDocumentControls", id="$response.body#/id"),
                    "DispatchMapControls": _link("dispatchMapControls", id="$response.body#/id"),
                },
            ),
            "get": _list(
                "listDocuments",
                "The documents, without their content",
                "documents",
                _ref("DocumentSummary"),
            ),
        },
        "/api/documents/{id}": {
            "get": _get_entity("getDocument", "A document", "documents", _ref("Document"))
        },
        "/api/documents/{id}/controls": {
            "get": _get_entity(
                "getDocumentControls",
                "The controls mapped to a document, by its last ai-map-controls job",
                "documents",
                {"type": "array", "items": _ref("DocumentControl")},
            )
        },
        "/api/documents/{id}/ai-map-controls": {
            "post": _dispatch(
                "dispatchMapControls",
                "ai-map-controls",
                "document",
                "an empty document, or no controls in the catalogue",
            )
        },
        "/api/controls": {
            "post": _create(
                "createControls",
                "Add a control, or a list of them, to the catalogue",
                "controls",
                control_or_list,
                created_controls,
                errors=(409,),
            )
        },
        "/api/gap-analysis/mappings": {
            "post": _create(
                "createMapping",
                "Map a requirement to a document",
                "mappings",
                _ref("MappingInput"),
                _ref("Mapping"),
                errors=(404, 409),
                links={
                    "GetMapping": _link("getMapping", id="$response.body#/id"),
                    "DispatchMatch": _link("dispatchMatch", id="$response.body#/id"),
                },
            ),
            "get": _list(
                "listMappings",
                "The mappings, with their requirement's code and title and their document's title",
                "mappings",
                _ref("MappingSummary"),
            ),
        },
        "/api/gap-analysis/mappings/{id}": {
            "get": _get_entity("getMapping", "A mapping", "mappings", _ref("Mapping"))
        },
        "/api/gap-analysis/ai-match/{id}": {
            "post": _dispatch(
                "dispatchMatch", "ai-match", "mapping", "the mapping's document has no content"
            )
        },
        "/api/ai-jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "Your jobs, newest first",
                "tags": ["jobs"],
                "parameters": [
                    _query("status", _ref("JobStatus")),
                    _query("jobType", _ref("JobType")),
                    _query("entityId", _ID),
                    _query(
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": JOBS_LIMIT_MAX,
                            "default": JOBS_LIMIT_DEFAULT,
                        },
                    ),
                ],
                "responses": {
                    "200": _response("The jobs", {"type": "array", "items": _ref("Job")}),
                    **_errors(400),
                },
            }
        },
        "/api/ai-jobs/{jobId}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job",
                "tags": ["jobs"],
                "parameters": [
                    job_id,
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "description": "The ETag of the job as last seen",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _response("The job", _ref("Job"), job_headers),
                    "304": {
                        "description": "Unchanged since the ETag in If-None-Match",
                        "headers": job_headers,
                    },
                    **_errors(400, 404),
                },
            }
        },
        "/api/ai-jobs/{jobId}/events": {
            "get": {
                "operationId": "getJobEvents",
                "summary": "Follow a job as server-sent events",
                "description": "Errors are answered as JSON before the stream starts.",
                "tags": ["jobs"],
                "security": [{"bearerAuth": []}, {"accessTokenQuery": []}, {"sessionCookie": []}],
                "parameters": [
                    job_id,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "Resume after this event: every later event, in "
                        "order, however many (0: the job's whole log)",
                        "schema": event_id,
                    },
                    {
                        "name": "lastEventId",
                        "in": "query",
                        "description": "Resume after this event, for clients that cannot "
                        "send headers",
                        "schema": event_id,
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The stream of the job's states",
                        "headers": {
                            "Cache-Control": {"schema": {"type": "string", "const": "no-cache"}}
                        },
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string", "description": job_event}
                            }
                        },
                    },
                    "204": {
                        "description": "The job has finished and the client, resuming, has had "
                        "every event: EventSource stops reconnecting"
                    },
                    **_errors(400, 404, 429),
                },
            }
        },
        "/api/ai-jobs/{jobId}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a pending or running job",
                "description": "The job ends `failed` with `errorMessage` saying it was "
                "cancelled; a running job's actor is stopped and its entity left untouched.",
                "tags": ["jobs"],
                "parameters": [job_id],
                "responses": {
                    "200": _response(
                        "The job, now failed",
                        _ref("Job"),
                    ),
                    "409": _response("The job had already finished", _ref("Error")),
                    **_errors(400, 404),
                },
            }
        },
        "/api/session": {
            "post": {
                "operationId": "signIn",
                "summary": "Keep a token in the browser's session cookie",
                "description": "Verifies the token as every request's is verified, and answers "
                "with `Set-Cookie` (HttpOnly, SameSite=Lax, until the token expires) of the "
                "cookie named by AIJOBS_AUTH_COOKIE. The Origin (else Referer) must be the API's "
                "own origin or one of AIJOBS_CORS_ORIGINS.",
                "tags": ["session"],
                "security": public,
                "requestBody": _body(_object({"accessToken": _text(16_384)})),
                "responses": {
                    "200": _response("Signed in", _ref("Session")),
                    **_errors(400, 413),
                },
            },
            "delete": {
                "operationId": "signOut",
                "summary": "Remove the session cookie",
                "description": "The Origin (else Referer) must be the API's own origin or one of "
                "AIJOBS_CORS_ORIGINS.",
                "tags": ["session"],
                "security": public,
                "responses": {
                    "204": {"description": "Signed out"},
                    "403": _answer("Forbidden"),
                },
            },
        },
        PATH: {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This description",
                "tags": ["meta"],
                "security": public,
                "responses": {"200": _response("OpenAPI 3.1", {"type": "object"})},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process answers",
                "tags": ["operations"],
                "security": public,
                "responses": {"200": _response("Alive", health)},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The database is reachable and its migrations are current",
                "tags": ["operations"],
                "security": public,
                "responses": {
                    "200": _response("Ready", health),
                    "503": _response("Not ready, and why", health),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "tags": ["operations"],
                "security": public,
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def _in_order(paths: dict[str, Any]) -> dict[str, Any]:
    """Each operation's responses by status code."""
    for item in paths.values():
        for operation in item.values():
            operation["responses"] = dict(sorted(operation["responses"].items()))
    return paths


def _version() -> str:
    try:
        return metadata.version("aijobs")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_document() -> dict[str, Any]:
    """The OpenAPI document, as a new dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aijobs",
            "version": _version(),
            "description": "Slow AI work behind a web application: dispatch an analysis, get a "
            "job id at once, follow the job by polling or server-sent events. JSON bodies with "
            'camelCase keys; every error is `{"error": {"code", "message"}}` with a 4xx status '
            "for anything the client did wrong, 503 while the database is unreachable. Web "
            "apps on the origins listed in AIJOBS_CORS_ORIGINS may call it from a browser: "
            "CORS preflights (OPTIONS) are answered 204 without credentials, and answers expose "
            "ETag, Location and Retry-After; other origins get no CORS headers.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "tags": [
            {"name": name}
            for name in (
                "requirements",
                "documents",
                "controls",
                "mappings",
                "dispatch",
                "jobs",
                "session",
                "meta",
                "operations",
            )
        ],
        "paths": _in_order(_paths()),
        "components": _components(),
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as JSON, built once per process."""
    return orjson.dumps(build_document())


@routes.get(PATH)
async def openapi_json(_request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json")
