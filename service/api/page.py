"""The jobs page: `GET /` and its assets under `/static/`, read from the package itself.

The page references each asset with a hash of its content (`/static/app.js?v=<hash>`), so a
request that names the current hash may be cached for good, and a new release is fetched at
once. Everything else is revalidated with its ETag on every use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from service.api.errors import not_found

routes = web.RouteTableDef()

PACKAGE = "service"
DIRECTORY = "static"
INDEX = "index.html"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The page loads nothing from elsewhere, and nothing may load it into a frame.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it a browser sends `Origin: null` on the page's own POSTs, which
    # the API's origin check (for requests authenticated by the session cookie) refuses.
    "Referrer-Policy": "same-origin",
}

_REVALIDATE = "no-cache"
_FOREVER = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(name: str, body: bytes) -> Asset:
    suffix = name[name.rfind(".") :] if "." in name else ""
    content_type = _CONTENT_TYPES.get(suffix, "application/octet-stream")
    return Asset(body, content_type, hashlib.blake2b(body, digest_size=12).hexdigest())


@dataclass(frozen=True)
class Assets:
    """The page and its assets, read once when the app is built."""

    index: Asset
    files: dict[str, Asset]

    @classmethod
    def load(cls) -> Assets:
        directory = resources.files(PACKAGE).joinpath(DIRECTORY)
        files = {
            entry.name: _asset(entry.name, entry.read_bytes())
            for entry in directory.iterdir()
            if entry.is_file() and entry.name != INDEX and not entry.name.startswith(".")
        }
        html = directory.joinpath(INDEX).read_text(encoding="utf-8")
        for name, asset in files.items():
            html = html.replace(f'"/static/{name}"', f'"/static/{name}?v={asset.etag}"')
        return cls(_asset(INDEX, html.encode()), files)


ASSETS = web.AppKey("page_assets", Assets)


def _respond(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    if any(tag.value in ("*", asset.etag) for tag in request.if_none_match or ()):
        response = web.Response(status=304)
    else:
        response = web.Response(body=asset.body, headers={"Content-Type": asset.content_type})
    response.etag = asset.etag
    response.headers["Cache-Control"] = cache_control
    response.headers.update(_SECURITY_HEADERS)
    return response


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    """The jobs page."""
    return _respond(request, request.app[ASSETS].index, _REVALIDATE)


@routes.get("/static/{name}")
async def static(request: web.Request) -> web.Response:
    """An asset of the page; cacheable for good when asked for by its current hash."""
    name = request.match_info["name"]
    asset = request.app[ASSETS].files.get(name)
    if asset is None:
        raise not_found(f"No asset named {name!r}")
    forever = request.query.get("v") == asset.etag
    return _respond(request, asset, _FOREVER if forever else _REVALIDATE)
