"""What the processors ask of an analyzer; Claude and the offline analyzer both answer it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from service.ai.schemas import ControlMappingBatch, CoverageAssessment, MatchAssessment

# The job types, as the analyzers know them: each has its own model configuration.
MATCH = "ai-match"
COVERAGE = "ai-coverage"
MAP_CONTROLS = "ai-map-controls"


@dataclass(frozen=True)
class RequirementText:
    id: int
    code: str
    title: str
    description: str


@dataclass(frozen=True)
class DocumentText:
    """A document, or one section of a document too long for one request."""

    id: int
    title: str
    content: str
    section: int = 1
    sections: int = 1


@dataclass(frozen=True)
class ControlText:
    id: int
    code: str
    title: str
    description: str


@dataclass
class Usage:
    """Tokens spent by the calls of one analysis."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens


class Meter(Protocol):
    """Told of every model call as soon as it is answered, so that its tokens are accounted
    for even when the analysis that made it fails afterwards."""

    async def record(self, model: str, usage: Usage) -> None: ...


class NoMeter:
    """A meter that keeps nothing."""

    async def record(self, model: str, usage: Usage) -> None:
        return None


TextSender = Callable[[Mapping[str, str | int], str], None]
TextRestarter = Callable[[Mapping[str, str | int]], None]


@dataclass(frozen=True)
class AnswerText:
    """Where the text of an answer goes as the model writes it: `send(stream, text)`
    appends to one of the job's text streams (JobContext.write_text), named by the answer's
    field, the `keys` the caller adds (which part of the job asked) and what the analyzer
    adds (which control a rationale is of). `send` None: nowhere, and the call need not
    stream. `reset(streams)` starts afresh every stream whose names include `streams`
    (JobContext.restart_text)."""

    send: TextSender | None = None
    keys: Mapping[str, str | int] = field(default_factory=dict)
    reset: TextRestarter | None = None

    @property
    def wanted(self) -> bool:
        return self.send is not None

    def write(self, answer_field: str, text: str, **more: str | int) -> None:
        if self.send is not None and text:
            self.send({"field": answer_field, **self.keys, **more}, text)

    def restart(self, answer_field: str) -> None:
        """The answer is written again from its start (a call made again): the text of
        `answer_field` under these keys, every stream of it (each control's rationale),
        starts afresh."""
        if self.reset is not None:
            self.reset({"field": answer_field, **self.keys})


NO_TEXT = AnswerText()

T = TypeVar("T")


@dataclass
class Analysis(Generic[T]):
    answer: T
    usage: Usage = field(default_factory=Usage)


class Analyzer(Protocol):
    @property
    def source(self) -> str:
        """Which analyzer answered: "claude" or "offline"."""

    def model_for(self, job_type: str) -> str | None:
        """The model that answers for a job type, when there is one."""

    async def match(
        self,
        requirement: RequirementText,
        document: DocumentText,
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[MatchAssessment]:
        """Also sends the rationale to `text` as it is written."""

    async def coverage(
        self,
        requirement: RequirementText,
        documents: Sequence[DocumentText],
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[CoverageAssessment]:
        """Also sends the summary to `text` as it is written."""

    async def map_controls(
        self,
        document: DocumentText,
        controls: Sequence[ControlText],
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[ControlMappingBatch]:
        """Also sends each control's rationale to `text` as it is written (with its
        `controlId`)."""
