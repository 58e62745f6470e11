"""The OpenAPI 3.1 description of the HTTP API, served at /api/openapi.json.

The schemas of request bodies and answers are derived from their shapes (service/api/shapes.py),
which validation and rendering use too; the operations (paths, parameters, statuses, headers)
are data kept here, beside the handlers they describe. tests/test_openapi.py checks that it
covers every route, and runs schemathesis against a live server to keep it true.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from service.api import shapes
from service.api.entities import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, MAX_CONTROLS_PER_REQUEST
from service.api.jobs import JOBS_LIMIT_DEFAULT, JOBS_LIMIT_MAX
from service.api.sse import RETRY_MS

PATH = "/api/openapi.json"

routes = web.RouteTableDef()

Schema = dict[str, Any]

# Printable ASCII, no space at either end (HTTP strips it from a header value).
_HEADER_TOKEN = "^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"

# The shapes that are components of the document, in its order; a shape used only inside
# another (the detail of an error, a mapped control, the sign-in body) is written in place.
COMPONENTS: tuple[type[Any] | tuple[str, Any], ...] = (
    shapes.Error,
    shapes.DispatchOptions,
    shapes.RequirementInput,
    shapes.DocumentInput,
    shapes.ControlInput,
    shapes.MappingInput,
    shapes.Requirement,
    shapes.Document,
    shapes.Control,
    shapes.Mapping,
    shapes.DocumentSummary,
    shapes.MappingSummary,
    shapes.DocumentControl,
    shapes.DocumentScore,
    ("JobType", shapes.JobType),
    ("JobStatus", shapes.JobStatus),
    shapes.Progress,
    shapes.MatchResult,
    shapes.CoverageResult,
    shapes.MapControlsResult,
    shapes.Job,
    shapes.JobDelta,
    shapes.Dispatched,
    shapes.Session,
)
_DEFS = "#/$defs/"


class _Generator(GenerateJsonSchema):
    """JSON Schema as this document writes it: no titles, `"type": [T, "null"]` for a simple
    nullable value, and no `"default": null` for a field that may be left out (leaving it out
    is not sending null)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if "anyOf" in inner:
            return {**inner, "anyOf": [{"type": "null"}, *inner["anyOf"]]}
        if isinstance(inner.get("type"), str) and "$ref" not in inner:
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if schema.get("default") is None:
            json_schema.pop("default", None)
        return json_schema


def _named_components() -> list[tuple[str, Any]]:
    return [item if isinstance(item, tuple) else (item.__name__, item) for item in COMPONENTS]


@functools.cache
def _definitions() -> dict[str, Schema]:
    """The JSON Schema of each shape, by name: the components and the shapes inside them."""
    inputs = [*_named_components(), ("SessionInput", shapes.SessionInput)]
    top, definitions = TypeAdapter.json_schemas(
        [(name, "validation", TypeAdapter(kind)) for name, kind in inputs],
        ref_template=_DEFS + "{model}",
        schema_generator=_Generator,
    )
    defs: dict[str, Schema] = dict(definitions.get("$defs", {}))
    for name, _kind in inputs:
        schema = top[(name, "validation")]
        if schema.get("$ref") != _DEFS + name:
            defs[name] = schema
    for schema in defs.values():
        schema.pop("title", None)
        if "properties" in schema:  # said even when empty
            schema.setdefault("required", [])
        if "description" in schema:  # a docstring, one paragraph
            schema["description"] = " ".join(schema["description"].split("\n"))
    return defs


def _placed(node: Any) -> Any:
    """`node` with each reference to a component pointing into the document's components,
    and each other shape written in place."""
    if isinstance(node, list):
        return [_placed(item) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_DEFS):
        name = ref.removeprefix(_DEFS)
        if name in dict(_named_components()):
            return {**node, "$ref": f"#/components/schemas/{name}"}
        return _placed({**_definitions()[name], **{k: v for k, v in node.items() if k != "$ref"}})
    return {key: _placed(value) for key, value in node.items()}


def _schemas() -> dict[str, Schema]:
    """The components' schemas, derived from the shapes; a shape that extends another is the
    other `allOf` its own fields."""
    schemas: dict[str, Schema] = {}
    for name, kind in _named_components():
        schema = _placed(_definitions()[name])
        base = kind.__base__ if isinstance(kind, type) else None
        if base is not None and base is not shapes.Shape and issubclass(base, shapes.Shape):
            inherited = schemas[base.__name__]["properties"]
            own = [n for n in schema["properties"] if n not in inherited]
            schema = {
                "allOf": [
                    _ref(base.__name__),
                    {
                        "type": "object",
                        "required": [n for n in schema["required"] if n in own],
                        "properties": {n: schema["properties"][n] for n in own},
                    },
                ]
            }
        schemas[name] = schema
    return schemas


def _shape(name: str) -> Schema:
    """A shape that is not a component, written in place."""
    return _placed(_definitions()[name])  # type: ignore[no-any-return]


_ID: Schema = TypeAdapter(shapes.Id).json_schema(schema_generator=_Generator)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


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


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
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
        "or fails the job. While the model writes its answer, also `event: delta` (no id) with "
        "`data: <JobDelta>`: the text written since the previous delta of that text, to be "
        "placed at its `offset` (0 after earlier deltas: the text starts afresh, the call's "
        "answer being written again); a client that connects mid-answer first gets one delta "
        "with the text so far."
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
                "requestBody": _body(_shape("SessionInput")),
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
