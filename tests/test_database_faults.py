"""The database away is an outage, never a fault: the API answers 503 for every error that
means so, a background duty that fails lives on and says so in /readyz, and a listener that
hears nothing is found out."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.config import Settings
from service.db.errors import DATABASE_UNAVAILABLE
from service.db.pool import create_pool
from service.entities.store import EntityStore
from service.jobs.model import Job
from service.jobs.store import JobStore
from service.runtime import create_worker_pool, running_worker
from tests.conftest import auth_headers, make_settings, wait_for_job, wait_until
from tests.fake_anthropic import FakeAnthropic
from tests.pg import with_database
from tests.pgbouncer import PgBouncer
from tests.test_api_entities import error_of
from tests.test_api_jobs import make_mapping

Client = TestClient[Any, Any]


@pytest.mark.parametrize("error", DATABASE_UNAVAILABLE, ids=lambda c: c.__name__)
async def test_each_database_unavailable_error_is_a_503(
    client: Client,
    entities: EntityStore,
    monkeypatch: pytest.MonkeyPatch,
    error: type[Exception],
) -> None:
    mapping = await make_mapping(entities)

    async def away(*_args: Any) -> None:
        raise error("the database went away")

    monkeypatch.setattr(EntityStore, "get_mapping", away)
    response = await client.get(f"/api/gap-analysis/mappings/{mapping['id']}")
    body = await error_of(response, 503)
    assert body["code"] == "database_unavailable"
    assert response.headers["Retry-After"]


async def test_an_error_of_our_own_making_is_still_a_500(
    client: Client, entities: EntityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = await make_mapping(entities)

    async def refused(*_args: Any) -> None:
        raise asyncpg.UndefinedColumnError("column does not exist")

    monkeypatch.setattr(EntityStore, "get_mapping", refused)
    await error_of(await client.get(f"/api/gap-analysis/mappings/{mapping['id']}"), 500)


class FlakyClaims(JobStore):
    """Claims that fail as the driver fails after a cut, `failures` times, then work."""

    def __init__(self, pool: asyncpg.Pool, failures: int, error: Exception) -> None:
        super().__init__(pool)
        self.failures = failures
        self.error = error
        self.tries = 0

    async def claim(self, limit: int, worker_id: str, lease_s: float, **options: Any) -> list[Job]:
        self.tries += 1
        if self.tries <= self.failures:
            raise self.error
        return await super().claim(limit, worker_id, lease_s, **options)


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_the_claim_loop_outlives_a_broken_connection_state(
    settings: Settings,
    pool: asyncpg.Pool,
    entities: EntityStore,
    jobs: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncpg's InternalClientError is no PostgresError: the loop once died of it."""
    mapping = await make_mapping(entities)
    flaky = FlakyClaims(
        pool, 3, asyncpg.InternalClientError("cannot switch to state 12; another operation")
    )
    monkeypatch.setattr("service.runtime.JobStore", lambda _pool: flaky)
    assert settings.database_url
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings, settings.database_url, pool) as worker:
            job = await jobs.enqueue("ai-match", mapping["id"])
            done = await wait_for_job(jobs, job.id)
            assert worker.duties[0].failures == 0
    assert done.status == "completed"
    assert flaky.tries > 3
    # The first failure of the run is logged, as a warning (the database's, not ours); the
    # next ones are not.
    failed = [e for e in logs if e["event"] in ("dispatcher_failed", "dispatcher_crashed")]
    assert [(e["event"], e["log_level"]) for e in failed] == [("dispatcher_failed", "warning")]


async def test_readyz_names_a_duty_that_has_not_run_for_several_intervals(
    dsn: str,
    pool: asyncpg.Pool,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mapping = await make_mapping(entities)
    settings = make_settings(dsn, fake.url, poll_interval_s=0.2, worker_http_port=0)
    flaky = FlakyClaims(pool, 10**9, RuntimeError("a fault of ours"))
    monkeypatch.setattr("service.runtime.JobStore", lambda _pool: flaky)
    async with running_worker(settings, dsn, pool) as worker:
        assert worker.http_port is not None
        port = worker.http_port
        assert (await readyz(port))[0] == 200

        async def not_ready() -> dict[str, Any] | None:
            status, body = await readyz(port)
            return body if status == 503 else None

        body = await wait_until(not_ready, within=15, interval=0.2)
        assert body["duties"][0].startswith("dispatcher: has not run for")
        assert "RuntimeError: a fault of ours" in body["reason"]
        flaky.failures = 0
        job = await jobs.enqueue("ai-match", mapping["id"])
        assert (await wait_for_job(jobs, job.id)).status == "completed"
        assert (await readyz(port))[0] == 200


async def test_a_listener_that_hears_nothing_is_reported_and_jobs_still_run(
    dsn: str,
    databases: Any,
    pool: asyncpg.Pool,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
) -> None:
    """LISTEN on a connection that never receives what the pool's connections send (here:
    another database, as a transaction-mode pooler would route it): the round trip fails,
    /readyz of worker and API says so, the log says what to set, and jobs run on the poll."""
    mapping = await make_mapping(entities)
    elsewhere = with_database(dsn, databases.template)
    settings = make_settings(dsn, fake.url, worker_http_port=0)
    with structlog.testing.capture_logs() as logs:
        async with (
            running_worker(settings, elsewhere, pool) as worker,
            TestClient(
                TestServer(create_app(settings, elsewhere, pool)), headers=auth_headers()
            ) as api,
        ):
            assert worker.http_port is not None
            port = worker.http_port

            async def worker_says_so() -> dict[str, Any] | None:
                status, body = await readyz(port)
                return body if status == 503 else None

            body = await wait_until(worker_says_so, within=20, interval=0.2)
            assert body["duties"][0].startswith("listener: a NOTIFY sent through the pool")
            assert "AIJOBS_DIRECT_URL" in body["reason"]

            async def api_says_so() -> dict[str, Any] | None:
                response = await api.get("/readyz")
                answer: dict[str, Any] = await response.json()
                return answer if response.status == 503 else None

            body = await wait_until(api_says_so, within=20, interval=0.2)
            assert body["duties"][0].startswith("event_listener: a NOTIFY sent")

            job = await jobs.enqueue("ai-match", mapping["id"])
            assert (await wait_for_job(jobs, job.id)).status == "completed"
            assert not worker.listener.hears
    hints = [
        e for e in logs if e["event"] in ("listener_hears_nothing", "event_listener_hears_nothing")
    ]
    assert {e["event"] for e in hints} == {"listener_hears_nothing", "event_listener_hears_nothing"}
    assert all("AIJOBS_DIRECT_URL" in e["hint"] for e in hints)


async def test_a_listener_that_hears_proves_it_at_start(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    assert settings.database_url
    async with running_worker(settings, settings.database_url, pool) as worker:

        async def proven() -> bool:
            return worker.listener.round_trips >= 1

        await wait_until(proven, within=10)
        assert worker.listener.hears
        assert all(d.problem is None for d in worker.duties)


async def test_listening_through_a_transaction_pooler_is_found_out(
    dsn: str, pgbouncer: PgBouncer, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    """No AIJOBS_DIRECT_URL: LISTEN goes through PgBouncer in transaction mode, where it
    never hears a notification. Worker and API say so in /readyz; jobs run on the poll."""
    mapping = await make_mapping(entities)
    pooled = pgbouncer.via(dsn)
    settings = make_settings(pooled, fake.url, pooler="on", worker_http_port=0)
    worker_pool = await create_worker_pool(settings, pooled)
    api_pool = await create_pool(pooled, 1, 4, pooled=True)
    try:
        async with (
            running_worker(settings, pooled, worker_pool) as worker,
            TestClient(TestServer(create_app(settings, pooled, api_pool))) as api,
        ):
            assert worker.http_port is not None
            port = worker.http_port

            async def worker_says_so() -> dict[str, Any] | None:
                status, body = await readyz(port)
                return body if status == 503 else None

            body = await wait_until(worker_says_so, within=20, interval=0.2)
            assert body["duties"][0].startswith("listener: a NOTIFY sent through the pool")
            assert "AIJOBS_DIRECT_URL" in body["reason"]

            async def api_says_so() -> dict[str, Any] | None:
                response = await api.get("/readyz")
                answer: dict[str, Any] = await response.json()
                return answer if response.status == 503 else None

            body = await wait_until(api_says_so, within=20, interval=0.2)
            assert body["duties"][0].startswith("event_listener: a NOTIFY sent")

            job = await jobs.enqueue("ai-match", mapping["id"])
            assert (await wait_for_job(jobs, job.id)).status == "completed"
    finally:
        await worker_pool.close()
        await api_pool.close()
