"""One error shape for every failure: {"error": {"code", "message"}}."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from service.api.render import json_response
from service.db.errors import DATABASE_UNAVAILABLE
from service.logs import get_logger

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason or "Request failed"
        if exc.status == 404:
            message = (
                f"No route for {request.method} {request.path}; the routes are described at "
                "GET /api/openapi.json"
            )
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            message = f"Method {request.method} is not allowed on {request.path}" + (
                f"; send {allowed.replace(',', ' or ')}" if allowed else ""
            )
        elif exc.status == 413:
            message = "The request body is too large"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "error"), message, headers)
    except DATABASE_UNAVAILABLE as exc:
        log.warning("database_unavailable", path=request.path, error=str(exc))
        return error_response(
            503,
            "database_unavailable",
            "The database is unavailable; try again shortly",
            {"Retry-After": "2"},
        )
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "An internal error occurred")
