"""Job types: a name, the coroutine that runs it, and its limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.jobs.model import Completion

if TYPE_CHECKING:
    from service.jobs.context import JobContext

Processor = Callable[["JobContext"], Awaitable[Completion]]


@dataclass(frozen=True)
class JobType:
    name: str
    run: Processor
    timeout_s: float = 600.0


Registry = Mapping[str, JobType]
