"""A fake Anthropic Messages API server for tests and benchmarks.

The real ``anthropic`` SDK talks to it unmodified::

    async with FakeAnthropic() as fake:
        client = anthropic.AsyncAnthropic(api_key="test", base_url=fake.url)
        fake.enqueue(Error(529), Reply())
        ...

It serves ``POST /v1/messages`` (JSON or SSE when ``"stream": true``) and
``POST /v1/messages/count_tokens``. Replies follow the documented Messages API shapes;
errors follow the documented error shape and status codes.

Behaviour per request comes from a FIFO queue (:meth:`FakeAnthropic.enqueue`), falling back
to :attr:`FakeAnthropic.default`. Tool input for forced tool use (and JSON text for
``output_config.format``) is produced by :attr:`FakeAnthropic.responder` when set, otherwise
generated deterministically from the JSON Schema by :func:`example_from_schema`.

Standalone: ``python -m tests.fake_anthropic --port 8765 [--delay 2.0] [--rpm 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import hashlib
import inspect
import json
import math
import random
import re
import secrets
import signal
import socket
import string
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from aiohttp import web

__all__ = [
    "Behaviour",
    "Delay",
    "Disconnect",
    "Error",
    "FakeAnthropic",
    "Flaky",
    "Malformed",
    "MalformedKind",
    "RecordedRequest",
    "Refusal",
    "Reply",
    "Responder",
    "example_from_schema",
    "main",
    "request_text",
]

JSONDict: TypeAlias = dict[str, Any]

DEFAULT_TEXT = "This is a reply from the fake Anthropic server."
NO_TOOL_TEXT = "I looked at the request and have nothing structured to add."
REFUSAL_TEXT = "I can't help with that request."
UNLIMITED_RPM = 1_000_000
# A streamed reply is written in pieces of whole words, of about this many characters.
STREAM_PIECE_CHARS = 32
# With ``stamp_words``, the top-level string values of a tool input are made of these
# placeholders, each replaced by the wall clock time (``T`` and 17 characters, seconds since
# the epoch) at the moment the piece holding it is written: a follower of the text can tell
# how long each word took to reach it.
STAMP_PLACEHOLDER = "T" + "#" * 17
_STAMP = re.compile(re.escape(STAMP_PLACEHOLDER))
_STREAM_WORDS = re.compile(r"\S+\s*|\s+")
WINDOW_SECONDS = 60.0

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "The requested resource could not be found.",
    "rate_limit_error": "Number of requests has exceeded your rate limit.",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}


# --------------------------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A normal successful reply.

    ``tool_input`` overrides the tool input (or structured-output JSON) for this one reply;
    ``text`` overrides the text of a plain text reply.
    """

    tool_input: JSONDict | None = None
    text: str | None = None
    # Streamed, the reply stops after this many characters of its content until the event
    # is set: a test's way to look at an answer half written.
    hold: tuple[int, asyncio.Event] | None = None
    # Streamed, the connection is cut once this many characters of the content are sent.
    cut_after: int | None = None


@dataclass(frozen=True)
class Error:
    """An error reply in the API's error shape.

    ``type`` defaults from ``status`` (429 rate_limit_error, 529 overloaded_error, 500
    api_error, 401 authentication_error, 400 invalid_request_error, 403 permission_error).
    ``retry_after`` adds a ``retry-after`` header (seconds); ``should_retry`` adds
    ``x-should-retry``; ``headers`` adds anything else.
    """

    status: int = 529
    type: str | None = None
    message: str | None = None
    retry_after: float | None = None
    should_retry: bool | None = None
    headers: Mapping[str, str] | None = None

    @property
    def error_type(self) -> str:
        if self.type is not None:
            return self.type
        return _ERROR_TYPES.get(self.status, "api_error")

    @property
    def error_message(self) -> str:
        if self.message is not None:
            return self.message
        return _ERROR_MESSAGES.get(self.error_type, "Error")


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` before answering with ``then``.

    ``paced``: a streamed reply is not held back but written over ``seconds``, its pieces
    evenly spread, as a model writes its answer (a reply that is not streamed still waits).
    """

    seconds: float
    then: Behaviour = field(default_factory=Reply)
    paced: bool = False


MalformedKind: TypeAlias = Literal["missing_field", "wrong_type", "no_tool", "invalid_json_body"]
_MALFORMED_KINDS: frozenset[str] = frozenset(
    {"missing_field", "wrong_type", "no_tool", "invalid_json_body"}
)


@dataclass(frozen=True)
class Malformed:
    """A reply that is wrong in a specific way.

    * ``missing_field``: the tool input (or structured JSON) lacks a required property.
    * ``wrong_type``: a required integer property is the string ``"high"``.
    * ``no_tool``: only a text block, stop_reason ``end_turn``.
    * ``invalid_json_body``: HTTP 200 with a body that is not JSON.
    """

    kind: MalformedKind

    def __post_init__(self) -> None:
        if self.kind not in _MALFORMED_KINDS:
            raise ValueError(f"unknown Malformed kind {self.kind!r}")


@dataclass(frozen=True)
class Refusal:
    """A reply with stop_reason ``refusal`` and a short text block."""

    text: str = REFUSAL_TEXT


@dataclass(frozen=True)
class Disconnect:
    """Close the connection without answering (the SDK raises ``APIConnectionError``)."""


@dataclass
class Flaky:
    """Apply ``fault`` with probability ``rate`` (seeded, so runs repeat), else ``otherwise``."""

    rate: float
    fault: Behaviour = field(default_factory=lambda: Error(529))
    otherwise: Behaviour = field(default_factory=Reply)
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def pick(self) -> Behaviour:
        return self.fault if self._rng.random() < self.rate else self.otherwise


Behaviour: TypeAlias = Reply | Error | Delay | Malformed | Refusal | Disconnect | Flaky

Responder: TypeAlias = Callable[
    [JSONDict], JSONDict | str | Awaitable[JSONDict | str | None] | None
]


@dataclass
class RecordedRequest:
    """One request as the fake saw it.

    ``received_at`` and ``answered_at`` are ``time.monotonic()`` values; ``status`` and
    ``answered_at`` stay ``None`` while the request is in flight, and ``status`` is ``0`` when
    the connection closed without an HTTP answer (:class:`Disconnect`, or :meth:`stop`).
    ``behaviour`` is the behaviour applied (a rate-limit rejection records the :class:`Error`
    it answered).
    """

    body: JSONDict
    headers: dict[str, str]
    received_at: float
    path: str = "/v1/messages"
    behaviour: Behaviour | None = None
    status: int | None = None
    answered_at: float | None = None

    @property
    def text(self) -> str:
        return request_text(self.body)

    @property
    def answered(self) -> bool:
        return self.status is not None


# --------------------------------------------------------------------------------------------
# Request text and token estimates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """One block of the prompt; its cache key (canonical JSON) is made only when asked for,
    as only requests with cache breakpoints need it."""

    text: str
    make_key: Callable[[], str]
    cached: bool

    @property
    def key(self) -> str:
        return self.make_key()


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(t for t in (_block_text(b) for b in content) if t)
        return ""
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict):
            if source.get("type") == "text":
                return str(source.get("data", ""))
            if source.get("type") == "content" and isinstance(source.get("content"), list):
                return "\n".join(t for t in (_block_text(b) for b in source["content"]) if t)
    return ""


def _is_cached(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    control = block.get("cache_control")
    return isinstance(control, dict) and control.get("type") == "ephemeral"


def _key(value: Any) -> str:
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "cache_control"}
    return json.dumps(value, sort_keys=True, default=str)


def _system_key(block: Any) -> str:
    return _key({"system": _key(block)})


def _content_key(role: Any, content: str) -> str:
    return _key({"role": role, "content": content})


def _block_key(role: Any, block: Any) -> str:
    return _key({"role": role, "block": _key(block)})


def _segments(body: Mapping[str, Any]) -> Iterator[_Segment]:
    """The prompt in cache order (system, then messages), one segment per block."""
    system = body.get("system")
    if isinstance(system, str):
        yield _Segment(system, lambda: _key({"system": system}), False)
    elif isinstance(system, list):
        for block in system:
            yield _Segment(
                _block_text(block), functools.partial(_system_key, block), _is_cached(block)
            )
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, str):
            yield _Segment(content, functools.partial(_content_key, role, content), False)
        elif isinstance(content, list):
            for block in content:
                yield _Segment(
                    _block_text(block),
                    functools.partial(_block_key, role, block),
                    _is_cached(block),
                )


def _join(texts: Iterator[str] | list[str]) -> str:
    return "\n".join(t for t in texts if t)


def request_text(request_json: Mapping[str, Any]) -> str:
    """All text of a Messages request as one string.

    System prompt (string or text blocks), every message's text blocks (or string content),
    ``tool_result`` contents and plain-text ``document`` sources, joined by newlines.
    """
    return _join([s.text for s in _segments(request_json)])


def estimate_tokens(text: str) -> int:
    """The fake's token estimate: ``len(text) / 4``, at least 1."""
    return max(1, len(text) // 4)


# --------------------------------------------------------------------------------------------
# JSON Schema example generation
# --------------------------------------------------------------------------------------------

_MAX_DEPTH = 48
_SHALLOW_DEPTH = 6
_HINT_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
)
_HINT_RE = re.compile(r"\{((?:\w+: [^,{}]+)(?:, \w+: [^,{}]+)*)\}\s*$")

_FORMAT_EXAMPLES: dict[str, str] = {
    "date-time": "2024-01-01T12:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "iri": "https://example.com/",
}


def _hints_from_description(schema: Mapping[str, Any]) -> JSONDict:
    """Constraints the SDK's ``transform_schema`` moved into the description text."""
    description = schema.get("description")
    if not isinstance(description, str):
        return {}
    match = _HINT_RE.search(description)
    if not match:
        return {}
    hints: JSONDict = {}
    for part in match.group(1).split(", "):
        key, _, raw = part.partition(": ")
        if key not in _HINT_KEYS or key in schema:
            continue
        try:
            number = float(raw)
        except ValueError:
            continue
        hints[key] = int(number) if number.is_integer() else number
    return hints


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _SchemaExampler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def lookup(self, ref: str) -> JSONDict:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            part = raw.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        if not isinstance(node, dict):
            raise ValueError(f"$ref {ref!r} does not point at a schema")
        return node

    def resolve(self, schema: Any) -> JSONDict:
        if schema is True or schema is None:
            return {}
        if not isinstance(schema, dict):
            return {}
        hops = 0
        while "$ref" in schema:
            hops += 1
            if hops > 64:
                raise ValueError("$ref chain too long")
            target = self.lookup(schema["$ref"])
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        hints = _hints_from_description(schema)
        return {**schema, **hints} if hints else schema

    def is_null(self, schema: Any) -> bool:
        resolved = self.resolve(schema)
        return resolved.get("type") == "null" or ("const" in resolved and resolved["const"] is None)

    def generate(self, schema: Any, name: str | None, depth: int, variant: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError("schema recursion too deep to generate an example")
        s = self.resolve(schema)
        if "const" in s:
            return copy.deepcopy(s["const"])
        enum = s.get("enum")
        if isinstance(enum, list) and enum:
            choices = [v for v in enum if v is not None] or enum
            return copy.deepcopy(choices[variant % len(choices)])
        for key in ("anyOf", "oneOf"):
            options = s.get(key)
            if isinstance(options, list) and options:
                non_null = [o for o in options if not self.is_null(o)]
                if not non_null or (depth >= _SHALLOW_DEPTH and len(non_null) < len(options)):
                    return None
                return self.generate(non_null[0], name, depth + 1, variant)
        all_of = s.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: JSONDict = {k: v for k, v in s.items() if k != "allOf"}
            for part in all_of:
                merged.update(self.resolve(part))
            return self.generate(merged, name, depth + 1, variant)

        kind = s.get("type")
        if isinstance(kind, list):
            concrete = [k for k in kind if k != "null"]
            kind = concrete[0] if concrete else "null"
        if kind is None:
            kind = self.infer_type(s)
        if kind == "object":
            return self.generate_object(s, depth, variant)
        if kind == "array":
            return self.generate_array(s, name, depth, variant)
        if kind == "string":
            return self.generate_string(s, name, variant)
        if kind == "integer":
            return self.generate_integer(s, variant)
        if kind == "number":
            return self.generate_number(s, variant)
        if kind == "boolean":
            return variant % 2 == 0
        if kind == "null":
            return None
        raise ValueError(f"unsupported schema type {kind!r}")

    @staticmethod
    def infer_type(s: Mapping[str, Any]) -> str:
        if "properties" in s or "additionalProperties" in s or "required" in s:
            return "object"
        if "items" in s or "prefixItems" in s or "minItems" in s or "maxItems" in s:
            return "array"
        if any(k in s for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
            return "number"
        return "string"

    def generate_object(self, s: Mapping[str, Any], depth: int, variant: int) -> JSONDict:
        properties = s.get("properties") or {}
        required = set(s.get("required") or [])
        out: JSONDict = {}
        for key, sub in properties.items():
            if depth >= _SHALLOW_DEPTH and key not in required:
                continue
            out[key] = self.generate(sub, key, depth + 1, variant)
        extra = s.get("additionalProperties")
        min_properties = int(s.get("minProperties") or 0)
        index = 0
        while len(out) < min_properties:
            index += 1
            sub = extra if isinstance(extra, dict) else {}
            out.setdefault(f"key{index}", self.generate(sub, "value", depth + 1, index - 1))
        return out

    def generate_array(
        self, s: Mapping[str, Any], name: str | None, depth: int, variant: int
    ) -> list[Any]:
        prefix = s.get("prefixItems")
        if isinstance(prefix, list):
            return [self.generate(p, name, depth + 1, i) for i, p in enumerate(prefix)]
        min_items = int(s.get("minItems") or 0)
        max_items = s.get("maxItems")
        wanted = 1 if depth < _SHALLOW_DEPTH else 0
        if max_items is not None:
            wanted = min(wanted, int(max_items))
        count = max(min_items, wanted)
        items = s.get("items")
        item_name = name[:-1] if name and name.endswith("s") and len(name) > 2 else name
        return [self.generate(items, item_name, depth + 1, variant + i) for i in range(count)]

    @staticmethod
    def generate_string(s: Mapping[str, Any], name: str | None, variant: int) -> str:
        fmt = s.get("format")
        if fmt == "uuid":
            text = f"00000000-0000-4000-8000-{variant:012d}"
        elif isinstance(fmt, str) and fmt in _FORMAT_EXAMPLES:
            text = _FORMAT_EXAMPLES[fmt]
        else:
            label = (name or "text").replace("_", " ").strip() or "text"
            text = f"Generated {label}"
            if variant:
                text += f" {variant + 1}"
        min_length = s.get("minLength")
        max_length = s.get("maxLength")
        if isinstance(max_length, int) and len(text) > max_length:
            text = text[:max_length].rstrip()
        if isinstance(min_length, int) and len(text) < min_length:
            text += "." * (min_length - len(text))
        return text

    @staticmethod
    def _number_bounds(
        s: Mapping[str, Any],
    ) -> tuple[float | None, bool, float | None, bool]:
        lo, hi = s.get("minimum"), s.get("maximum")
        xlo, xhi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        lo_excl = hi_excl = False
        # Draft 4 spelled exclusivity as booleans next to minimum/maximum.
        if xlo is True:
            lo_excl = True
        elif _is_number(xlo) and (lo is None or xlo >= lo):
            lo, lo_excl = xlo, True
        if xhi is True:
            hi_excl = True
        elif _is_number(xhi) and (hi is None or xhi <= hi):
            hi, hi_excl = xhi, True
        return lo, lo_excl, hi, hi_excl

    def generate_integer(self, s: Mapping[str, Any], variant: int) -> int:
        lo_f, lo_excl, hi_f, hi_excl = self._number_bounds(s)
        lo = None if lo_f is None else (math.floor(lo_f) + 1 if lo_excl else math.ceil(lo_f))
        hi = None if hi_f is None else (math.ceil(hi_f) - 1 if hi_excl else math.floor(hi_f))
        step = s.get("multipleOf")
        step = int(step) if isinstance(step, int | float) and step >= 1 and step == int(step) else 1
        if lo is not None and hi is not None:
            value = (lo + hi) // 2 if lo <= hi else lo
        elif lo is not None:
            value = lo
        elif hi is not None:
            value = min(hi, 1)
        else:
            value = 1
        value += variant * step
        if hi is not None and value > hi:
            floor_ = lo if lo is not None else hi - 100 * step
            span = max(1, (hi - floor_) // step + 1)
            value = floor_ + ((value - floor_) // step % span) * step
        if step > 1:
            value = math.ceil(value / step) * step
            if hi is not None and value > hi:
                value -= step
        return value

    def generate_number(self, s: Mapping[str, Any], variant: int) -> float:
        lo, lo_excl, hi, hi_excl = self._number_bounds(s)
        fraction = (variant + 1) / (variant + 2)  # 1/2, 2/3, 3/4, ... strictly inside (0, 1)
        if lo is not None and hi is not None:
            return float(lo + (hi - lo) * fraction) if lo < hi else float(lo)
        if lo is not None:
            return float(lo + (1 if lo_excl else 0) + variant)
        if hi is not None:
            top = hi - 1 if hi_excl else hi
            return float(min(top, 0.5) - variant)
        return 0.5 + variant


def example_from_schema(schema: Mapping[str, Any]) -> Any:
    """A deterministic value that satisfies ``schema`` (Pydantic v2 style JSON Schema).

    Supports ``$defs``/``$ref``, object/array/string/integer/number/boolean/null, properties,
    required, items, prefixItems, numeric bounds (and exclusive variants), multipleOf,
    min/maxLength, min/maxItems, enum, const, anyOf/oneOf (first non-null), allOf, common
    string formats, and constraints the SDK's ``transform_schema`` moved into descriptions.
    ``pattern`` is not honoured.
    """
    return _SchemaExampler(schema).generate(schema, None, 0, 0)


def _required_props(schema: Mapping[str, Any]) -> tuple[list[str], JSONDict]:
    ex = _SchemaExampler(schema)
    root = ex.resolve(schema)
    for key in ("anyOf", "oneOf"):
        options = root.get(key)
        if isinstance(options, list):
            non_null = [o for o in options if not ex.is_null(o)]
            if non_null:
                root = ex.resolve(non_null[0])
    props = {k: ex.resolve(v) for k, v in (root.get("properties") or {}).items()}
    return [r for r in root.get("required") or [] if isinstance(r, str)], props


def _drop_required(payload: Any, schema: Mapping[str, Any]) -> Any:
    if not isinstance(payload, dict):
        return payload
    required, _ = _required_props(schema)
    victim = next((r for r in required if r in payload), None)
    if victim is None and payload:
        victim = next(iter(payload))
    return {k: v for k, v in payload.items() if k != victim}


def _break_type(payload: Any, schema: Mapping[str, Any]) -> Any:
    if not isinstance(payload, dict):
        return "high"
    required, props = _required_props(schema)

    def types_of(name: str) -> set[str]:
        sub = props.get(name, {})
        kinds: set[str] = set()
        kind = sub.get("type")
        if isinstance(kind, str):
            kinds.add(kind)
        elif isinstance(kind, list):
            kinds.update(k for k in kind if isinstance(k, str))
        for option in sub.get("anyOf") or sub.get("oneOf") or []:
            option_kind = _SchemaExampler(schema).resolve(option).get("type")
            if isinstance(option_kind, str):
                kinds.add(option_kind)
        return kinds

    broken = dict(payload)
    for name in required:
        if "integer" in types_of(name):
            broken[name] = "high"
            return broken
    for name in required:
        if "string" not in types_of(name):
            broken[name] = "high"
            return broken
    if required:
        broken[required[0]] = 12345
    return broken


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


_ID_ALPHABET = string.ascii_letters + string.digits
# Ids need to be unique, not secret: a PRNG seeded from the OS draws them cheaply.
_ID_RANDOM = random.Random(secrets.randbits(128))


def _new_id(prefix: str) -> str:
    return prefix + "01" + "".join(_ID_RANDOM.choices(_ID_ALPHABET, k=22))


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


class _ApiError(Exception):
    def __init__(self, error: Error, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error.error_message)
        self.error = error
        self.headers = dict(headers or {})


class FakeAnthropic:
    """A fake Messages API on a real local HTTP port.

    Attributes meant for tests:

    * ``default``: behaviour when the queue is empty (``Reply()``).
    * ``responder``: ``(request_json) -> dict | str | None`` (may be async) giving the tool
      input (or the text of a plain reply); ``None`` falls back to generation.
    * ``requests``: :class:`RecordedRequest` for each ``/v1/messages`` call, in arrival order.
    * ``count_tokens_requests``: the same for ``/v1/messages/count_tokens``.
    * ``rate_limited``: how many requests the rate limiter rejected.
    * ``usages``: the ``usage`` object of every message answered, in the order answered.
    """

    def __init__(
        self,
        *,
        default: Behaviour | None = None,
        responder: Responder | None = None,
        require_api_key: bool = True,
        stamp_words: int = 0,
    ) -> None:
        self.default: Behaviour = default if default is not None else Reply()
        self.stamp_words = stamp_words
        self.responder: Responder | None = responder
        self.require_api_key = require_api_key
        self.requests: list[RecordedRequest] = []
        self.count_tokens_requests: list[RecordedRequest] = []
        self.rate_limited = 0
        self.usages: list[JSONDict] = []
        self._queue: deque[Behaviour] = deque()
        self._cache: set[str] = set()
        self._rpm: int | None = None
        self._itpm: int | None = None
        self._window: deque[tuple[float, int]] = deque()
        # The sum of the window's tokens, kept as it changes rather than summed per request.
        self._window_tokens = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeAnthropic already started")
        self._changed = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._handle_messages)
        app.router.add_post("/v1/messages/count_tokens", self._handle_count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._handle_not_found)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        try:
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        bound_port = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self._runner = runner
        self._url = f"http://{shown}:{bound_port}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._inflight):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FakeAnthropic is not started")
        return self._url

    # -- scripting ---------------------------------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, consumed one per ``/v1/messages`` request, first in first out."""
        self._queue.extend(behaviours)

    @property
    def pending(self) -> int:
        """Queued behaviours not yet consumed."""
        return len(self._queue)

    def rate_limit(
        self, requests_per_minute: int | None, input_tokens_per_minute: int | None = None
    ) -> None:
        """Enforce limits over a sliding 60 s window (``None`` disables a limit)."""
        self._rpm = requests_per_minute
        self._itpm = input_tokens_per_minute

    def reset(self) -> None:
        """Forget queued behaviours, recorded requests, the prompt cache and the window."""
        self._queue.clear()
        self.requests.clear()
        self.count_tokens_requests.clear()
        self._cache.clear()
        self._window.clear()
        self._window_tokens = 0
        self.rate_limited = 0
        self.usages.clear()

    # -- inspection --------------------------------------------------------------------------

    def count(self, status: int | None = None) -> int:
        """Answered ``/v1/messages`` requests, all of them or only those with ``status``."""
        if status is None:
            return sum(1 for r in self.requests if r.answered)
        return sum(1 for r in self.requests if r.status == status)

    def stats(self) -> dict[int, int]:
        """Answered ``/v1/messages`` requests by status code."""
        return dict(Counter(r.status for r in self.requests if r.status is not None))

    async def wait_for_requests(
        self,
        n: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - part of the documented API
        *,
        answered: bool = False,
    ) -> list[RecordedRequest]:
        """Wait until ``n`` requests were received (or answered); ``TimeoutError`` otherwise."""

        def ready() -> bool:
            if answered:
                return sum(1 for r in self.requests if r.answered) >= n
            return len(self.requests) >= n

        async with asyncio.timeout(timeout):
            while not ready():
                await self._changed.wait()
        return list(self.requests)

    def _notify(self) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- HTTP handlers -----------------------------------------------------------------------

    @staticmethod
    def _base_headers() -> dict[str, str]:
        return {"request-id": _new_id("req_")}

    def _error_response(self, error: Error, extra: Mapping[str, str] | None = None) -> web.Response:
        headers = self._base_headers()
        if extra:
            headers.update(extra)
        if error.retry_after is not None:
            headers["retry-after"] = _format_seconds(error.retry_after)
        if error.should_retry is not None:
            headers["x-should-retry"] = "true" if error.should_retry else "false"
        if error.headers:
            headers.update(error.headers)
        body = {
            "type": "error",
            "error": {"type": error.error_type, "message": error.error_message},
        }
        return web.json_response(body, status=error.status, headers=headers)

    def _check_auth(self, headers: Mapping[str, str]) -> None:
        if not self.require_api_key:
            return
        if not headers.get("x-api-key") and not headers.get("authorization"):
            raise _ApiError(Error(401, message="x-api-key header is required"))

    @staticmethod
    def _parse_body(raw: bytes) -> JSONDict:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return FakeAnthropic._checked_body(None, exc)
        return FakeAnthropic._checked_body(body, None)

    @staticmethod
    def _checked_body(body: Any, unreadable: ValueError | None) -> JSONDict:
        """The request's JSON object, or the 400 the API answers instead."""
        if unreadable is not None:
            raise _ApiError(
                Error(400, message=f"Request body is not valid JSON: {unreadable}")
            ) from unreadable
        if not isinstance(body, dict):
            raise _ApiError(Error(400, message="Request body must be a JSON object"))
        return body

    @staticmethod
    def _validate(body: Mapping[str, Any]) -> None:
        if not isinstance(body.get("model"), str):
            raise _ApiError(Error(400, message="model: Field required"))
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _ApiError(Error(400, message="max_tokens: Field required"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(Error(400, message="messages: at least one message is required"))

    async def _handle_not_found(self, request: web.Request) -> web.Response:
        return self._error_response(Error(404, message=f"Not found: {request.path}"))

    async def _handle_count_tokens(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = RecordedRequest(
            body={}, headers=headers, received_at=time.monotonic(), path=request.path
        )
        self.count_tokens_requests.append(record)
        try:
            self._check_auth(headers)
            record.body = self._parse_body(await request.read())
            response: web.Response = web.json_response(
                {"input_tokens": estimate_tokens(request_text(record.body))},
                headers=self._base_headers(),
            )
        except _ApiError as exc:
            record.behaviour = exc.error
            response = self._error_response(exc.error)
        record.status = response.status
        record.answered_at = time.monotonic()
        return response

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = RecordedRequest(
            body={}, headers=headers, received_at=time.monotonic(), path=request.path
        )
        self.requests.append(record)
        try:
            raw = await request.read()
            parsed: Any = None
            unreadable: ValueError | None = None
            try:
                parsed = json.loads(raw)
            except ValueError as exc:
                unreadable = exc
            record.body = parsed if isinstance(parsed, dict) else {}
            self._notify()
            try:
                response = await self._answer(request, record, parsed, unreadable)
            except _ApiError as exc:
                record.behaviour = record.behaviour or exc.error
                response = self._error_response(exc.error, exc.headers)
            record.status = response.status
            return response
        finally:
            if record.status is None:
                record.status = 0  # the connection closed without an answer
            record.answered_at = time.monotonic()
            if task is not None:
                self._inflight.discard(task)
            self._notify()

    async def _answer(
        self,
        request: web.Request,
        record: RecordedRequest,
        parsed: Any,
        unreadable: ValueError | None,
    ) -> web.StreamResponse:
        self._check_auth(record.headers)
        body = self._checked_body(parsed, unreadable)
        self._validate(body)
        tokens = estimate_tokens(request_text(body))
        limit_headers = self._admit(tokens, record)
        behaviour: Behaviour = self._queue.popleft() if self._queue else self.default
        record.behaviour = behaviour
        return await self._apply(behaviour, request, body, limit_headers)

    # -- rate limiting -----------------------------------------------------------------------

    def _admit(self, tokens: int, record: RecordedRequest) -> dict[str, str]:
        now = time.monotonic()
        while self._window and self._window[0][0] <= now - WINDOW_SECONDS:
            self._window_tokens -= self._window.popleft()[1]
        used_tokens = self._window_tokens
        wait: float = 0.0
        reason = ""
        if self._rpm is not None and len(self._window) >= self._rpm:
            index = len(self._window) - self._rpm
            wait = self._window[index][0] + WINDOW_SECONDS - now
            reason = f"{self._rpm} requests per minute"
        if self._itpm is not None and self._window and used_tokens + tokens > self._itpm:
            freed, token_wait = 0, 0.0
            for at, spent in self._window:
                freed += spent
                token_wait = at + WINDOW_SECONDS - now
                if used_tokens - freed + tokens <= self._itpm:
                    break
            if token_wait > wait:
                wait = token_wait
                reason = f"{self._itpm} input tokens per minute"
        if wait > 0:
            self.rate_limited += 1
            error = Error(
                429,
                message=f"This request would exceed your organization's rate limit of {reason}.",
                retry_after=max(1, math.ceil(wait)),
            )
            record.behaviour = error
            raise _ApiError(error, self._limit_headers(now))
        self._window.append((now, tokens))
        self._window_tokens += tokens
        return self._limit_headers(now)

    def _limit_headers(self, now: float) -> dict[str, str]:
        wall = time.time()
        reset = wall
        if self._window:
            reset = wall + max(0.0, self._window[0][0] + WINDOW_SECONDS - now)
        rpm = self._rpm if self._rpm is not None else UNLIMITED_RPM
        headers = {
            "anthropic-ratelimit-requests-limit": str(rpm),
            "anthropic-ratelimit-requests-remaining": str(max(0, rpm - len(self._window))),
            "anthropic-ratelimit-requests-reset": _rfc3339(reset),
        }
        if self._itpm is not None:
            used = self._window_tokens
            headers["anthropic-ratelimit-input-tokens-limit"] = str(self._itpm)
            headers["anthropic-ratelimit-input-tokens-remaining"] = str(max(0, self._itpm - used))
            headers["anthropic-ratelimit-input-tokens-reset"] = _rfc3339(reset)
        return headers

    # -- behaviours --------------------------------------------------------------------------

    async def _apply(
        self,
        behaviour: Behaviour,
        request: web.Request,
        body: JSONDict,
        limit_headers: dict[str, str],
        pace_s: float = 0.0,
    ) -> web.StreamResponse:
        if isinstance(behaviour, Flaky):
            return await self._apply(behaviour.pick(), request, body, limit_headers, pace_s)
        if isinstance(behaviour, Delay):
            if behaviour.paced and body.get("stream"):
                return await self._apply(
                    behaviour.then, request, body, limit_headers, pace_s=behaviour.seconds
                )
            await asyncio.sleep(behaviour.seconds)
            return await self._apply(behaviour.then, request, body, limit_headers)
        if isinstance(behaviour, Error):
            return self._error_response(behaviour)
        if isinstance(behaviour, Disconnect):
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        headers = {**self._base_headers(), **limit_headers}
        if isinstance(behaviour, Malformed) and behaviour.kind == "invalid_json_body":
            if body.get("stream"):
                return await self._stream_broken(request, headers)
            broken = b'{"id": "msg_broken", "type": "message", "content": [{"type": "te'
            return web.Response(
                body=broken, status=200, headers=headers, content_type="application/json"
            )
        message = await self._build_message(behaviour, body)
        if body.get("stream"):
            hold = behaviour.hold if isinstance(behaviour, Reply) else None
            cut = behaviour.cut_after if isinstance(behaviour, Reply) else None
            return await self._stream(request, message, headers, pace_s, hold, cut)
        return web.json_response(message, headers=headers)

    async def _call_responder(self, body: JSONDict) -> JSONDict | str | None:
        if self.responder is None:
            return None
        result = self.responder(body)
        if inspect.isawaitable(result):
            result = await result
        return result

    @staticmethod
    def _forced_tool(body: Mapping[str, Any]) -> JSONDict | None:
        choice = body.get("tool_choice")
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        if not isinstance(choice, dict) or not tools:
            return None
        if choice.get("type") == "tool":
            name = choice.get("name")
            for tool in tools:
                if tool.get("name") == name:
                    return tool
            raise _ApiError(
                Error(400, message=f"tool_choice: tool {name!r} is not among the tools provided")
            )
        if choice.get("type") == "any":
            return tools[0]
        return None

    @staticmethod
    def _output_schema(body: Mapping[str, Any]) -> JSONDict | None:
        for fmt in (
            (body.get("output_config") or {}).get("format"),
            body.get("output_format"),
        ):
            if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                schema = fmt.get("schema")
                if isinstance(schema, dict):
                    return schema
        return None

    async def _payload(self, behaviour: Behaviour, body: JSONDict, schema: JSONDict) -> Any:
        if isinstance(behaviour, Reply) and behaviour.tool_input is not None:
            payload: Any = copy.deepcopy(behaviour.tool_input)
        else:
            answer = await self._call_responder(body)
            payload = answer if isinstance(answer, dict) else example_from_schema(schema)
            if self.stamp_words and isinstance(payload, dict):
                stamps = " ".join([STAMP_PLACEHOLDER] * self.stamp_words)
                payload = {k: stamps if isinstance(v, str) else v for k, v in payload.items()}
        if isinstance(behaviour, Malformed) and behaviour.kind == "missing_field":
            payload = _drop_required(payload, schema)
        elif isinstance(behaviour, Malformed) and behaviour.kind == "wrong_type":
            payload = _break_type(payload, schema)
        return payload

    async def _build_message(self, behaviour: Behaviour, body: JSONDict) -> JSONDict:
        content: list[JSONDict]
        if isinstance(behaviour, Refusal):
            content, stop_reason = [{"type": "text", "text": behaviour.text}], "refusal"
        elif isinstance(behaviour, Malformed) and behaviour.kind == "no_tool":
            content, stop_reason = [{"type": "text", "text": NO_TOOL_TEXT}], "end_turn"
        elif (tool := self._forced_tool(body)) is not None:
            schema = tool.get("input_schema") or {"type": "object"}
            payload = await self._payload(behaviour, body, schema)
            block = {
                "type": "tool_use",
                "id": _new_id("toolu_"),
                "name": tool.get("name"),
                "input": payload,
            }
            content, stop_reason = [block], "tool_use"
        elif (schema := self._output_schema(body)) is not None:
            payload = await self._payload(behaviour, body, schema)
            content, stop_reason = [{"type": "text", "text": json.dumps(payload)}], "end_turn"
        else:
            text: str | None = behaviour.text if isinstance(behaviour, Reply) else None
            if text is None:
                answer = await self._call_responder(body)
                if isinstance(answer, str):
                    text = answer
                elif isinstance(answer, dict):
                    text = json.dumps(answer)
            content, stop_reason = [{"type": "text", "text": text or DEFAULT_TEXT}], "end_turn"
        return {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": self._usage(body, content),
        }

    # -- usage and prompt caching ------------------------------------------------------------

    @staticmethod
    def _prefixes(body: Mapping[str, Any], segments: list[_Segment]) -> list[tuple[str, int]]:
        """(hash, tokens) of the prefix ending at each block, tools and model included."""
        scope = _key({"model": body.get("model"), "tools": body.get("tools") or []})
        digest = hashlib.sha256(scope.encode())
        prefixes: list[tuple[str, int]] = []
        length, has_text = 0, False
        for segment in segments:
            digest.update(b"\x00" + segment.key.encode())
            if segment.text:
                length += len(segment.text) + (1 if has_text else 0)
                has_text = True
            prefixes.append((digest.hexdigest(), length // 4))
        return prefixes

    def _usage(self, body: Mapping[str, Any], content: list[JSONDict]) -> JSONDict:
        """Token usage; prompt caching keyed on hashed prefixes ending at cache breakpoints.

        A breakpoint (``cache_control: {"type": "ephemeral"}``) stores the prefix up to and
        including its block. Like the real API, a breakpoint also finds a cached prefix that
        ends up to 20 blocks earlier, so a conversation whose breakpoint moves forward reads
        the previous turn's prefix and writes only the new part.
        """
        segments = list(_segments(body))
        total = estimate_tokens(_join([s.text for s in segments]))
        breakpoints = [i for i, segment in enumerate(segments) if segment.cached]
        read = created = 0
        if breakpoints:
            prefixes = self._prefixes(body, segments)
            for point in breakpoints:
                for index in range(point, max(-1, point - 21), -1):
                    key, tokens = prefixes[index]
                    if key in self._cache:
                        read = max(read, tokens)
                        break
            created = max(0, prefixes[breakpoints[-1]][1] - read)
            self._cache.update(prefixes[point][0] for point in breakpoints)
        output = max(1, len(json.dumps(content)) // 4)
        usage = {
            "input_tokens": max(1, total - read - created),
            "output_tokens": output,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        }
        self.usages.append(usage)
        return usage

    # -- streaming ---------------------------------------------------------------------------

    @staticmethod
    async def _start_stream(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"},
        )
        await response.prepare(request)
        return response

    @staticmethod
    async def _event(response: web.StreamResponse, data: Mapping[str, Any]) -> None:
        await response.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())

    async def _stream(
        self,
        request: web.Request,
        message: JSONDict,
        headers: Mapping[str, str],
        pace_s: float = 0.0,
        hold: tuple[int, asyncio.Event] | None = None,
        cut_after: int | None = None,
    ) -> web.StreamResponse:
        response = await self._start_stream(request, headers)
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage, "output_tokens": 1}
        await self._event(response, {"type": "message_start", "message": start})
        await self._event(response, {"type": "ping"})
        blocks: list[tuple[int, JSONDict, str, str, list[str]]] = []
        for index, block in enumerate(message["content"]):
            if block["type"] == "tool_use":
                opening = {**block, "input": {}}
                text = json.dumps(block["input"])
                delta_type, delta_key = "input_json_delta", "partial_json"
            else:
                opening = {**block, "text": ""}
                text = block.get("text", "")
                delta_type, delta_key = "text_delta", "text"
            blocks.append((index, opening, delta_type, delta_key, _stream_pieces(text)))
        count = sum(len(pieces) for *_, pieces in blocks)
        interval = pace_s / count if count else 0.0
        loop = asyncio.get_running_loop()
        due = loop.time()
        written = 0
        for index, opening, delta_type, delta_key, pieces in blocks:
            await self._event(
                response, {"type": "content_block_start", "index": index, "content_block": opening}
            )
            for piece in pieces:
                if cut_after is not None and written >= cut_after:
                    if request.transport is not None:
                        request.transport.abort()
                    raise asyncio.CancelledError
                if hold is not None and written >= hold[0]:
                    await hold[1].wait()
                    hold = None
                if interval:
                    due += interval
                    await asyncio.sleep(max(0.0, due - loop.time()))
                if self.stamp_words:
                    piece = _STAMP.sub(lambda _: f"T{time.time():17.6f}", piece)
                delta = {"type": delta_type, delta_key: piece}
                await self._event(
                    response, {"type": "content_block_delta", "index": index, "delta": delta}
                )
                written += len(piece)
            await self._event(response, {"type": "content_block_stop", "index": index})
        await self._event(
            response,
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await self._event(response, {"type": "message_stop"})
        await response.write_eof()
        return response

    async def _stream_broken(
        self, request: web.Request, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        response = await self._start_stream(request, headers)
        await response.write(b'event: message_start\ndata: {"type": "message_start", "mess\n\n')
        await response.write_eof()
        return response


# --------------------------------------------------------------------------------------------
# Standalone mode
# --------------------------------------------------------------------------------------------


def _stream_pieces(text: str) -> list[str]:
    """The pieces a streamed text is written in: whole words, STREAM_PIECE_CHARS or so."""
    pieces: list[str] = []
    current = ""
    for word in _STREAM_WORDS.findall(text):
        if current and len(current) + len(word) > STREAM_PIECE_CHARS:
            pieces.append(current)
            current = ""
        current += word
    if current:
        pieces.append(current)
    return pieces


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_anthropic",
        description="Serve a fake Anthropic Messages API until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute limit")
    parser.add_argument("--itpm", type=int, default=None, help="input tokens per minute limit")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered 529"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --error-rate")
    parser.add_argument(
        "--pace",
        action="store_true",
        help="a streamed reply is written over --delay rather than after it",
    )
    parser.add_argument(
        "--stamp-words",
        type=int,
        default=0,
        help="top-level strings of tool inputs are this many words, each the time it is sent",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    default: Behaviour = Reply()
    if args.error_rate > 0:
        default = Flaky(args.error_rate, Error(529), Reply(), seed=args.seed)
    if args.delay > 0:
        default = Delay(args.delay, then=default, paced=args.pace)
    fake = FakeAnthropic(default=default, stamp_words=args.stamp_words)
    if args.rpm is not None or args.itpm is not None:
        fake.rate_limit(args.rpm, args.itpm)
    await fake.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake-anthropic listening on {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()
        print(f"fake-anthropic stopped; answered by status: {fake.stats()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # Standalone, the fake shares the machine with what it serves: uvloop, where installed,
    # costs it less CPU per request than asyncio's own loop.
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
    except ImportError:
        pass
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
