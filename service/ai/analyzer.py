"""What the processors ask of an analyzer; Claude and the offline analyzer both answer it."""

from __future__ import annotations

from collections.abc import Sequence
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
        self, requirement: RequirementText, document: DocumentText, meter: Meter
    ) -> Analysis[MatchAssessment]: ...

    async def coverage(
        self, requirement: RequirementText, documents: Sequence[DocumentText], meter: Meter
    ) -> Analysis[CoverageAssessment]: ...

    async def map_controls(
        self, document: DocumentText, controls: Sequence[ControlText], meter: Meter
    ) -> Analysis[ControlMappingBatch]: ...
