"""ai-map-controls: which controls of the catalogue does this document implement?

The catalogue goes to the model in batches, several at once, with the document as a cached
prompt prefix; a document too long for one request is split into sections, each of which
meets every batch. A control is mapped with the highest confidence any call gave it.
Each batch's answer is checkpointed as it arrives: an attempt after a crash or a failure
asks only for the batches that are missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.ai.analyzer import MAP_CONTROLS, ControlText, DocumentText, Usage
from service.ai.batches import Codec, Unit, Wording
from service.ai.processors import ProcessorDeps, analyzer_fields
from service.ai.sections import split_document
from service.db.pool import Connection
from service.entities.store import ControlMatchRow, EntityNotFound, EntityStore
from service.jobs.context import JobContext
from service.jobs.model import Completion, PermanentFailure
from service.jobs.registry import Processor

JOB_TYPE = MAP_CONTROLS


def _encode(matches: list[ControlMatchRow]) -> list[dict[str, Any]]:
    return [
        {"controlId": m.control_id, "confidence": m.confidence, "rationale": m.rationale}
        for m in matches
    ]


def _decode(saved: Any) -> list[ControlMatchRow]:
    return [ControlMatchRow(m["controlId"], m["confidence"], m["rationale"]) for m in saved]


_CODEC: Codec[list[ControlMatchRow]] = Codec(_encode, _decode)


def _best(answers: Iterable[list[ControlMatchRow]]) -> list[ControlMatchRow]:
    """Each control once, with the highest confidence any call gave it; most confident first."""
    best: dict[int, ControlMatchRow] = {}
    for matches in answers:
        for match in matches:
            current = best.get(match.control_id)
            if current is None or match.confidence > current.confidence:
                best[match.control_id] = match
    return sorted(best.values(), key=lambda m: (-m.confidence, m.control_id))


def partial_result(checkpoint: Any) -> dict[str, Any] | None:
    """What the calls finished so far have found, from the job's checkpoint (see
    service.ai.batches): the controls mapped as `mappedControls` will map them, and how many
    batches are done. None before the first batch is done, or for a job of one call."""
    done = checkpoint.get("done") if isinstance(checkpoint, dict) else None
    if not isinstance(done, dict) or not done:
        return None
    try:
        matches = _best(_decode(saved) for saved in done.values())
    except (KeyError, TypeError):
        return None  # a checkpoint of another shape: nothing to show
    return {"mappedControls": _encode(matches), "batchesDone": len(done)}


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
        sections = split_document(document, deps.section_chars, deps.section_overlap_chars)
        meter = deps.meter(ctx)
        spent = Usage()

        def analyse(section: DocumentText, number: int) -> Unit[list[ControlMatchRow]]:
            batch = batches[number - 1]

            key = f"section-{section.section}-batch-{number}"
            part = None
            if len(sections) > 1:
                part = key
            elif len(batches) > 1:
                part = f"batch-{number}"

            async def call() -> list[ControlMatchRow]:
                analysis = await deps.analyzer.map_controls(
                    section, batch, meter, deps.answer_text(ctx, part)
                )
                spent.add(analysis.usage)
                shown = {c.id for c in batch}
                return [
                    ControlMatchRow(m.control_id, m.confidence, m.rationale)
                    for m in analysis.answer.mapped_controls
                    if m.control_id in shown  # the model named a control it was not shown
                ]

            return Unit(key, call)

        # One group per section: its first batch writes the section to the prompt cache.
        answers = await deps.run_calls(
            ctx,
            [[analyse(s, n) for n in range(1, len(batches) + 1)] for s in sections],
            _CODEC,
            Wording("batch", "batches"),
            document.content,
            deps.section_chars,
            deps.section_overlap_chars,
            [(c.id, c.code, c.title, c.description) for c in controls],
            size,
        )
        matches = _best(answers.values())
        job_id = ctx.job.id

        async def apply(conn: Connection) -> None:
            try:
                await EntityStore.replace_document_controls(conn, document_id, matches, job_id)
            except EntityNotFound as exc:
                raise PermanentFailure(str(exc)) from exc

        result = {
            "mappedControls": _encode(matches),
            "batches": len(batches),
            **({"sections": len(sections)} if len(sections) > 1 else {}),
            **analyzer_fields(deps, JOB_TYPE, await deps.usage(ctx, spent, meter)),
        }
        return Completion(
            result,
            apply,
            f"Mapped {_count(len(matches), 'control')} in "
            f"{_count(len(batches), 'batch', 'batches')}",
        )

    return run


def _count(n: int, one: str, many: str = "") -> str:
    """`1 control`, `2 controls`."""
    return f"{n} {one if n == 1 else (many or one + 's')}"
