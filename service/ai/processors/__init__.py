"""One module per job type; `build_registry` maps job type names to them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from service.ai.accounting import JobMeter, JobUsage, UsageLedger
from service.ai.analyzer import NO_TEXT, Analyzer, AnswerText, Meter, NoMeter, Usage
from service.ai.batches import CallRunner, Codec, Unit, Wording, plan_of
from service.entities.store import EntityStore
from service.jobs.actor import RetryPolicy
from service.jobs.context import JobContext
from service.jobs.registry import JobType, Registry

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessorDeps:
    analyzer: Analyzer
    entities: EntityStore
    map_controls_batch_size: int = 25
    # Where each model call's tokens and cost are recorded; None: nowhere.
    ledger: UsageLedger | None = None
    # A document longer than this is analysed in overlapping sections; None: never split.
    section_chars: int | None = None
    section_overlap_chars: int = 4_000
    parallel_batches: int = 4
    batch_retries: int = 2
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)

    @staticmethod
    def answer_text(ctx: JobContext, part: str | None = None) -> AnswerText:
        """Where a call's answer text goes: the job's text streams, named by `part` too
        when the job makes several calls."""
        if not ctx.writes_text:
            return NO_TEXT
        return AnswerText(ctx.write_text, {"part": part} if part else {}, ctx.restart_text)

    def meter(self, ctx: JobContext) -> Meter:
        return self.ledger.meter(ctx.job.id) if self.ledger is not None else NoMeter()

    async def usage(self, ctx: JobContext, this_attempt: Usage, meter: Meter) -> JobUsage:
        """Everything the job's calls used, earlier attempts included, and its cost: as the
        write of the job's last call returned it, else read."""
        if isinstance(meter, JobMeter) and meter.totals is not None:
            return meter.totals
        if self.ledger is not None:
            return await self.ledger.totals(ctx.job.id)
        return JobUsage(this_attempt, Decimal(0) if this_attempt.calls == 0 else None)

    async def run_calls(
        self,
        ctx: JobContext,
        groups: Sequence[Sequence[Unit[T]]],
        codec: Codec[T],
        wording: Wording,
        *plan: object,
    ) -> dict[str, T]:
        """Run a job's model calls: concurrently, checkpointed, each retried alone."""
        runner = CallRunner(
            ctx,
            plan_of(ctx.job.job_type, self.analyzer.model_for(ctx.job.job_type), *plan),
            codec,
            wording,
            parallel=self.parallel_batches,
            retries=self.batch_retries,
            retry_policy=self.retry_policy,
        )
        return await runner.run(groups)


def analyzer_fields(deps: ProcessorDeps, job_type: str, usage: JobUsage) -> dict[str, object]:
    """What every result says about where it came from, and what it cost."""
    return {
        "analyzer": deps.analyzer.source,
        "model": deps.analyzer.model_for(job_type),
        "usage": usage.as_json(),
    }


def partial_result(job_type: str, checkpoint: Any) -> dict[str, Any] | None:
    """What a running job has found so far, from its checkpoint; None for a job type that
    shows nothing before its result."""
    if checkpoint is None:
        return None
    from service.ai.processors import map_controls

    if job_type == map_controls.JOB_TYPE:
        return map_controls.partial_result(checkpoint)
    return None


def build_registry(deps: ProcessorDeps, timeouts: Mapping[str, float]) -> Registry:
    """The three job types; `timeouts` gives each its run time limit in seconds."""
    from service.ai.processors import coverage, map_controls, match

    return {
        module.JOB_TYPE: JobType(
            module.JOB_TYPE, module.processor(deps), timeouts.get(module.JOB_TYPE, 600.0)
        )
        for module in (match, coverage, map_controls)
    }
