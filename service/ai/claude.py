"""The Claude analyzer: forced tool use, answers validated against their schema.

Every call takes its budget from the shared rate limiter before it is sent and settles it
after, and is told to the job's meter as soon as it is answered.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anthropic
import httpx2
from anthropic import AsyncStream
from anthropic.types import Message, RawMessageStreamEvent, ToolUseBlock
from pydantic import BaseModel, ValidationError

from service.ai import prompts
from service.ai.analyzer import (
    COVERAGE,
    MAP_CONTROLS,
    MATCH,
    NO_TEXT,
    Analysis,
    AnswerText,
    ControlText,
    DocumentText,
    Meter,
    RequirementText,
    Usage,
)
from service.ai.errors import translate
from service.ai.partial_json import FieldText
from service.ai.ratelimit import RateLimiter, Reservation
from service.ai.schemas import ControlMappingBatch, CoverageAssessment, MatchAssessment
from service.jobs.model import PermanentFailure, RetryLater
from service.metrics import Metrics

M = TypeVar("M", bound=BaseModel)

# Claude's tokenizer makes about 3.5 characters of English prose a token; counting the JSON
# of the request (markup, schema and all) errs on the high side, and every answer's usage
# corrects the bucket afterwards.
CHARS_PER_TOKEN = 3.5


@dataclass(frozen=True)
class CallConfig:
    """How one job type asks: which model, how many output tokens at most, which temperature
    (None: not sent, the model's default; the Claude 5 models accept no other)."""

    model: str
    max_tokens: int
    temperature: float | None = None


def create_client(api_key: str, base_url: str | None, timeout_s: float) -> anthropic.AsyncAnthropic:
    """The one Anthropic client of a process. The job retries, the SDK does not."""
    # The SDK's aiohttp transport costs a fraction of the CPU of its default one per call,
    # which is what bounds a worker running hundreds of calls at once.
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout_s,
        http_client=anthropic.DefaultAioHttpClient(timeout=timeout_s),
    )


def estimate_input_tokens(system: str, messages: object, tools_chars: int) -> int:
    """Input tokens of a request before it is sent, from its size (the tools' JSON counted
    once per tool definition, see _tool)."""
    size = len(system) + len(json.dumps(messages)) + tools_chars
    return math.ceil(size / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class _Tool:
    """A forced tool's definition, built once per answer model: the list the request sends,
    and its size in JSON for the token estimate."""

    tools: list[dict[str, Any]]
    json_chars: int


@functools.cache
def _tool(name: str, description: str, model: type[BaseModel]) -> _Tool:
    tools = [{"name": name, "description": description, "input_schema": model.model_json_schema()}]
    return _Tool(tools, len(json.dumps(tools)))


def _validation_problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class ClaudeAnalyzer:
    source = "claude"

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        configs: Mapping[str, CallConfig],
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._configs = configs
        self._limiter = limiter
        self._metrics = metrics

    def model_for(self, job_type: str) -> str | None:
        return self._configs[job_type].model

    async def match(
        self,
        requirement: RequirementText,
        document: DocumentText,
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[MatchAssessment]:
        prompt = prompts.match_prompt(requirement, document)
        return await self._ask(
            self._configs[MATCH],
            [{"type": "text", "text": prompt}],
            "record_match_assessment",
            "Record how well the document satisfies the requirement.",
            MatchAssessment,
            meter,
            _Follow(text, "rationale") if text.wanted else None,
        )

    async def coverage(
        self,
        requirement: RequirementText,
        documents: Sequence[DocumentText],
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[CoverageAssessment]:
        prompt = prompts.coverage_prompt(requirement, documents)
        return await self._ask(
            self._configs[COVERAGE],
            [{"type": "text", "text": prompt}],
            "record_coverage_assessment",
            "Record how well the documents together cover the requirement.",
            CoverageAssessment,
            meter,
            _Follow(text, "summary") if text.wanted else None,
        )

    async def map_controls(
        self,
        document: DocumentText,
        controls: Sequence[ControlText],
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[ControlMappingBatch]:
        # The tools, the system prompt and the document lead every batch's request unchanged,
        # and the cache breakpoint after the document makes them one cached prefix: batches
        # after the first read it from the cache.
        content: list[dict[str, Any]] = [
            {
                "type": "text",
                "text": prompts.map_controls_document(document),
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": prompts.map_controls_prompt(controls)},
        ]
        return await self._ask(
            self._configs[MAP_CONTROLS],
            content,
            "record_implemented_controls",
            "Record which of the listed controls the document implements.",
            ControlMappingBatch,
            meter,
            _Follow(text, "rationale", tag="control_id", tag_as="controlId")
            if text.wanted
            else None,
        )

    async def _ask(
        self,
        config: CallConfig,
        content: list[dict[str, Any]],
        tool_name: str,
        description: str,
        answer_model: type[M],
        meter: Meter,
        follow: _Follow | None = None,
    ) -> Analysis[M]:
        """One forced tool call; one corrective retry when the answer does not validate.

        With `follow`, the call streams, and the text of the answer's field goes to it as it
        is written; each call's answer starts that text afresh (the corrective call's, or
        that of a call made again after the last one broke off), so that it adds up to the
        answer taken, not to those rejected before it."""
        usage = Usage()
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        tool = _tool(tool_name, description, answer_model)
        problem = ""
        for attempt in (1, 2):
            if follow is not None:
                follow.restart()
            response = await self._create(config, messages, tool, tool_name, follow)
            used = _usage_of(response)
            usage.add(used)
            await meter.record(config.model, used)
            if response.stop_reason == "refusal":
                raise PermanentFailure("Claude declined to analyse this content (refusal)")
            block = next(
                (
                    b
                    for b in response.content
                    if isinstance(b, ToolUseBlock) and b.name == tool_name
                ),
                None,
            )
            if block is None:
                problem = "the answer did not call the tool"
                correction: dict[str, Any] = {
                    "role": "user",
                    "content": f"Answer by calling the {tool_name} tool.",
                }
            else:
                try:
                    return Analysis(answer_model.model_validate(block.input), usage)
                except ValidationError as exc:
                    problem = _validation_problem(exc)
                correction = {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": block.id,
                            "is_error": True,
                            "content": f"Invalid input ({problem}). Call the tool again with "
                            "input that matches its schema.",
                        }
                    ],
                }
            if attempt == 1:
                messages = [
                    *messages,
                    {"role": "assistant", "content": [b.model_dump() for b in response.content]},
                    correction,
                ]
        raise PermanentFailure(f"Claude returned invalid output twice: {problem}")

    async def _create(
        self,
        config: CallConfig,
        messages: list[dict[str, Any]],
        tool: _Tool,
        tool_name: str,
        follow: _Follow | None = None,
    ) -> Message:
        reservation: Reservation | None = None
        if self._limiter is not None:
            reservation = await self._limiter.acquire(
                config.model,
                estimate_input_tokens(prompts.SYSTEM, messages, tool.json_chars),
                config.max_tokens,
            )
        # The SDK no longer takes sampling parameters by name; the API still does, on the
        # models that accept them.
        extra_body = None if config.temperature is None else {"temperature": config.temperature}
        try:
            raw = await self._client.messages.with_raw_response.create(
                model=config.model,
                max_tokens=config.max_tokens,
                system=prompts.SYSTEM,
                messages=cast(Any, messages),
                tools=cast(Any, tool.tools),
                tool_choice={"type": "tool", "name": tool_name},
                extra_body=extra_body,
                stream=follow is not None,
            )
            answer = await raw.parse()
            if isinstance(answer, AsyncStream):
                assert follow is not None
                message = await _read_stream(answer, follow, tool_name)
            else:
                message = answer
        except (anthropic.APIResponseValidationError, json.JSONDecodeError) as exc:
            self._count_error("unreadable")
            # A garbled response is the transport's fault, not the model's: try again later.
            raise RetryLater(f"The Anthropic API sent a response we could not read: {exc}") from exc
        except anthropic.APIStatusError as exc:
            self._count_error(str(exc.status_code))
            outcome = translate(exc)
            if reservation is not None and self._limiter is not None:
                await self._limiter.rejected(
                    reservation,
                    exc.status_code,
                    exc.response.headers,
                    outcome.delay if isinstance(outcome, RetryLater) else None,
                )
            raise outcome from exc
        except anthropic.AnthropicError as exc:
            self._count_error("0")
            # Timed out or never connected: what the call took stays taken, to be safe.
            raise translate(exc) from exc
        except httpx2.HTTPError as exc:
            self._count_error("0")
            # The stream broke off after it began: what the call took stays taken.
            raise RetryLater(f"The stream from the Anthropic API broke off: {exc}") from exc
        if not isinstance(message, Message):
            raise RetryLater("The Anthropic API answered with a stream we did not ask for")
        usage = _usage_of(message)
        if self._metrics is not None:
            metrics = self._metrics
            metrics.of(metrics.anthropic_calls, config.model).inc()
            tokens = metrics.anthropic_tokens
            metrics.of(tokens, "input").inc(usage.input_tokens)
            metrics.of(tokens, "output").inc(usage.output_tokens)
            metrics.of(tokens, "cache_read").inc(usage.cache_read_input_tokens)
            metrics.of(tokens, "cache_creation").inc(usage.cache_creation_input_tokens)
        if reservation is not None and self._limiter is not None:
            # The job does not wait for its budget's settle: it goes with the bucket's next
            # write, while the job records its usage and completes.
            self._limiter.answered_soon(reservation, usage, raw.headers)
        return message

    def _count_error(self, status: str) -> None:
        if self._metrics is not None:
            self._metrics.of(self._metrics.anthropic_errors, status).inc()


class _Follow:
    """Sends the text of one field of a streamed tool input to `text` as it arrives."""

    def __init__(
        self, text: AnswerText, field: str, tag: str | None = None, tag_as: str = ""
    ) -> None:
        self._text = text
        self._field = field
        self._tag = tag
        self._tag_as = tag_as
        self._scan = FieldText(field, tag)

    def restart(self) -> None:
        """A new answer begins: its text starts afresh, read from its own start."""
        self._scan = FieldText(self._field, self._tag)
        self._text.restart(self._field)

    def feed(self, partial_json: str) -> None:
        for piece in self._scan.feed(partial_json):
            if self._tag_as and piece.tag is not None:
                self._text.write(self._field, piece.text, **{self._tag_as: piece.tag})
            else:
                self._text.write(self._field, piece.text)


async def _read_stream(
    events: AsyncStream[RawMessageStreamEvent], follow: _Follow, tool_name: str
) -> Message:
    """The message a stream of events builds, the tool's input followed as it arrives."""
    start: Message | None = None
    blocks: dict[int, Any] = {}
    parts: dict[int, list[str]] = {}
    followed: set[int] = set()
    stop_reason: Any = None
    end_usage: Any = None
    async for event in events:
        if event.type == "content_block_delta":
            delta = event.delta
            if delta.type == "input_json_delta":
                parts[event.index].append(delta.partial_json)
                if event.index in followed:
                    follow.feed(delta.partial_json)
            elif delta.type == "text_delta":
                parts[event.index].append(delta.text)
        elif event.type == "content_block_start":
            block = event.content_block
            blocks[event.index] = block
            parts[event.index] = []
            if block.type == "tool_use" and block.name == tool_name:
                followed.add(event.index)
        elif event.type == "message_start":
            start = event.message
        elif event.type == "message_delta":
            stop_reason = event.delta.stop_reason
            end_usage = event.usage
    if start is None:
        raise RetryLater("The Anthropic API's stream ended before its message began")
    content = []
    for index in sorted(blocks):
        block = blocks[index]
        text = "".join(parts[index])
        if block.type == "tool_use":
            block = block.model_copy(update={"input": json.loads(text) if text else {}})
        elif block.type == "text":
            block = block.model_copy(update={"text": text})
        content.append(block)
    usage = start.usage
    if end_usage is not None:
        final = {k: v for k, v in end_usage.model_dump().items() if v is not None}
        usage = usage.model_copy(
            update={k: v for k, v in final.items() if k in type(usage).model_fields}
        )
    return start.model_copy(update={"content": content, "stop_reason": stop_reason, "usage": usage})


def _usage_of(response: Message) -> Usage:
    u = response.usage
    return Usage(
        calls=1,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
        cache_read_input_tokens=u.cache_read_input_tokens or 0,
    )
