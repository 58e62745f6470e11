"""Every HTTP shape, defined once: the request bodies the API reads and the answers it writes.

Each shape is a pydantic model whose fields are named as the database and the job model name
them (snake_case) and answer to their camelCase name on the wire. From these definitions come:

- validation (service/api/parse.py): a body is validated against its model, and the first
  error is told in our words, naming the field and what to send;
- rendering (service/api/render.py): an answer's keys, in order, are its model's fields,
  read from a row or a job;
- the OpenAPI document's schemas (service/api/openapi.py).

Text that the API stores holds no NUL and, unless it may be blank, a character that is not
white space; the OpenAPI document says so with a pattern.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    with_config,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import TypeAliasType, TypedDict

from service.config import JOB_TYPES
from service.jobs.model import JobStatus as _JobStatus

MAX_BIGINT = 2**63 - 1
PRIORITY_RANGE = (-10, 10)
MAX_DOCUMENT_CHARS = 2_000_000

JobType = TypeAliasType("JobType", Literal[JOB_TYPES])  # type: ignore[valid-type]
JobStatus = TypeAliasType("JobStatus", _JobStatus)
STATUSES: tuple[str, ...] = get_args(_JobStatus)

# Text that the API stores: any characters but NUL.
NO_NUL = "^[^\x00]*$"
# The same, with at least one character that is not white space (str.isspace), as the
# handlers strip a value before they call it empty. The class is spelled out so that every
# regex dialect reads it alike: Python's \s also matches U+001C..U+001F, ECMAScript's does not.
NOT_BLANK = "^[^\x00]*[^\\s\x00\x1c-\x1f][^\x00]*$"


@dataclass(frozen=True, slots=True)
class StoredText:
    """Text the API stores: at most `max_length` characters, no NUL, and unless `blank` not
    only white space. Its errors are told in this order (see parse.py)."""

    max_length: int
    blank: bool = False

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, _schema: core_schema.CoreSchema, _handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        pattern = NO_NUL if self.blank else NOT_BLANK
        return {"type": "string", "maxLength": self.max_length, "pattern": pattern}

    def check(self, value: str) -> str:
        if not self.blank and not value.strip():
            raise PydanticCustomError("text_blank", "blank")
        if len(value) > self.max_length:
            raise PydanticCustomError("text_too_long", "too long", {"max_length": self.max_length})
        if "\x00" in value:
            raise PydanticCustomError("text_nul", "NUL")
        return value


Code = Annotated[StrictStr, StoredText(100)]
Title = Annotated[StrictStr, StoredText(1000)]
Description = Annotated[StrictStr, StoredText(50_000, blank=True)]
Id = Annotated[StrictInt, Field(ge=1, le=MAX_BIGINT, json_schema_extra={"format": "int64"})]
Score = Annotated[int, Field(ge=0, le=100)]
# Model calls and tokens spent, as the processor counted them.
Usage = Annotated[dict[str, Any], WithJsonSchema({"type": "object"})]


class Shape(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, strict=True)


# -- request bodies ------------------------------------------------------------------------


class DispatchOptions(Shape):
    priority: StrictInt = Field(
        default=0,
        ge=PRIORITY_RANGE[0],
        le=PRIORITY_RANGE[1],
        description="Higher is started first; priority comes before the fair share between "
        "users. Out of range or not an integer: 400 invalid_priority",
    )


class RequirementInput(Shape):
    code: Code
    title: Title
    description: Description | None = None


class DocumentInput(Shape):
    title: Title
    content: Annotated[StrictStr, StoredText(MAX_DOCUMENT_CHARS, blank=True)] = Field(
        description="May be empty; an empty document cannot be analysed"
    )


class ControlInput(Shape):
    code: Code
    title: Title
    description: Description | None = None


class MappingInput(Shape):
    requirement_id: Id
    document_id: Id


class SessionInput(Shape):
    access_token: Annotated[StrictStr, StoredText(16_384)]


# -- answers -------------------------------------------------------------------------------


class ErrorDetail(Shape):
    code: str = Field(
        description="Stable and machine readable, e.g. `not_found`, `validation_error`, "
        "`invalid_id`, `not_analysable`"
    )
    message: str = Field(description="For people")


class Error(Shape):
    error: ErrorDetail


class DocumentScore(Shape):
    document_id: Id
    score: Score


class Requirement(Shape):
    """The coverage fields are null until an ai-coverage job completes"""

    id: Id
    code: str
    title: str
    description: str
    coverage_score: Score | None
    coverage_summary: str | None
    coverage_gaps: list[str] | None
    coverage_documents: list[DocumentScore] | None
    coverage_analyzed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Document(Shape):
    id: Id
    title: str
    content: str
    created_at: datetime
    updated_at: datetime


class Control(Shape):
    id: Id
    code: str
    title: str
    description: str
    created_at: datetime


class Mapping(Shape):
    """The aiMatch fields are null until an ai-match job completes"""

    id: Id
    requirement_id: Id
    document_id: Id
    ai_match_score: Score | None
    ai_match_rationale: str | None
    ai_match_recommendations: list[str] | None
    ai_matched_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DocumentSummary(Shape):
    id: Id
    title: str
    length: int = Field(ge=0, description="The number of characters of the content")
    created_at: datetime
    updated_at: datetime


class MappingSummary(Mapping):
    # A mapping in a list, with what a person needs to recognise it.
    requirement_code: str
    requirement_title: str
    document_title: str


class DocumentControl(Shape):
    """A control that an ai-map-controls job found in a document"""

    control_id: Id
    code: str
    title: str
    confidence: Score
    rationale: str
    job_id: uuid.UUID | None
    created_at: datetime


class Progress(Shape):
    current: int | None
    total: int | None


# A job's result is the JSON its processor stored, answered as it is: a dict whose optional
# keys (how it was made; absent from results of older versions) are absent rather than null.
_RESULT = with_config(ConfigDict(alias_generator=to_camel))
Analyzer = Literal["claude", "offline"]
Sections = Annotated[int, Field(ge=2)]
_SPENT = "Model calls and tokens spent"


@_RESULT
class MatchResult(TypedDict):
    ai_match_score: Score
    ai_match_rationale: str
    ai_match_recommendations: list[str]
    sections: NotRequired[Sections]
    analyzer: NotRequired[Analyzer]
    model: NotRequired[str]
    usage: NotRequired[Annotated[Usage, Field(description=_SPENT)]]


@_RESULT
class CoverageResult(TypedDict):
    coverage_score: Score
    summary: str
    gaps: list[str]
    documents: list[DocumentScore]
    parts: NotRequired[Sections]
    analyzer: NotRequired[Analyzer]
    model: NotRequired[str]
    usage: NotRequired[Annotated[Usage, Field(description=_SPENT)]]


class MappedControl(Shape):
    control_id: Id
    confidence: Score
    rationale: str


@_RESULT
class MapControlsResult(TypedDict):
    mapped_controls: list[MappedControl]
    batches: Annotated[int, Field(ge=0)]
    sections: NotRequired[Sections]
    analyzer: NotRequired[Analyzer]
    model: NotRequired[str]
    usage: NotRequired[Annotated[Usage, Field(description=_SPENT)]]


class MapControlsPartialResult(Shape):
    """What the finished batches of a running ai-map-controls job have found."""

    mapped_controls: list[MappedControl] = Field(
        description="As the result's will be: each control once, with its best confidence"
    )
    batches_done: int = Field(ge=1, description="Model calls done (as `progress.current`)")


class Job(Shape):
    """`entityId` is a mapping id for ai-match, a requirement id for ai-coverage and a document
    id for ai-map-controls. Clients stop polling on `completed` and `failed`; a cancelled job is
    `failed` with `errorMessage` saying so."""

    id: uuid.UUID
    job_type: JobType
    entity_id: Id
    status: JobStatus
    progress_message: str | None
    progress: Progress | None
    result: MatchResult | CoverageResult | MapControlsResult | None = Field(
        description="Null until the job completes; then the result of its job type"
    )
    partial_result: MapControlsPartialResult | None = Field(
        description="While an ai-map-controls job runs: the controls mapped by the batches "
        "finished so far and how many batches are done. Null for the other job types, before "
        "the first batch is done, and once the job has its `result`"
    )
    error_message: str | None
    attempts: int = Field(ge=0)
    max_attempts: int = Field(
        ge=1,
        description="Grows by one each time a rate limit or an overloaded model sends the job "
        "back to wait: such a wait costs no attempt",
    )
    priority: int = Field(
        ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1], description="Higher is started first"
    )
    run_after: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime


@_RESULT
class JobDelta(TypedDict):
    """The `data` of an `event: delta` of a job's event stream: text the model wrote since the
    previous delta of the same text. Ephemeral: no event id, never replayed."""

    job_id: uuid.UUID
    attempt: Annotated[int, Field(ge=1, description="A new attempt starts its texts afresh")]
    field: Annotated[str, Field(description="The answer's field: `rationale` or `summary`")]
    part: NotRequired[
        Annotated[str, Field(description="Which model call of the job, when it makes several")]
    ]
    control_id: NotRequired[Annotated[int, Field(description="ai-map-controls: whose rationale")]]
    text: str
    offset: Annotated[
        int,
        Field(
            ge=0,
            description="Characters of this text before `text`. Place `text` there, dropping "
            "what follows: 0 after earlier deltas means the text starts afresh (the call's "
            "answer is written again), and `text` may then be empty",
        ),
    ]


class Dispatched(Shape):
    """The job recorded for the analysis: a new one (`pending`), the one already pending or
    running for the same entity, or the one named by the same Idempotency-Key"""

    job_id: uuid.UUID
    status: JobStatus


class Session(Shape):
    user_id: str
    role: Literal["authenticated", "service_role"]
    expires_at: datetime | None
