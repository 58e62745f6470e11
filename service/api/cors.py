"""Browsers on other origins: CORS for the origins in `AIJOBS_CORS_ORIGINS`, and the origin
check that requests authenticated by a cookie must pass (CSRF).

An origin not listed gets no CORS headers at all, so a browser keeps its pages from reading
the API's answers, and from sending it anything but the simple requests a form can send; those
are refused by the origin check when a cookie authenticates them.
"""

from __future__ import annotations

from aiohttp import web

from service.api.errors import Handler
from service.api.state import SETTINGS
from service.config import normalize_origin

ALLOW_METHODS = "GET, HEAD, POST, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, If-None-Match"
EXPOSE_HEADERS = "ETag, Location, Retry-After"
# How long a browser may reuse a preflight's answer.
PREFLIGHT_MAX_AGE_S = 600


def _applies(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def own_origins(request: web.Request) -> set[str]:
    """The origins this API is reached at: its Host, and what a reverse proxy in front of it
    says the client asked for (`X-Forwarded-Host`, `X-Forwarded-Proto`). A page on another
    site cannot make its visitor's browser send these headers: they are not simple ones."""
    hosts = {request.host}
    schemes = {request.scheme}
    forwarded_host = request.headers.get("X-Forwarded-Host")
    if forwarded_host:
        hosts.add(forwarded_host.split(",")[0].strip())
    forwarded_proto = request.headers.get("X-Forwarded-Proto")
    if forwarded_proto:
        schemes.add(forwarded_proto.split(",")[0].strip().lower())
    origins = {normalize_origin(f"{scheme}://{host}") for scheme in schemes for host in hosts}
    return {origin for origin in origins if origin is not None}


def cross_site_reason(
    request: web.Request, what: str = "A request authenticated by a cookie"
) -> str | None:
    """Why a state-changing request authenticated by a cookie (or, as `what` says, one that
    sets the cookie) is refused, or None when it comes from this API's own origin or one of
    `AIJOBS_CORS_ORIGINS`."""
    origin = request.headers.get("Origin")
    source = "Origin"
    if origin is None:
        referer = request.headers.get("Referer")
        if referer is None:
            return (
                f"{what} must say where it comes from (an Origin or Referer header, as a "
                "browser sends); outside a browser, send 'Authorization: Bearer <token>' "
                "instead"
            )
        origin, source = _origin_of_url(referer), "Referer"
    normalized = normalize_origin(origin) if origin else None
    allowed = request.app[SETTINGS].cors_origins
    if normalized is not None and (normalized in allowed or normalized in own_origins(request)):
        return None
    return (
        f"{what} must come from this API's own origin or one of AIJOBS_CORS_ORIGINS; its "
        f"{source} is {origin!r}"
    )


def _origin_of_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0].split('#', 1)[0]}"


def _listed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or not _applies(request):
        return None
    normalized = normalize_origin(origin)
    if normalized is None or normalized not in request.app[SETTINGS].cors_origins:
        return None
    return origin


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers CORS preflights (before authentication: a browser sends them without
    credentials). An origin not listed gets 204 without CORS headers, which the browser takes
    as a refusal."""
    if (
        request.method == "OPTIONS"
        and _applies(request)
        and "Access-Control-Request-Method" in request.headers
    ):
        response = web.Response(status=204)
        if _listed_origin(request) is not None:
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer to a listed origin, errors and event streams too,
    says so; the answers of /api/ vary by Origin whenever any origin is listed."""
    if not _applies(request) or not request.app[SETTINGS].cors_origins:
        return
    response.headers.add("Vary", "Origin")
    origin = _listed_origin(request)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    if request.method != "OPTIONS":
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
