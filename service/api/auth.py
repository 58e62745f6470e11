"""Who is asking: JWTs as Supabase issues them (HS256, `sub`, `role`, `exp`).

Every /api/ route needs a valid token, except the API description and the session route.
The token comes from, in this order: the `Authorization: Bearer` header; on the event stream,
`?access_token=`; the cookie named by `AIJOBS_AUTH_COOKIE` (the raw token); the session cookie
of @supabase/ssr, `sb-<ref>-auth-token`. Each is verified alike. A state-changing request
authenticated by a cookie must also come from an allowed origin (see `cors`).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jwt
import orjson
from aiohttp import web

from service.api.cors import cross_site_reason
from service.api.errors import ApiError, Handler
from service.api.state import SETTINGS

ROLES = ("authenticated", "service_role")
SESSION_PATH = "/api/session"
PUBLIC_PATHS = frozenset({"/api/openapi.json", SESSION_PATH})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SUPABASE_COOKIE = re.compile(r"sb-[A-Za-z0-9_-]+-auth-token")
_BASE64_PREFIX = "base64-"
REALM = 'Bearer realm="aijobs"'


@dataclass(frozen=True)
class Identity:
    """The caller: their user id (`sub`), their role, and the claims as they came."""

    user_id: str
    role: str
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def sees_all(self) -> bool:
        return self.role == "service_role"

    @cached_property
    def read_scope(self) -> str | None:
        """The JWT claims (JSON text) reads of jobs are scoped to by row level security, or
        None for the service role, which sees every job. Made once per verified token."""
        if self.sees_all:
            return None
        return orjson.dumps({**self.claims, "sub": self.user_id, "role": self.role}).decode()


DEV_IDENTITY = Identity("dev", "service_role", {"sub": "dev", "role": "service_role"})
IDENTITY_KEY = web.RequestKey("identity", Identity)


def identity_of(request: web.Request) -> Identity:
    return request[IDENTITY_KEY]


def _unauthorized(message: str, *, invalid: bool = True) -> ApiError:
    challenge = REALM
    if invalid:
        # RFC 6750 allows neither quotes nor backslashes inside the quoted description.
        description = message.replace('"', "'").replace("\\", "/")
        challenge += f', error="invalid_token", error_description="{description}"'
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": challenge})


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str
    by_cookie: bool


def _credentials_of(request: web.Request, cookie_name: str) -> Credentials | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("The Authorization header must be 'Bearer <token>'")
        return Credentials(token.strip(), by_cookie=False)
    if request.path.endswith("/events"):
        query_token = request.query.get("access_token")
        if query_token:
            return Credentials(query_token, by_cookie=False)
    from_cookie = cookie_token(request.cookies, cookie_name)
    return Credentials(from_cookie, by_cookie=True) if from_cookie is not None else None


def cookie_token(cookies: Mapping[str, str], name: str) -> str | None:
    """The token of a browser session: the raw token in the cookie `name`, else the access
    token in a session cookie of @supabase/ssr."""
    raw = cookies.get(name)
    if raw:
        return urllib.parse.unquote(raw).strip() or None
    for cookie in sorted(cookies):
        if _SUPABASE_COOKIE.fullmatch(cookie) or (
            cookie.endswith(".0") and _SUPABASE_COOKIE.fullmatch(cookie[:-2])
        ):
            token = supabase_access_token(cookies, cookie.removesuffix(".0"))
            if token is not None:
                return token
    return None


def supabase_access_token(cookies: Mapping[str, str], key: str) -> str | None:
    """The `access_token` of the session @supabase/ssr keeps under `key`: in one cookie, or
    split into `key.0`, `key.1`, ...; URI-encoded JSON, or `base64-` and base64url JSON."""
    value = cookies.get(key)
    if value is None:
        chunks: list[str] = []
        while (chunk := cookies.get(f"{key}.{len(chunks)}")) is not None:
            chunks.append(chunk)
        value = "".join(urllib.parse.unquote(chunk) for chunk in chunks)
    else:
        value = urllib.parse.unquote(value)
    if value.startswith(_BASE64_PREFIX):
        encoded = value[len(_BASE64_PREFIX) :]
        try:
            value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
    try:
        session = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    # Older helpers kept the session as a list, the access token first.
    token = session.get("access_token") if isinstance(session, dict) else None
    if isinstance(session, list) and session:
        token = session[0]
    return token if isinstance(token, str) and token else None


def _invalid_token_message(exc: jwt.InvalidTokenError) -> str:
    """What was wrong with a token and what to send instead, in our words, not the library's."""
    send = "send the access token your sign-in returned, signed with AIJOBS_JWT_SECRET"
    if isinstance(exc, jwt.InvalidSignatureError):
        return f"The token's signature does not match this API's secret; {send}"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return f"The token is not signed with HS256; {send}"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"The token has no '{exc.claim}' claim; {send}"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "The token is not valid yet (its 'nbf' or 'iat' is in the future)"
    if isinstance(exc, jwt.DecodeError):
        return (
            "The token is not a JWT (three base64url parts separated by dots); send "
            "'Authorization: Bearer <access token>'"
        )
    return f"The token is not valid; {send}"


def verify_token(token: str, secret: str) -> Identity:
    """The identity a token proves; raises ApiError 401 (or 403 for a role we do not serve)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired; sign in again for a new one") from None
    except jwt.InvalidTokenError as exc:
        raise _unauthorized(_invalid_token_message(exc)) from None
    if _has_nul(claims):
        # Postgres cannot hold it, and no issuer of ours puts it there.
        raise _unauthorized("The token's claims contain a NUL character")
    role = claims.get("role", "authenticated")
    if role not in ROLES:
        raise ApiError(403, "forbidden", f"Tokens of role {role!r} may not use this API")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise _unauthorized("The token's sub must be a non-empty string")
    return Identity(sub, role, claims)


class VerifiedTokens:
    """Tokens already verified, until they expire: a client polling with one token pays for
    the HMAC and the claims' checks once, not on every request. Bounded: when full, it is
    emptied and fills again."""

    def __init__(self, max_size: int = 10_000) -> None:
        self._max_size = max_size
        self._known: dict[str, tuple[Identity, float]] = {}

    def verify(self, token: str, secret: str) -> Identity:
        known = self._known.get(token)
        if known is not None:
            identity, expires = known
            if expires > time.time():
                return identity
            del self._known[token]
        identity = verify_token(token, secret)
        if len(self._known) >= self._max_size:
            self._known.clear()
        self._known[token] = (identity, float(identity.claims["exp"]))
        return identity


VERIFIED_TOKENS = web.AppKey("verified_tokens", VerifiedTokens)


def check_origin(request: web.Request, what: str = "A request authenticated by a cookie") -> None:
    """Refuse (403) a request a page on another site may have made the browser send."""
    reason = cross_site_reason(request, what)
    if reason is not None:
        raise ApiError(403, "cross_site_request", reason)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS:
        settings = request.app[SETTINGS]
        credentials = _credentials_of(request, settings.auth_cookie)
        if settings.jwt_secret is None:
            # Only reachable with --insecure-dev-auth: the API refuses to start otherwise.
            request[IDENTITY_KEY] = DEV_IDENTITY
        elif credentials is None:
            raise ApiError(
                401,
                "unauthorized",
                "Send 'Authorization: Bearer <token>', or sign in for a session cookie",
                {"WWW-Authenticate": REALM},
            )
        else:
            request[IDENTITY_KEY] = request.app[VERIFIED_TOKENS].verify(
                credentials.token, settings.jwt_secret
            )
            if credentials.by_cookie and request.method not in SAFE_METHODS:
                check_origin(request)
    return await handler(request)


def mint_token(secret: str, user_id: str, role: str = "authenticated", ttl_s: int = 3600) -> str:
    """A token for `user_id`, as Supabase would issue it (for the demo and tests)."""
    now = int(time.time())
    return jwt.encode(
        {"sub": user_id, "role": role, "iat": now, "exp": now + ttl_s, "aud": "authenticated"},
        secret,
        algorithm="HS256",
    )
