"""The fake Messages API, driven by the real ``anthropic`` SDK."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageParam, TextBlockParam, ToolParam
from pydantic import BaseModel, Field, ValidationError

from tests.fake_anthropic import (
    DEFAULT_TEXT,
    Delay,
    Disconnect,
    Error,
    FakeAnthropic,
    Flaky,
    Malformed,
    Refusal,
    Reply,
    example_from_schema,
    request_text,
)

MODEL = "claude-test-model"
REPO_ROOT = Path(__file__).resolve().parents[1]


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class Evidence(BaseModel):
    source: str = Field(min_length=3, max_length=12)
    confidence: float = Field(gt=0, lt=1)


class Finding(BaseModel):
    control_id: str
    rationale: str
    score: int = Field(ge=1, le=5)
    severity: Severity
    kind: Literal["gap", "ok"]
    evidence: list[Evidence] = Field(min_length=2, max_length=4)
    note: str | None = None
    weight: int = Field(default=10, gt=0, lt=100)


class Assessment(BaseModel):
    findings: list[Finding] = Field(min_length=1)
    summary: str
    reviewed: bool


TOOL: ToolParam = {
    "name": "record_assessment",
    "description": "Record the assessment.",
    "input_schema": Assessment.model_json_schema(),
}
FINDING_TOOL: ToolParam = {
    "name": "record_finding",
    "description": "Record one finding.",
    "input_schema": Finding.model_json_schema(),
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="test", base_url=fake.url, max_retries=0) as c:
        yield c


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


async def call_tool(
    client: anthropic.AsyncAnthropic, tool: ToolParam = FINDING_TOOL, prompt: str = "Assess."
) -> anthropic.types.Message:
    return await client.messages.create(
        model=MODEL,
        max_tokens=512,
        messages=user(prompt),
        tools=[tool],
        tool_choice={"type": "tool", "name": tool["name"]},
    )


def tool_input(message: anthropic.types.Message) -> dict[str, Any]:
    assert len(message.content) == 1
    block = message.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert isinstance(block.input, dict)
    return block.input


async def test_forced_tool_call_returns_valid_input(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    raw = await client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=512,
        messages=user("Assess the controls."),
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "record_assessment"},
    )
    assert raw.headers["request-id"].startswith("req_")
    message = await raw.parse()
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.id.startswith("toolu_")
    assert block.name == "record_assessment"
    assessment = Assessment.model_validate(block.input)
    finding = assessment.findings[0]
    assert finding.score == 3
    assert 0 < finding.weight < 100
    assert finding.rationale == "Generated rationale"
    assert len(finding.evidence) == 2
    assert message.usage.input_tokens >= 1
    assert message.usage.output_tokens >= 1
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0

    # Deterministic: the same schema gives the same input.
    again = await call_tool(client, TOOL)
    assert tool_input(again) == block.input
    assert fake.count() == 2
    assert fake.requests[0].body["tool_choice"]["name"] == "record_assessment"
    headers = fake.requests[0].headers
    assert "test" in (headers.get("x-api-key") or headers.get("authorization") or "")
    assert "anthropic-version" in headers
    assert fake.requests[0].status == 200
    assert isinstance(fake.requests[0].behaviour, Reply)


async def test_text_reply_without_forced_tool(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("Hello"))
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.role == "assistant"
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text == DEFAULT_TEXT


async def test_tool_choice_auto_gives_text(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=user("Hello"),
        tools=[FINDING_TOOL],
    )
    assert message.stop_reason == "end_turn"
    assert isinstance(message.content[0], anthropic.types.TextBlock)


async def test_unknown_forced_tool_is_bad_request(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=user("Hello"),
            tools=[FINDING_TOOL],
            tool_choice={"type": "tool", "name": "nope"},
        )


async def test_responder_answers_from_prompt(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    seen: list[str] = []

    def responder(body: dict[str, Any]) -> dict[str, Any] | None:
        text = request_text(body)
        seen.append(text)
        if "CTRL-7" not in text:
            return None
        generated = example_from_schema(Finding.model_json_schema())
        return {**generated, "control_id": "CTRL-7"}

    fake.responder = responder
    message = await client.messages.create(
        model=MODEL,
        max_tokens=256,
        system=[{"type": "text", "text": "You are an auditor."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Check control CTRL-7."}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "policy text"}
                ],
            },
        ],
        tools=[FINDING_TOOL],
        tool_choice={"type": "tool", "name": "record_finding"},
    )
    finding = Finding.model_validate(tool_input(message))
    assert finding.control_id == "CTRL-7"
    assert seen == ["You are an auditor.\nCheck control CTRL-7.\npolicy text"]

    # None falls back to generation.
    other = await call_tool(client, prompt="no control here")
    assert Finding.model_validate(tool_input(other)).control_id == "Generated control id"


async def test_async_responder_and_scripted_reply(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    async def responder(body: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return "custom text"

    fake.responder = responder
    fake.enqueue(Reply(text="scripted"))
    first = await client.messages.create(model=MODEL, max_tokens=64, messages=user("a"))
    second = await client.messages.create(model=MODEL, max_tokens=64, messages=user("b"))
    assert isinstance(first.content[0], anthropic.types.TextBlock)
    assert isinstance(second.content[0], anthropic.types.TextBlock)
    assert first.content[0].text == "scripted"
    assert second.content[0].text == "custom text"


async def test_overloaded_then_success(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.enqueue(Error(529), Reply())
    with pytest.raises(anthropic.InternalServerError) as caught:
        await call_tool(client)
    assert isinstance(caught.value, anthropic.OverloadedError)
    assert caught.value.status_code == 529
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert caught.value.response.headers["request-id"].startswith("req_")
    Finding.model_validate(tool_input(await call_tool(client)))
    assert fake.count(529) == 1
    assert fake.count(200) == 1
    assert fake.pending == 0


async def test_rate_limit_error_has_retry_after(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.enqueue(Error(429, retry_after=2))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await call_tool(client)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("status", "error_type", "exc_type"),
    [
        (500, "api_error", anthropic.InternalServerError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (400, "invalid_request_error", anthropic.BadRequestError),
        (403, "permission_error", anthropic.PermissionDeniedError),
    ],
)
async def test_error_statuses(
    fake: FakeAnthropic,
    client: anthropic.AsyncAnthropic,
    status: int,
    error_type: str,
    exc_type: type[anthropic.APIStatusError],
) -> None:
    fake.enqueue(Error(status, message="scripted failure"))
    with pytest.raises(exc_type) as caught:
        await call_tool(client)
    assert caught.value.status_code == status
    assert caught.value.body == {
        "type": "error",
        "error": {"type": error_type, "message": "scripted failure"},
    }


async def test_default_behaviour_applies_when_queue_empty(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.default = Error(500)
    fake.enqueue(Reply())
    await call_tool(client)
    for _ in range(2):
        with pytest.raises(anthropic.InternalServerError):
            await call_tool(client)
    assert fake.stats() == {200: 1, 500: 2}


async def test_malformed_missing_field(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.enqueue(Malformed("missing_field"))
    data = tool_input(await call_tool(client))
    assert "control_id" not in data
    assert "rationale" in data
    with pytest.raises(ValidationError):
        Finding.model_validate(data)


async def test_malformed_wrong_type(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(Malformed("wrong_type"))
    data = tool_input(await call_tool(client))
    assert data["score"] == "high"
    with pytest.raises(ValidationError):
        Finding.model_validate(data)


async def test_malformed_no_tool(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(Malformed("no_tool"))
    message = await call_tool(client)
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]


async def test_malformed_invalid_json_body(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.enqueue(Malformed("invalid_json_body"))
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=user("Hello")
    )
    assert raw.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw.http_response.text)
    fake.enqueue(Malformed("invalid_json_body"))
    with pytest.raises(ValueError):
        await call_tool(client)


async def test_refusal(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(Refusal())
    message = await call_tool(client)
    assert message.stop_reason == "refusal"
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text


async def test_disconnect(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(Disconnect())
    with pytest.raises(anthropic.APIConnectionError):
        await call_tool(client)
    assert fake.requests[0].status == 0
    Finding.model_validate(tool_input(await call_tool(client)))


async def test_delay(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.enqueue(Delay(0.4))
    started = time.monotonic()
    Finding.model_validate(tool_input(await call_tool(client)))
    assert time.monotonic() - started >= 0.4

    fake.enqueue(Delay(0.2, then=Error(529)))
    started = time.monotonic()
    with pytest.raises(anthropic.OverloadedError):
        await call_tool(client)
    assert time.monotonic() - started >= 0.2


async def test_default_delay_and_wait_for_requests(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.default = Delay(0.3)
    pending = asyncio.create_task(call_tool(client))
    records = await fake.wait_for_requests(1, timeout=5)
    assert records[0].status is None  # still in flight
    assert fake.count() == 0
    records = await fake.wait_for_requests(1, timeout=5, answered=True)
    assert records[0].status == 200
    assert records[0].answered_at is not None
    assert records[0].answered_at - records[0].received_at >= 0.3
    await pending
    with pytest.raises(TimeoutError):
        await fake.wait_for_requests(2, timeout=0.05)


async def test_rate_limit_requests_per_minute(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.rate_limit(2)
    first = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=user("a")
    )
    second = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=user("b")
    )
    assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert second.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(second.headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None
    assert "anthropic-ratelimit-input-tokens-limit" not in first.headers

    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model=MODEL, max_tokens=64, messages=user("c"))
    retry_after = caught.value.response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    assert fake.rate_limited == 1
    assert fake.count(429) == 1
    assert fake.stats() == {200: 2, 429: 1}

    fake.rate_limit(None)
    await client.messages.create(model=MODEL, max_tokens=64, messages=user("d"))


async def test_rate_limit_does_not_consume_queue(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.rate_limit(1)
    await client.messages.create(model=MODEL, max_tokens=64, messages=user("a"))
    fake.enqueue(Refusal())
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model=MODEL, max_tokens=64, messages=user("b"))
    assert fake.pending == 1


async def test_rate_limit_input_tokens(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.rate_limit(None, input_tokens_per_minute=30)
    prompt = "x" * 80  # 20 tokens
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=user(prompt)
    )
    assert raw.headers["anthropic-ratelimit-input-tokens-limit"] == "30"
    assert raw.headers["anthropic-ratelimit-input-tokens-remaining"] == "10"
    assert "anthropic-ratelimit-input-tokens-reset" in raw.headers
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model=MODEL, max_tokens=64, messages=user(prompt))
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert fake.rate_limited == 1


async def test_prompt_cache_creation_then_read(client: anthropic.AsyncAnthropic) -> None:
    system: list[TextBlockParam] = [
        {"type": "text", "text": "S" * 400, "cache_control": {"type": "ephemeral"}},
    ]

    async def ask(question: str) -> anthropic.types.Usage:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=64,
            system=system,
            messages=user(question),
        )
        return message.usage

    question = "Q" * 40
    first = await ask(question)
    assert first.cache_creation_input_tokens == 100
    assert first.cache_read_input_tokens == 0
    total = len(request_text({"system": system, "messages": user(question)})) // 4
    assert first.input_tokens == total - 100

    second = await ask(question)
    assert second.cache_creation_input_tokens == 0
    assert second.cache_read_input_tokens == 100
    assert second.input_tokens == total - 100

    other_system: list[TextBlockParam] = [
        {"type": "text", "text": "T" * 400, "cache_control": {"type": "ephemeral"}}
    ]
    third = await client.messages.create(
        model=MODEL,
        max_tokens=64,
        system=other_system,
        messages=user(question),
    )
    assert third.usage.cache_creation_input_tokens == 100
    assert third.usage.cache_read_input_tokens == 0


async def test_prompt_cache_breakpoint_moving_forward(client: anthropic.AsyncAnthropic) -> None:
    def turn(text: str, cached: bool) -> list[TextBlockParam]:
        if cached:
            return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
        return [{"type": "text", "text": text}]

    first_turn = "a" * 400  # 100 tokens
    one: list[MessageParam] = [{"role": "user", "content": turn(first_turn, True)}]
    first = await client.messages.create(model=MODEL, max_tokens=64, messages=one)
    assert first.usage.cache_creation_input_tokens == 100
    assert first.usage.cache_read_input_tokens == 0

    three: list[MessageParam] = [
        {"role": "user", "content": turn(first_turn, False)},
        {"role": "assistant", "content": turn("b" * 199, False)},
        {"role": "user", "content": turn("c" * 199, True)},
    ]
    second = await client.messages.create(model=MODEL, max_tokens=64, messages=three)
    # The whole prefix is 400 + 1 + 199 + 1 + 199 characters (joined by newlines): 200 tokens.
    assert second.usage.cache_read_input_tokens == 100
    assert second.usage.cache_creation_input_tokens == 100
    assert second.usage.input_tokens >= 1

    again = await client.messages.create(model=MODEL, max_tokens=64, messages=three)
    assert again.usage.cache_read_input_tokens == 200
    assert again.usage.cache_creation_input_tokens == 0


async def test_count_tokens(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    result = await client.messages.count_tokens(model=MODEL, messages=user("y" * 400))
    assert result.input_tokens == 100
    assert len(fake.count_tokens_requests) == 1
    assert fake.requests == []


async def test_streaming_tool_use(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model=MODEL,
        max_tokens=512,
        messages=user("Assess."),
        tools=[FINDING_TOOL],
        tool_choice={"type": "tool", "name": "record_finding"},
    ) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    Finding.model_validate(tool_input(message))


async def test_structured_output_parse(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.parse(
        model=MODEL, max_tokens=512, messages=user("Assess."), output_format=Finding
    )
    assert isinstance(message.parsed_output, Finding)
    assert 1 <= message.parsed_output.score <= 5


async def test_missing_api_key_is_401(fake: FakeAnthropic) -> None:
    body = {"model": MODEL, "max_tokens": 64, "messages": user("a")}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/v1/messages", json=body) as response,
    ):
        assert response.status == 401
        assert response.headers["request-id"].startswith("req_")
        payload = await response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "authentication_error"
    assert fake.count(401) == 1


async def test_flaky_is_seeded(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.default = Flaky(0.5, seed=3)
    outcomes: list[int] = []
    for _ in range(20):
        try:
            await client.messages.create(model=MODEL, max_tokens=64, messages=user("a"))
            outcomes.append(200)
        except anthropic.OverloadedError:
            outcomes.append(529)
    assert 200 in outcomes
    assert 529 in outcomes
    assert [r.status for r in fake.requests] == outcomes


def test_example_from_schema_keywords() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "minLength": 30},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["label"],
            }
        },
        "type": "object",
        "properties": {
            "root": {"$ref": "#/$defs/Node"},
            "version": {"const": 2},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.1},
            "small": {"type": "integer", "exclusiveMaximum": 0},
            "even": {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 2},
            "code": {"type": "string", "maxLength": 4},
            "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 0},
            "level": {"enum": ["a", "b"]},
            "maybe": {"type": ["null", "integer"], "minimum": 5},
            "when": {"type": "string", "format": "date-time"},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
        },
    }
    value = example_from_schema(schema)
    assert value["version"] == 2
    assert 0 < value["ratio"] < 0.1
    assert value["small"] < 0
    assert value["even"] % 2 == 0
    assert 3 <= value["even"] <= 9
    assert len(value["code"]) <= 4
    assert value["flags"] == []
    assert value["level"] == "a"
    assert value["maybe"] == 5
    assert datetime.fromisoformat(value["when"].replace("Z", "+00:00"))
    assert isinstance(value["pair"][0], int)
    assert isinstance(value["pair"][1], str)
    assert len(value["root"]["label"]) >= 30
    assert example_from_schema(schema) == value


async def test_standalone_mode_serves_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fake_anthropic",
        "--port",
        "0",
        "--delay",
        "0.05",
        "--rpm",
        "100",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        async with anthropic.AsyncAnthropic(api_key="test", base_url=url, max_retries=0) as c:
            raw = await c.messages.with_raw_response.create(
                model=MODEL, max_tokens=64, messages=user("hello")
            )
            assert raw.headers["anthropic-ratelimit-requests-limit"] == "100"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0
        assert b"200: 1" in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
