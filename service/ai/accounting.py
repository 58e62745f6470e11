"""Accounting: every model call's tokens and estimated cost, added to its job's row.

A call is recorded as soon as it is answered, whatever becomes of the attempt that made it,
so the columns of a job (and the ai_jobs_usage_daily view over them) add up what was spent,
failed attempts included.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from service.ai.analyzer import Usage
from service.ai.pricing import PriceTable
from service.db.queries import Queries
from service.logs import get_logger

log = get_logger(__name__)

Q = Queries("service.ai", "usage.sql")

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True)
class JobUsage:
    """What a job's model calls have used so far, and their cost (None: a price unknown)."""

    usage: Usage
    cost_usd: Decimal | None

    def as_json(self) -> dict[str, object]:
        return {
            "calls": self.usage.calls,
            "inputTokens": self.usage.input_tokens,
            "outputTokens": self.usage.output_tokens,
            "cacheCreationInputTokens": self.usage.cache_creation_input_tokens,
            "cacheReadInputTokens": self.usage.cache_read_input_tokens,
            "costUsd": None if self.cost_usd is None else float(self.cost_usd),
        }


class UsageLedger:
    """Writes and reads the usage columns of ai_jobs."""

    def __init__(self, pool: asyncpg.Pool, prices: PriceTable) -> None:
        self.pool = pool
        self.prices = prices

    def meter(self, job_id: uuid.UUID) -> JobMeter:
        return JobMeter(self, job_id)

    async def add(self, job_id: uuid.UUID, model: str, usage: Usage) -> None:
        cost = self.prices.cost(model, usage)
        if cost is None:
            log.warning("model_price_unknown", model=model)
        await self.pool.execute(
            Q.add_usage,
            job_id,
            usage.calls,
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
            cost,
        )

    async def totals(self, job_id: uuid.UUID) -> JobUsage:
        row = await self.pool.fetchrow(Q.job_usage, job_id)
        if row is None:
            return JobUsage(Usage(), Decimal(0))
        return JobUsage(
            Usage(
                calls=row["usage_calls"],
                input_tokens=row["usage_input_tokens"],
                output_tokens=row["usage_output_tokens"],
                cache_creation_input_tokens=row["usage_cache_write_tokens"],
                cache_read_input_tokens=row["usage_cache_read_tokens"],
            ),
            row["cost_usd"],
        )


class JobMeter:
    """The meter of one job: records each call on the job's row as it is answered."""

    def __init__(self, ledger: UsageLedger, job_id: uuid.UUID) -> None:
        self._ledger = ledger
        self._job_id = job_id

    async def record(self, model: str, usage: Usage) -> None:
        if usage.calls == 0:
            return
        try:
            await self._ledger.add(self._job_id, model, usage)
        except _DB_ERRORS as exc:
            # The answer is worth more than its bookkeeping: the job goes on, and says so.
            log.warning("usage_not_recorded", error=str(exc), model=model, calls=usage.calls)
