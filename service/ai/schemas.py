"""The structured answers we ask the model for, validated before anything is written.

Each model is also the input schema of the tool the model is forced to call. Every field an
answer needs is required, lists included (an empty list is the explicit "none"), and types are
checked strictly: an answer that leaves a field out or sends "72" for 72 is invalid, gets the
one corrective retry, and then fails the job, rather than be read as "nothing found".
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class MatchAssessment(_Answer):
    """How well one document satisfies one requirement."""

    score: int = Field(ge=0, le=100, description="0 = not addressed at all, 100 = fully satisfied")
    rationale: str = Field(min_length=1, description="Why this score, citing the document")
    recommendations: list[str] = Field(
        max_length=20,
        description="Concrete changes that would close gaps; an empty list if there are none",
    )


class DocumentScore(_Answer):
    document_id: int = Field(description="The id of the document, as given in the prompt")
    score: int = Field(ge=0, le=100, description="How much of the requirement this document covers")


class CoverageAssessment(_Answer):
    """How covered one requirement is across all of its documents."""

    coverage_score: int = Field(ge=0, le=100, description="Overall coverage of the requirement")
    summary: str = Field(min_length=1, description="Two or three sentences on the coverage")
    gaps: list[str] = Field(
        max_length=30, description="What is missing; an empty list if nothing is"
    )
    documents: list[DocumentScore] = Field(
        max_length=200, description="A score for each document given in the prompt"
    )


class ControlMatch(_Answer):
    control_id: int = Field(description="The id of the control, as given in the prompt")
    confidence: int = Field(ge=0, le=100, description="Confidence that the document implements it")
    rationale: str = Field(min_length=1, description="The passage or reason that shows it")


class ControlMappingBatch(_Answer):
    """The controls of one batch that the document implements."""

    mapped_controls: list[ControlMatch] = Field(
        max_length=200,
        description="Only controls the document implements; leave others out; an empty list "
        "if it implements none of them",
    )
