"""One module per job type; `build_registry` maps job type names to them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.ai.analyzer import Analyzer, Usage
from service.entities.store import EntityStore
from service.jobs.registry import JobType, Registry


@dataclass(frozen=True)
class ProcessorDeps:
    analyzer: Analyzer
    entities: EntityStore
    map_controls_batch_size: int = 25


def analyzer_fields(deps: ProcessorDeps, usage: Usage) -> dict[str, object]:
    """What every result says about where it came from."""
    return {
        "analyzer": deps.analyzer.source,
        "model": deps.analyzer.model,
        "usage": {
            "calls": usage.calls,
            "inputTokens": usage.input_tokens,
            "outputTokens": usage.output_tokens,
            "cacheCreationInputTokens": usage.cache_creation_input_tokens,
            "cacheReadInputTokens": usage.cache_read_input_tokens,
        },
    }


def build_registry(deps: ProcessorDeps, timeouts: Mapping[str, float]) -> Registry:
    """The three job types; `timeouts` gives each its run time limit in seconds."""
    from service.ai.processors import coverage, map_controls, match

    return {
        module.JOB_TYPE: JobType(
            module.JOB_TYPE, module.processor(deps), timeouts.get(module.JOB_TYPE, 600.0)
        )
        for module in (match, coverage, map_controls)
    }
