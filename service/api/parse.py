"""Request parsing: every malformed input becomes a 400 with a message that says why.

Bodies are validated against their shapes (service/api/shapes.py) after orjson has read them,
so that what counts as JSON, and the words for what is not, stay ours."""

from __future__ import annotations

import re
import uuid
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from service.api.errors import ApiError, bad_request
from service.api.shapes import MAX_BIGINT, PRIORITY_RANGE, DispatchOptions, Shape
from service.api.state import SETTINGS

S = TypeVar("S", bound=Shape)


def path_id(request: web.Request, name: str = "id", what: str = "id") -> int:
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit():
        raise bad_request(f"{what} must be a positive integer, got {raw!r}", "invalid_id")
    value = int(raw)
    if value < 1 or value > MAX_BIGINT:
        raise bad_request(f"{what} {raw} is out of range", "invalid_id")
    return value


def path_uuid(request: web.Request, name: str = "jobId") -> uuid.UUID:
    raw = request.match_info[name]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise bad_request(f"job id must be a UUID, got {raw!r}", "invalid_id") from None


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body is larger than {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refusing (413) past `limit` bytes without reading further."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def not_json(request: web.Request) -> ApiError:
    """Our 400 for a body that is not JSON, saying what to send; never the parser's words."""
    kind = request.content_type
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        said = f"The request body is a form ({kind}); this API reads JSON only"
    else:
        said = "The request body is not valid JSON"
    return bad_request(
        f"{said}: send a JSON object with 'Content-Type: application/json' (the fields of each "
        "request are described at GET /api/openapi.json)",
        "invalid_json",
    )


async def json_body(request: web.Request, limit: int | None = None) -> Any:
    """The JSON body; bodies over `limit` bytes (default AIJOBS_MAX_BODY) get 413."""
    body = await read_body(request, limit or request.app[SETTINGS].max_body_bytes)
    if not body:
        raise bad_request("The request body is empty; send JSON", "invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise not_json(request) from None


def validated(shape: type[S], data: Any, what: str = "The request body") -> S:
    """`data` as `shape`, or a 400 that names the first field in error and what to send;
    pydantic's own words never reach the client."""
    if not isinstance(data, dict):
        raise bad_request(f"{what} must be a JSON object", "invalid_body")
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        raise bad_request(field_error(exc.errors()[0]), "validation_error") from None


def field_error(error: ErrorDetails) -> str:
    """What was wrong with a field, in our words."""
    field = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "missing" or (kind.endswith("_type") and error["input"] is None):
        return f"'{field}' is required"
    said = _FIELD_ERRORS.get(kind)
    if said is None:
        return f"'{field}' is not valid; the fields are described at GET /api/openapi.json"
    return f"'{field}' " + said.format(**error.get("ctx", {}))


_FIELD_ERRORS = {
    "string_type": "must be a string",
    "int_type": "must be an integer id",  # the integers of bodies are ids (but priority's)
    "greater_than_equal": "is out of range",
    "less_than_equal": "is out of range",
    "text_blank": "must not be empty",
    "text_too_long": "is longer than {max_length} characters",
    "text_nul": "contains a NUL character",
}


async def json_shape(request: web.Request, shape: type[S], limit: int | None = None) -> S:
    """The JSON body as `shape`; bodies over `limit` bytes (default AIJOBS_MAX_BODY) get 413."""
    return validated(shape, await json_body(request, limit))


async def dispatch_priority(request: web.Request) -> int:
    """The priority a dispatch asks for in its optional body `{"priority": N}`; 0 without."""
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    if not body.strip():
        return 0
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise not_json(request) from None
    if not isinstance(data, dict):
        raise bad_request(
            'The request body must be a JSON object, such as {"priority": 5}', "invalid_body"
        )
    try:
        return DispatchOptions.model_validate(data).priority
    except ValidationError:
        lo, hi = PRIORITY_RANGE
        raise bad_request(
            f"'priority' must be an integer from {lo} to {hi} (higher runs first), "
            f"got {orjson.dumps(data['priority']).decode()}",
            "invalid_priority",
        ) from None


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > 255 or not key.isprintable():
        raise bad_request(
            "Idempotency-Key must be 1 to 255 printable characters", "invalid_idempotency_key"
        )
    return key


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        raise bad_request(f"'{name}' must be an integer", "invalid_query")
    value = int(raw)
    if not lo <= value <= hi:
        raise bad_request(f"'{name}' must be between {lo} and {hi}", "invalid_query")
    return value
