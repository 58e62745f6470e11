"""ai-map-controls: which controls of the catalogue does this document implement?

The catalogue goes to the model in batches, with progress before each one.
"""

from __future__ import annotations

from service.ai.analyzer import ControlText, DocumentText, Usage
from service.ai.processors import ProcessorDeps, analyzer_fields
from service.db.pool import Connection
from service.entities.store import ControlMatchRow, EntityNotFound, EntityStore
from service.jobs.context import JobContext
from service.jobs.model import Completion, PermanentFailure
from service.jobs.registry import Processor

JOB_TYPE = "ai-map-controls"


def processor(deps: ProcessorDeps) -> Processor:
    async def run(ctx: JobContext) -> Completion:
        document_id = ctx.job.entity_id
        row = await deps.entities.get_document(document_id)
        if row is None:
            raise PermanentFailure(f"Document {document_id} no longer exists")
        if not row["content"].strip():
            raise PermanentFailure(f"Document {document_id} has no content to analyse")
        document = DocumentText(row["id"], row["title"], row["content"])
        controls = [
            ControlText(c["id"], c["code"], c["title"], c["description"])
            for c in await deps.entities.list_controls()
        ]
        if not controls:
            raise PermanentFailure("The control catalogue is empty; add controls first")
        size = deps.map_controls_batch_size
        batches = [controls[i : i + size] for i in range(0, len(controls), size)]
        best: dict[int, ControlMatchRow] = {}
        usage = Usage()
        for number, batch in enumerate(batches, start=1):
            await ctx.progress(
                f"Analyzing batch {number} of {len(batches)}...", current=number, total=len(batches)
            )
            analysis = await deps.analyzer.map_controls(document, batch)
            usage.add(analysis.usage)
            in_batch = {c.id for c in batch}
            for match in analysis.answer.mapped_controls:
                if match.control_id not in in_batch:
                    continue  # the model named a control it was not shown
                current = best.get(match.control_id)
                if current is None or match.confidence > current.confidence:
                    best[match.control_id] = ControlMatchRow(
                        match.control_id, match.confidence, match.rationale
                    )
        matches = sorted(best.values(), key=lambda m: (-m.confidence, m.control_id))
        job_id = ctx.job.id

        async def apply(conn: Connection) -> None:
            try:
                await EntityStore.replace_document_controls(conn, document_id, matches, job_id)
            except EntityNotFound as exc:
                raise PermanentFailure(str(exc)) from exc

        result = {
            "mappedControls": [
                {"controlId": m.control_id, "confidence": m.confidence, "rationale": m.rationale}
                for m in matches
            ],
            "batches": len(batches),
            **analyzer_fields(deps, usage),
        }
        return Completion(
            result, apply, f"Mapped {len(matches)} controls in {len(batches)} batches"
        )

    return run
