"""ai-match: how well does this mapping's document satisfy its requirement?

A document too long for one request is assessed section by section; the job's answer is the
best-scoring section's, since a requirement is met where the document meets it.
"""

from __future__ import annotations

from service.ai.analyzer import MATCH, DocumentText, RequirementText, Usage
from service.ai.batches import Codec, Unit, Wording
from service.ai.processors import ProcessorDeps, analyzer_fields
from service.ai.schemas import MatchAssessment
from service.ai.sections import split_document
from service.db.pool import Connection
from service.entities.store import EntityNotFound, EntityStore
from service.jobs.context import JobContext
from service.jobs.model import Completion, PermanentFailure
from service.jobs.registry import Processor

JOB_TYPE = MATCH

_CODEC: Codec[MatchAssessment] = Codec(
    lambda a: a.model_dump(mode="json"), MatchAssessment.model_validate
)


def merge(assessments: list[tuple[int, MatchAssessment]]) -> MatchAssessment:
    """One assessment from those of a document's sections, by section number."""
    if len(assessments) == 1:
        return assessments[0][1]
    best_section, best = max(assessments, key=lambda pair: (pair[1].score, -pair[0]))
    others = ", ".join(
        f"section {number}: {a.score}"
        for number, a in sorted(assessments)
        if number != best_section
    )
    rationale = (
        f"The document was assessed in {len(assessments)} sections; section {best_section} "
        f"satisfies the requirement best. {best.rationale} (Other sections: {others}.)"
    )
    return MatchAssessment(
        score=best.score, rationale=rationale, recommendations=best.recommendations
    )


def processor(deps: ProcessorDeps) -> Processor:
    async def run(ctx: JobContext) -> Completion:
        mapping_id = ctx.job.entity_id
        mapping = await deps.entities.mapping_for_analysis(mapping_id)
        if mapping is None:
            raise PermanentFailure(f"Mapping {mapping_id} no longer exists")
        if not mapping.document_content.strip():
            raise PermanentFailure(
                f"Document {mapping.document_id} of mapping {mapping_id} has no content to analyse"
            )
        requirement = RequirementText(
            mapping.requirement_id,
            mapping.requirement_code,
            mapping.requirement_title,
            mapping.requirement_description,
        )
        document = DocumentText(
            mapping.document_id, mapping.document_title, mapping.document_content
        )
        sections = split_document(document, deps.section_chars, deps.section_overlap_chars)
        await ctx.progress(
            f"Analyzing document '{mapping.document_title}' against {mapping.requirement_code}"
            + (f" in {len(sections)} sections..." if len(sections) > 1 else "...")
        )
        meter = deps.meter(ctx)
        spent = Usage()

        def assess(section: DocumentText) -> Unit[MatchAssessment]:
            async def call() -> MatchAssessment:
                part = f"section-{section.section}" if len(sections) > 1 else None
                analysis = await deps.analyzer.match(
                    requirement, section, meter, deps.answer_text(ctx, part)
                )
                spent.add(analysis.usage)
                return analysis.answer

            return Unit(f"section-{section.section}", call)

        answers = await deps.run_calls(
            ctx,
            [[assess(s)] for s in sections],
            _CODEC,
            Wording("section", "sections"),
            requirement,
            document.content,
            deps.section_chars,
            deps.section_overlap_chars,
        )
        answer = merge([(s.section, answers[f"section-{s.section}"]) for s in sections])

        async def apply(conn: Connection) -> None:
            try:
                await EntityStore.write_match_result(
                    conn, mapping_id, answer.score, answer.rationale, answer.recommendations
                )
            except EntityNotFound as exc:
                raise PermanentFailure(str(exc)) from exc

        result = {
            "aiMatchScore": answer.score,
            "aiMatchRationale": answer.rationale,
            "aiMatchRecommendations": answer.recommendations,
            **({"sections": len(sections)} if len(sections) > 1 else {}),
            **analyzer_fields(deps, JOB_TYPE, await deps.usage(ctx, spent, meter)),
        }
        return Completion(result, apply, f"Match score {answer.score}")

    return run
