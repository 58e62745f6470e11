"""Request parsing: every malformed input becomes a 400 with a message that says why."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
from aiohttp import web

from service.api.errors import ApiError, bad_request
from service.api.state import SETTINGS

MAX_BIGINT = 2**63 - 1


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


async def json_object(request: web.Request, limit: int | None = None) -> dict[str, Any]:
    data = await json_body(request, limit)
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object", "invalid_body")
    return data


def text_field(
    data: dict[str, Any],
    name: str,
    *,
    required: bool = True,
    allow_empty: bool = False,
    max_length: int = 10_000,
    default: str = "",
) -> str:
    if name not in data or data[name] is None:
        if required:
            raise bad_request(f"'{name}' is required", "validation_error")
        return default
    value = data[name]
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", "validation_error")
    if not allow_empty and not value.strip():
        raise bad_request(f"'{name}' must not be empty", "validation_error")
    if len(value) > max_length:
        raise bad_request(f"'{name}' is longer than {max_length} characters", "validation_error")
    if "\x00" in value:
        raise bad_request(f"'{name}' contains a NUL character", "validation_error")
    return value


def id_field(data: dict[str, Any], name: str) -> int:
    if name not in data or data[name] is None:
        raise bad_request(f"'{name}' is required", "validation_error")
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer id", "validation_error")
    if value < 1 or value > MAX_BIGINT:
        raise bad_request(f"'{name}' is out of range", "validation_error")
    return value


PRIORITY_RANGE = (-10, 10)


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
    if "priority" not in data:
        return 0
    value = data["priority"]
    lo, hi = PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(
            f"'priority' must be an integer from {lo} to {hi} (higher runs first), "
            f"got {orjson.dumps(value).decode()}",
            "invalid_priority",
        )
    return value


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
