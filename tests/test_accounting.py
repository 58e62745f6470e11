"""What every job's model calls used and cost, per job and per day, and the model configuration
of each job type."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from service.ai.accounting import UsageLedger
from service.ai.analyzer import Usage
from service.ai.pricing import PriceTable
from service.config import ConfigError, Settings
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.runtime import running_worker
from tests.conftest import DOCUMENT, make_settings, seed_controls, wait_for_job
from tests.fake_anthropic import Error, FakeAnthropic, Malformed
from tests.test_claude_budget import counting_pool

PRICES = {"test-model": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}}


def expected_cost(usages: list[dict[str, int]]) -> Decimal:
    total = Decimal(0)
    for u in usages:
        total += (
            u["input_tokens"] * Decimal("3")
            + u["output_tokens"] * Decimal("15")
            + u["cache_creation_input_tokens"] * Decimal("3.75")
            + u["cache_read_input_tokens"] * Decimal("0.3")
        ) / Decimal(1_000_000)
    return total


@pytest.fixture
def settings(dsn: str, fake: FakeAnthropic) -> Settings:
    return make_settings(dsn, fake.url, model="test-model", claude_prices=PRICES)


async def usage_row(pool: asyncpg.Pool, job_id: Any) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT usage_calls, usage_input_tokens, usage_output_tokens, usage_cache_read_tokens,"
        " usage_cache_write_tokens, cost_usd FROM ai_jobs WHERE id = $1",
        job_id,
    )
    assert row is not None
    return row


async def test_a_jobs_cost_is_the_sum_of_its_calls_at_the_configured_prices(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic, pool: asyncpg.Pool
) -> None:
    doc = await entities.create_document("Policy", DOCUMENT)
    await seed_controls(entities, 60)  # three batches: a cache write, then two reads
    job = await wait_for_job(jobs, (await jobs.enqueue("ai-map-controls", doc["id"])).id)
    assert job.status == "completed", job.error_message
    assert len(fake.usages) == 3
    row = await usage_row(pool, job.id)
    assert row["cost_usd"] == expected_cost(fake.usages)
    assert tuple(row)[:5] == (
        3,
        sum(u["input_tokens"] for u in fake.usages),
        sum(u["output_tokens"] for u in fake.usages),
        sum(u["cache_read_input_tokens"] for u in fake.usages),
        sum(u["cache_creation_input_tokens"] for u in fake.usages),
    )
    usage = job.result["usage"]
    assert usage["costUsd"] == pytest.approx(float(expected_cost(fake.usages)))
    assert (usage["calls"], usage["inputTokens"], usage["outputTokens"]) == tuple(row)[:3]
    assert job.result["model"] == "test-model"


async def test_calls_of_failed_attempts_are_paid_for_too(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic, pool: asyncpg.Pool
) -> None:
    requirement = await entities.create_requirement("R-1", "Records", "Keep records")
    doc = await entities.create_document("Policy", DOCUMENT)
    mapping = await entities.create_mapping(requirement["id"], doc["id"])
    # Two answers that do not validate: the attempt fails, after two paid calls.
    fake.enqueue(Malformed("wrong_type"), Malformed("missing_field"))
    job = await wait_for_job(jobs, (await jobs.enqueue("ai-match", mapping["id"])).id)
    assert job.status == "failed"
    row = await usage_row(pool, job.id)
    assert row["usage_calls"] == 2
    assert row["cost_usd"] == expected_cost(fake.usages)
    # An error answer costs nothing.
    fake.enqueue(Error(529))
    again = await wait_for_job(jobs, (await jobs.enqueue("ai-match", mapping["id"])).id)
    assert again.status == "completed" and again.attempts == 2
    assert (await usage_row(pool, again.id))["usage_calls"] == 1
    assert again.result["usage"]["calls"] == 1


async def test_usage_by_day_and_job_type(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic, pool: asyncpg.Pool
) -> None:
    requirement = await entities.create_requirement("R-1", "Records", "Keep records")
    done = []
    for i in range(3):
        doc = await entities.create_document(f"Doc {i}", DOCUMENT)
        mapping = await entities.create_mapping(requirement["id"], doc["id"])
        done.append(await wait_for_job(jobs, (await jobs.enqueue("ai-match", mapping["id"])).id))
    coverage = await jobs.enqueue("ai-coverage", requirement["id"])
    done.append(await wait_for_job(jobs, coverage.id))
    assert {j.status for j in done} == {"completed"}
    rows = await pool.fetch("SELECT * FROM ai_jobs_usage_daily")
    assert [(r["job_type"], r["jobs"], r["calls"]) for r in rows] == [
        ("ai-coverage", 1, 1),
        ("ai-match", 3, 3),
    ]
    day = await pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    assert {r["day"] for r in rows} == {day}
    match_rows = next(r for r in rows if r["job_type"] == "ai-match")
    costs = [await usage_row(pool, j.id) for j in done[:3]]
    assert match_rows["cost_usd"] == round(sum(c["cost_usd"] for c in costs), 6)
    assert match_rows["input_tokens"] == sum(c["usage_input_tokens"] for c in costs)
    assert match_rows["unpriced_jobs"] == 0


async def test_a_model_without_a_price_has_an_unknown_cost(
    settings: Settings,
    pool: asyncpg.Pool,
    entities: EntityStore,
    jobs: JobStore,
) -> None:
    requirement = await entities.create_requirement("R-1", "Records", "Keep records")
    assert settings.database_url
    unpriced = dataclasses.replace(settings, model="someone-elses-model")
    async with running_worker(unpriced, settings.database_url, pool):
        job = await wait_for_job(jobs, (await jobs.enqueue("ai-coverage", requirement["id"])).id)
    assert job.status == "completed"
    assert job.result["usage"]["costUsd"] is None
    assert (await usage_row(pool, job.id))["cost_usd"] is None
    [row] = await pool.fetch("SELECT * FROM ai_jobs_usage_daily")
    assert (row["unpriced_jobs"], row["cost_usd"]) == (1, None)


async def test_calls_answered_together_are_written_together(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore
) -> None:
    requirement = await entities.create_requirement("R-1", "Records", "Keep records")
    ids = []
    for i in range(5):
        doc = await entities.create_document(f"Doc {i}", DOCUMENT)
        mapping = await entities.create_mapping(requirement["id"], doc["id"])
        ids.append((await jobs.enqueue("ai-match", mapping["id"])).id)
    async with counting_pool(dsn) as (counted, statements):
        ledger = UsageLedger(counted, PriceTable(PRICES))
        meters = [ledger.meter(job_id) for job_id in ids]
        # Ten calls of each job, answered at once; one of each job's calls has no price.
        await asyncio.gather(
            *(
                meter.record("test-model" if n else "unknown-model", Usage(1, 100, 10, 5, 0))
                for n in range(10)
                for meter in meters
            )
        )
        writes = len([q for q in statements if "usage_calls = j.usage_calls" in q])
        priced = ledger.meter(ids[0])
        await pool.execute("UPDATE ai_jobs SET cost_usd = 0 WHERE id = $1", ids[0])
        await priced.record("test-model", Usage(1, 1_000_000, 0, 0, 0))
    assert writes < 10  # 50 calls, one statement per write of many
    for job_id, meter in zip(ids, meters, strict=True):
        row = await usage_row(pool, job_id)
        expected = (11, 1_001_000, 100, 0, 50) if job_id == ids[0] else (10, 1_000, 100, 0, 50)
        assert tuple(row)[:5] == expected
        # Each meter holds its job's totals as the last write returned them.
        assert meter.totals is not None
        assert meter.totals.usage == Usage(10, 1_000, 100, 50, 0)
        assert meter.totals.cost_usd is None
    assert priced.totals is not None and priced.totals.cost_usd == Decimal(3)


def test_prices_by_model_name_or_family() -> None:
    table = PriceTable({"claude-sonnet-5-5": PRICES["test-model"]})
    usage = Usage(1, 1_000_000, 100_000, 200_000, 2_000_000)
    assert table.cost("claude-sonnet-5-5", usage) == Decimal("3") + Decimal("1.5") + Decimal(
        "0.75"
    ) + Decimal("0.6")
    # A model the table does not name is priced by its family.
    haiku = table.price_of("claude-haiku-9-9")
    assert haiku is not None and haiku.input == Decimal("1")
    assert table.price_of("claude-sonnet-5-5-20261001") == table.price_of("claude-sonnet-5-5")
    assert table.cost("gpt-nothing", usage) is None


async def test_each_job_type_asks_its_own_model(
    settings: Settings,
    pool: asyncpg.Pool,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
) -> None:
    configured = dataclasses.replace(
        settings,
        model_by_type={"ai-match": "claude-haiku-5-5"},
        max_tokens_by_type={"ai-coverage": 1000},
        temperature_by_type={"ai-coverage": 0.0},
    )
    requirement = await entities.create_requirement("R-1", "Records", "Keep records")
    doc = await entities.create_document("Policy", DOCUMENT)
    mapping = await entities.create_mapping(requirement["id"], doc["id"])
    assert settings.database_url
    async with running_worker(configured, settings.database_url, pool):
        match = await wait_for_job(jobs, (await jobs.enqueue("ai-match", mapping["id"])).id)
        coverage = await wait_for_job(
            jobs, (await jobs.enqueue("ai-coverage", requirement["id"])).id
        )
    assert match.status == coverage.status == "completed"
    match_body, coverage_body = (r.body for r in fake.requests)
    assert (match_body["model"], match_body["max_tokens"]) == ("claude-haiku-5-5", 2048)
    assert "temperature" not in match_body  # not sent unless configured
    assert (coverage_body["model"], coverage_body["max_tokens"]) == ("test-model", 1000)
    assert coverage_body["temperature"] == 0.0
    assert match.result["model"] == "claude-haiku-5-5"
    assert coverage.result["model"] == "test-model"


def test_model_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "AIJOBS_MODEL": "claude-opus-5",
            "AIJOBS_MODEL_AI_MATCH": "claude-haiku-5-5",
            "AIJOBS_MAX_TOKENS_AI_COVERAGE": "8000",
            "AIJOBS_TEMPERATURE": "0.2",
            "AIJOBS_TEMPERATURE_AI_MAP_CONTROLS": "0",
            "AIJOBS_CLAUDE_PRICES": '{"claude-opus-5": {"input": 5, "output": 25,'
            ' "cache_write": 6.25, "cache_read": 0.5}}',
        }
    )
    assert [settings.model_for(t) for t in ("ai-match", "ai-coverage")] == [
        "claude-haiku-5-5",
        "claude-opus-5",
    ]
    assert [settings.max_tokens_for(t) for t in ("ai-match", "ai-coverage", "ai-map-controls")] == [
        2048,
        8000,
        4096,
    ]
    assert settings.temperature_for("ai-match") == 0.2
    assert settings.temperature_for("ai-map-controls") == 0.0
    assert settings.claude_prices["claude-opus-5"]["cache_read"] == 0.5
    assert Settings.from_env({"AIJOBS_MAX_TOKENS": "100"}).max_tokens_for("ai-coverage") == 100
    assert Settings().temperature_for("ai-match") is None
    with pytest.raises(ConfigError):
        Settings.from_env({"AIJOBS_CLAUDE_PRICES": '{"m": {"input": 1}}'})
    with pytest.raises(ConfigError):
        Settings.from_env({"AIJOBS_CLAUDE_PRICES": "not json"})
    with pytest.raises(ConfigError):
        Settings.from_env({"AIJOBS_CLAUDE_BURST": "0.9"})
