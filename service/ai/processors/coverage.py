"""ai-coverage: how covered is this requirement across all of its mapped documents?

When the documents do not fit one request they are sent in parts (whole documents where they
fit, sections of the long ones); the job's answer is that of the part that covers the
requirement best, with each document scored by its best section.
"""

from __future__ import annotations

from service.ai.analyzer import COVERAGE, DocumentText, RequirementText, Usage
from service.ai.batches import Codec, Unit, Wording
from service.ai.processors import ProcessorDeps, analyzer_fields
from service.ai.schemas import CoverageAssessment, DocumentScore
from service.ai.sections import pack_sections, split_document
from service.db.pool import Connection
from service.entities.store import EntityNotFound, EntityStore
from service.jobs.context import JobContext
from service.jobs.model import Completion, PermanentFailure
from service.jobs.registry import Processor

JOB_TYPE = COVERAGE

_CODEC: Codec[CoverageAssessment] = Codec(
    lambda a: a.model_dump(mode="json"), CoverageAssessment.model_validate
)


def merge(parts: list[CoverageAssessment]) -> CoverageAssessment:
    """One assessment from those of the parts, in order."""
    if len(parts) == 1:
        return parts[0]
    number, best = max(enumerate(parts, 1), key=lambda pair: (pair[1].coverage_score, -pair[0]))
    scores: dict[int, int] = {}
    for part in parts:
        for doc in part.documents:
            scores[doc.document_id] = max(doc.score, scores.get(doc.document_id, 0))
    return CoverageAssessment(
        coverage_score=best.coverage_score,
        summary=f"The documents were assessed in {len(parts)} parts; part {number} covers the "
        f"requirement best. {best.summary}",
        gaps=best.gaps,
        documents=[DocumentScore(document_id=i, score=s) for i, s in scores.items()],
    )


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
        sections = [
            section
            for document in documents
            for section in split_document(document, deps.section_chars, deps.section_overlap_chars)
        ]
        parts = pack_sections(sections, deps.section_chars)
        await ctx.progress(
            f"Analyzing coverage of {requirement.code} across {len(documents)} document(s)"
            + (f" in {len(parts)} parts..." if len(parts) > 1 else "...")
        )
        meter = deps.meter(ctx)
        spent = Usage()

        def assess(number: int, part: list[DocumentText]) -> Unit[CoverageAssessment]:
            async def call() -> CoverageAssessment:
                name = f"part-{number}" if len(parts) > 1 else None
                analysis = await deps.analyzer.coverage(
                    requirement, part, meter, deps.answer_text(ctx, name)
                )
                spent.add(analysis.usage)
                return analysis.answer

            return Unit(f"part-{number}", call)

        answers = await deps.run_calls(
            ctx,
            [[assess(n, part)] for n, part in enumerate(parts, 1)],
            _CODEC,
            Wording("part", "parts"),
            requirement,
            [(d.id, d.content) for d in documents],
            deps.section_chars,
            deps.section_overlap_chars,
        )
        answer = merge([answers[f"part-{n}"] for n in range(1, len(parts) + 1)])
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
            **({"parts": len(parts)} if len(parts) > 1 else {}),
            **analyzer_fields(deps, JOB_TYPE, await deps.usage(ctx, spent, meter)),
        }
        return Completion(result, apply, f"Coverage {answer.coverage_score}%")

    return run
