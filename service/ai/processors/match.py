"""ai-match: how well does this mapping's document satisfy its requirement?"""

from __future__ import annotations

from service.ai.analyzer import DocumentText, RequirementText
from service.ai.processors import ProcessorDeps, analyzer_fields
from service.db.pool import Connection
from service.entities.store import EntityNotFound, EntityStore
from service.jobs.context import JobContext
from service.jobs.model import Completion, PermanentFailure
from service.jobs.registry import Processor

JOB_TYPE = "ai-match"


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
        await ctx.progress(
            f"Analyzing document '{mapping.document_title}' against {mapping.requirement_code}..."
        )
        analysis = await deps.analyzer.match(
            RequirementText(
                mapping.requirement_id,
                mapping.requirement_code,
                mapping.requirement_title,
                mapping.requirement_description,
            ),
            DocumentText(mapping.document_id, mapping.document_title, mapping.document_content),
        )
        answer = analysis.answer

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
            **analyzer_fields(deps, analysis.usage),
        }
        return Completion(result, apply, f"Match score {answer.score}")

    return run
