"""The Claude analyzer: forced tool use, answers validated against their schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import anthropic
from anthropic.types import Message, ToolUseBlock
from pydantic import BaseModel, ValidationError

from service.ai import prompts
from service.ai.analyzer import (
    Analysis,
    ControlText,
    DocumentText,
    RequirementText,
    Usage,
)
from service.ai.errors import translate
from service.ai.schemas import ControlMappingBatch, CoverageAssessment, MatchAssessment
from service.jobs.model import PermanentFailure, RetryLater

M = TypeVar("M", bound=BaseModel)

# Roughly 40k tokens of document per request; longer documents are cut, and say so.
MAX_DOCUMENT_CHARS = 160_000


def create_client(api_key: str, base_url: str | None, timeout_s: float) -> anthropic.AsyncAnthropic:
    """The one Anthropic client of a process. The job retries, the SDK does not."""
    return anthropic.AsyncAnthropic(
        api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
    )


def _tool(name: str, description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {"name": name, "description": description, "input_schema": model.model_json_schema()}


def _validation_problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class ClaudeAnalyzer:
    source = "claude"

    def __init__(self, client: anthropic.AsyncAnthropic, model: str, max_tokens: int) -> None:
        self._client = client
        self._model = model
        self._max_tokens = max_tokens

    @property
    def model(self) -> str | None:
        return self._model

    async def match(
        self, requirement: RequirementText, document: DocumentText
    ) -> Analysis[MatchAssessment]:
        text = prompts.match_prompt(requirement, document, MAX_DOCUMENT_CHARS)
        return await self._ask(
            [{"type": "text", "text": text}],
            "record_match_assessment",
            "Record how well the document satisfies the requirement.",
            MatchAssessment,
        )

    async def coverage(
        self, requirement: RequirementText, documents: Sequence[DocumentText]
    ) -> Analysis[CoverageAssessment]:
        text = prompts.coverage_prompt(requirement, documents, MAX_DOCUMENT_CHARS)
        return await self._ask(
            [{"type": "text", "text": text}],
            "record_coverage_assessment",
            "Record how well the documents together cover the requirement.",
            CoverageAssessment,
        )

    async def map_controls(
        self, document: DocumentText, controls: Sequence[ControlText]
    ) -> Analysis[ControlMappingBatch]:
        # The document leads every batch's request unchanged, so later batches read it from
        # the prompt cache.
        content: list[dict[str, Any]] = [
            {
                "type": "text",
                "text": prompts.map_controls_document(document, MAX_DOCUMENT_CHARS),
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": prompts.map_controls_prompt(controls)},
        ]
        return await self._ask(
            content,
            "record_implemented_controls",
            "Record which of the listed controls the document implements.",
            ControlMappingBatch,
        )

    async def _ask(
        self,
        content: list[dict[str, Any]],
        tool_name: str,
        description: str,
        answer_model: type[M],
    ) -> Analysis[M]:
        """One forced tool call; one corrective retry when the answer does not validate."""
        usage = Usage()
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        problem = ""
        for attempt in (1, 2):
            response = await self._create(messages, tool_name, description, answer_model)
            usage.add(_usage_of(response))
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
        messages: list[dict[str, Any]],
        tool_name: str,
        description: str,
        answer_model: type[BaseModel],
    ) -> Message:
        try:
            message: Message = await self._client.messages.create(
                model=self._model,
                max_tokens=self._max_tokens,
                system=prompts.SYSTEM,
                messages=cast(Any, messages),
                tools=cast(Any, [_tool(tool_name, description, answer_model)]),
                tool_choice={"type": "tool", "name": tool_name},
            )
            return message
        except (anthropic.APIResponseValidationError, json.JSONDecodeError) as exc:
            # A garbled response is the transport's fault, not the model's: try again later.
            raise RetryLater(f"The Anthropic API sent a response we could not read: {exc}") from exc
        except anthropic.AnthropicError as exc:
            raise translate(exc) from exc


def _usage_of(response: Message) -> Usage:
    u = response.usage
    return Usage(
        calls=1,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
        cache_read_input_tokens=u.cache_read_input_tokens or 0,
    )
