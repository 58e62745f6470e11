"""ai-coverage: how covered is this requirement across all of its mapped documents?"""

from __future__ import annotations

from service.ai.analyzer import DocumentText, RequirementText
from service.ai.processors import ProcessorDeps, analyzer_fields
from service.db.pool import Connection
from service.entities.store import EntityNotFound, EntityStore
from service.jobs.context import JobContext
from service.jobs.model import Completion, PermanentFailure
from service.jobs.registry import Processor

JOB_TYPE = "ai-coverage"


def processor(deps: ProcessorDeps) -> Processor:
    async def run(ctx: JobContext) -> Completion:
        requirement_id = ctx.job.entity_id
        row = await deps.entities.get_requirement(requirement_id)
        if row is None:
            raise PermanentFailure(f"Requirement {requirement_id} no longer exists")
        requirement = RequirementText(row["id"], row["code"], row["title"], row["description"])
        documents = [
            DocumentText(d["id"], d["title"], d["content"])
            for d in await deps.entities.mapped_documents(requirement_id)
            if d["content"].strip()
        ]
        await ctx.progress(
            f"Analyzing coverage of {requirement.code} across {len(documents)} document(s)..."
        )
        analysis = await deps.analyzer.coverage(requirement, documents)
        answer = analysis.answer
        known = {d.id for d in documents}
        per_document = [
            {"documentId": d.document_id, "score": d.score}
            for d in answer.documents
            if d.document_id in known
        ]

        async def apply(conn: Connection) -> None:
            try:
                await EntityStore.write_coverage_result(
                    conn,
                    requirement_id,
                    answer.coverage_score,
                    answer.summary,
                    answer.gaps,
                    per_document,
                )
            except EntityNotFound as exc:
                raise PermanentFailure(str(exc)) from exc

        result = {
            "coverageScore": answer.coverage_score,
            "summary": answer.summary,
            "gaps": answer.gaps,
            "documents": per_document,
            **analyzer_fields(deps, analysis.usage),
        }
        return Completion(result, apply, f"Coverage {answer.coverage_score}%")

    return run
