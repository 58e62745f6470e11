"""A browser session: the token handed over once, kept in an HttpOnly cookie.

`POST /api/session` `{accessToken}` verifies the token as every request's is verified and
answers with the cookie named by `AIJOBS_AUTH_COOKIE`, which expires with the token; the page
then sends no token itself (and none in a URL). `DELETE /api/session` removes the cookie.
Both change what the browser sends from then on, so both pass the origin check a request
authenticated by a cookie passes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from service.api import parse, render, shapes
from service.api.auth import DEV_IDENTITY, SESSION_PATH, VERIFIED_TOKENS, check_origin
from service.api.cors import own_origins
from service.api.state import SETTINGS

routes = web.RouteTableDef()

# What the origin check's message calls these requests: they set or remove the cookie.
SESSION_CHANGE = "A sign-in or sign-out (it sets the session cookie)"


def _secure(request: web.Request) -> bool:
    return any(origin.startswith("https://") for origin in own_origins(request))


@routes.post(SESSION_PATH)
async def sign_in(request: web.Request) -> web.Response:
    """Verify the token and keep it in the session cookie."""
    check_origin(request, SESSION_CHANGE)
    settings = request.app[SETTINGS]
    token = (await parse.json_shape(request, shapes.SessionInput)).access_token
    if settings.jwt_secret is None:
        identity, expires = DEV_IDENTITY, None
    else:
        identity = request.app[VERIFIED_TOKENS].verify(token, settings.jwt_secret)
        expires = int(identity.claims["exp"])
    session = {
        "user_id": identity.user_id,
        "role": identity.role,
        "expires_at": None if expires is None else datetime.fromtimestamp(expires, UTC),
    }
    response = render.json_response(render.session_json(session))
    if expires is not None:
        response.set_cookie(
            settings.auth_cookie,
            token,
            max_age=max(expires - int(time.time()), 0),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=_secure(request),
        )
    return response


@routes.delete(SESSION_PATH)
async def sign_out(request: web.Request) -> web.Response:
    """Remove the session cookie."""
    check_origin(request, SESSION_CHANGE)
    response = web.Response(status=204)
    response.del_cookie(
        request.app[SETTINGS].auth_cookie, path="/", samesite="Lax", secure=_secure(request)
    )
    return response
