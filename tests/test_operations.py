"""Operating aijobs: the psql interface, worker registry, metrics, health, retention."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.db.embedded import _bin_dir
from service.entities.store import EntityStore
from service.jobs.retention import Pruner
from service.jobs.store import JobStore
from service.runtime import running_worker
from tests.conftest import (
    DOCUMENT,
    auth_headers,
    make_settings,
    seed_controls,
    wait_for_job,
    wait_until,
)
from tests.fake_anthropic import Error, FakeAnthropic
from tests.pg import DatabaseFactory
from tests.tcp_proxy import TcpProxy
from tests.test_api_jobs import make_mapping


def psql_binary() -> str:
    return shutil.which("psql") or str(_bin_dir() / "psql")


async def psql(dsn: str, sql: str) -> tuple[int, str, str]:
    """Run `sql` through a real psql process; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        psql_binary(),
        dsn,
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip(), err.decode().strip()


async def insert_job(pool: asyncpg.Pool, job_type: str, status: str, **values: Any) -> uuid.UUID:
    columns = {"job_type": job_type, "entity_id": values.pop("entity_id", 1), "status": status}
    if status == "processing":
        columns.update(locked_by="w1", locked_until=values.pop("locked_until", None))
    columns.update(values)
    names = ", ".join(columns)
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    job_id: uuid.UUID = await pool.fetchval(
        f"INSERT INTO ai_jobs ({names}) VALUES ({params}) RETURNING id", *columns.values()
    )
    return job_id


async def test_views_on_a_known_set_of_jobs(pool: asyncpg.Pool) -> None:
    now = await pool.fetchval("SELECT now()")
    from datetime import timedelta

    await insert_job(pool, "ai-match", "pending", entity_id=1, run_after=now - timedelta(minutes=5))
    await insert_job(pool, "ai-match", "pending", entity_id=2)
    await insert_job(
        pool,
        "ai-match",
        "processing",
        entity_id=3,
        locked_until=now + timedelta(seconds=30),
        started_at=now - timedelta(seconds=10),
        progress_message="Analyzing",
        attempts=1,
    )
    await insert_job(pool, "ai-coverage", "completed", entity_id=4, finished_at=now)
    await insert_job(
        pool,
        "ai-coverage",
        "failed",
        entity_id=5,
        finished_at=now - timedelta(minutes=10),
        error_message="boom",
        attempts=3,
    )
    await insert_job(
        pool,
        "ai-coverage",
        "failed",
        entity_id=6,
        finished_at=now - timedelta(hours=3),
        error_message="old boom",
        attempts=5,
    )
    rows = {r["job_type"]: r for r in await pool.fetch("SELECT * FROM ai_jobs_overview")}
    assert set(rows) == {"ai-match", "ai-coverage", "ai-map-controls"}
    match = rows["ai-match"]
    assert (match["pending"], match["processing"], match["completed"], match["failed"]) == (
        2,
        1,
        0,
        0,
    )
    assert match["running_now"] == 1
    assert match["oldest_pending_age"] >= timedelta(minutes=5)
    coverage = rows["ai-coverage"]
    assert (coverage["completed"], coverage["failed"], coverage["failed_last_hour"]) == (1, 2, 1)
    assert coverage["oldest_pending_age"] is None
    assert rows["ai-map-controls"]["pending"] == 0

    running = await pool.fetch("SELECT * FROM ai_jobs_running")
    assert len(running) == 1
    assert running[0]["worker"] == "w1" and running[0]["entity_id"] == 3
    assert timedelta(seconds=20) < running[0]["lease_left"] <= timedelta(seconds=30)
    assert running[0]["progress_message"] == "Analyzing"

    failures = await pool.fetch("SELECT * FROM ai_jobs_failures")
    assert [(f["error_message"], f["attempts"]) for f in failures] == [("boom", 3), ("old boom", 5)]


async def test_enqueue_from_psql_runs_like_a_dispatch(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    empty = await entities.create_document("Empty", "")
    code, out, err = await psql(dsn, "SELECT id FROM ai_jobs_enqueue('ai-match', 999)")
    assert code != 0 and "Mapping 999 not found" in err
    code, out, err = await psql(
        dsn, f"SELECT id FROM ai_jobs_enqueue('ai-map-controls', {empty['id']})"
    )
    assert code != 0 and "has no content" in err
    code, out, err = await psql(dsn, "SELECT id FROM ai_jobs_enqueue('ai-nothing', 1)")
    assert code != 0 and "Unknown job type" in err
    code, out, err = await psql(
        dsn, f"SELECT id FROM ai_jobs_enqueue('ai-map-controls', {mapping['document_id']})"
    )
    assert code != 0 and "catalogue is empty" in err
    assert await pool.fetchval("SELECT count(*) FROM ai_jobs") == 0

    settings = make_settings(dsn, fake.url, poll_interval_s=60)
    async with running_worker(settings, dsn, pool) as worker:
        await asyncio.wait_for(worker.listener.connected.wait(), 10)
        code, out, err = await psql(
            dsn, f"SELECT id FROM ai_jobs_enqueue('ai-match', {mapping['id']})"
        )
        assert code == 0, err
        # Woken by the NOTIFY of the insert: the poll is a minute away.
        done = await wait_for_job(jobs, out, within=15)
    assert done.status == "completed"
    row = await entities.get_mapping(mapping["id"])
    assert row is not None and row["ai_match_score"] is not None


async def test_a_job_enqueued_from_psql_for_a_user_is_that_users(
    dsn: str, client: Any, entities: EntityStore
) -> None:
    mapping = await make_mapping(entities)
    code, owned, err = await psql(
        dsn, f"SELECT id FROM ai_jobs_enqueue('ai-match', {mapping['id']}, created_by => 'user-x')"
    )
    assert code == 0, err
    code, unowned, err = await psql(
        dsn, f"SELECT id FROM ai_jobs_enqueue('ai-coverage', {mapping['requirement_id']})"
    )
    assert code == 0, err
    user_x, service = auth_headers("user-x"), auth_headers("ops", role="service_role")
    response = await client.get(f"/api/ai-jobs/{owned}", headers=user_x)
    assert response.status == 200 and (await response.json())["jobType"] == "ai-match"
    listed = await (await client.get("/api/ai-jobs", headers=user_x)).json()
    assert [j["id"] for j in listed] == [owned]
    # Nobody's job: not a user's, but the service role sees it, and every other.
    assert (await client.get(f"/api/ai-jobs/{unowned}", headers=user_x)).status == 404
    assert (await client.get(f"/api/ai-jobs/{unowned}", headers=service)).status == 200
    listed = await (await client.get("/api/ai-jobs", headers=service)).json()
    assert {j["id"] for j in listed} == {owned, unowned}


async def test_identical_enqueues_from_psql_return_one_job(dsn: str, entities: EntityStore) -> None:
    mapping = await make_mapping(entities)
    sql = f"SELECT id FROM ai_jobs_enqueue('ai-match', {mapping['id']})"
    results = await asyncio.gather(*(psql(dsn, sql) for _ in range(5)))
    assert {code for code, _, _ in results} == {0}
    assert len({out for _, out, _ in results}) == 1


async def test_retry_and_cancel_from_psql(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mapping = await make_mapping(entities)
    failed = await insert_job(
        pool,
        "ai-match",
        "failed",
        entity_id=mapping["id"],
        error_message="boom",
        attempts=5,
        finished_at=await pool.fetchval("SELECT now()"),
    )
    code, out, err = await psql(
        dsn, f"SELECT status, attempts, max_attempts FROM ai_jobs_retry('{failed}')"
    )
    assert (code, out) == (0, "pending|5|10"), err
    code, out, err = await psql(dsn, f"SELECT status FROM ai_jobs_retry('{failed}')")
    assert code != 0 and "has not failed" in err
    code, out, err = await psql(dsn, f"SELECT id FROM ai_jobs_retry('{uuid.uuid4()}')")
    assert code != 0 and "not found" in err

    code, out, err = await psql(
        dsn, f"SELECT status, error_message FROM ai_jobs_cancel('{failed}')"
    )
    assert (code, out) == (0, "failed|Cancelled"), err
    code, out, err = await psql(dsn, f"SELECT count(*) FROM ai_jobs_cancel('{failed}')")
    assert (code, out) == (0, "0")


async def test_prune_removes_only_what_is_old(dsn: str, pool: asyncpg.Pool, jobs: JobStore) -> None:
    from datetime import timedelta

    now = await pool.fetchval("SELECT now()")
    old_done = await insert_job(
        pool, "ai-match", "completed", entity_id=1, finished_at=now - timedelta(days=40)
    )
    old_failed = await insert_job(
        pool, "ai-match", "failed", entity_id=2, finished_at=now - timedelta(days=31)
    )
    recent = await insert_job(
        pool, "ai-match", "completed", entity_id=3, finished_at=now - timedelta(days=2)
    )
    old_pending = await insert_job(
        pool, "ai-match", "pending", entity_id=4, created_at=now - timedelta(days=90)
    )
    code, out, err = await psql(dsn, "SELECT ai_jobs_prune('30 days')")
    assert (code, out) == (0, "2"), err
    left = {r["id"] for r in await pool.fetch("SELECT id FROM ai_jobs")}
    assert left == {recent, old_pending}
    assert old_done not in left and old_failed not in left

    # The workers' pruner does the same, a batch at a time.
    for i in range(2500):
        await insert_job(
            pool,
            "ai-coverage",
            "completed",
            entity_id=100 + i,
            finished_at=now - timedelta(days=60),
        )
    assert await Pruner(jobs, 30 * 24 * 3600, 60).prune() == 2500
    assert {r["id"] for r in await pool.fetch("SELECT id FROM ai_jobs")} == {recent, old_pending}

    # Finished at as many moments, 10 minutes apart, across batch boundaries and the
    # retention's edge: each batch goes on from where the last ended, and stops at the edge.
    await pool.execute(
        "INSERT INTO ai_jobs (job_type, entity_id, status, finished_at)"
        " SELECT 'ai-map-controls', 10000 + i, CASE WHEN i % 7 = 0 THEN 'failed'"
        " ELSE 'completed' END, now() - interval '30 days' + interval '25 minutes'"
        " - i * interval '10 minutes' FROM generate_series(0, 2599) AS i"
    )
    # i = 0, 1, 2 finished less than 30 days ago (by 25, 15, 5 minutes): kept.
    assert await Pruner(jobs, 30 * 24 * 3600, 60).prune() == 2600 - 3
    left = await pool.fetch("SELECT entity_id FROM ai_jobs WHERE entity_id >= 10000")
    assert sorted(r["entity_id"] for r in left) == [10000, 10001, 10002]


async def test_workers_register_and_deregister(
    dsn: str, pool: asyncpg.Pool, fake: FakeAnthropic
) -> None:
    await pool.execute(
        "INSERT INTO ai_worker_registry (id, host, pid, concurrency, heartbeat_at)"
        " VALUES ('dead', 'h', 1, 1, now() - interval '1 hour')"
    )
    settings = make_settings(dsn, fake.url, worker_http_port=0)
    async with running_worker(settings, dsn, pool) as worker:
        rows = await pool.fetch("SELECT * FROM ai_workers")
        assert [(r["id"], r["concurrency"], r["in_flight"]) for r in rows] == [
            (worker.worker_id, settings.concurrency, 0)
        ]

        async def dead_removed() -> bool:
            return not await pool.fetchval(
                "SELECT count(*) FROM ai_worker_registry WHERE id = 'dead'"
            )

        await wait_until(dead_removed, within=15)
    assert await pool.fetchval("SELECT count(*) FROM ai_worker_registry") == 0


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


def sample(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


async def test_worker_metrics_and_health(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    doc = await entities.create_document("Policy", DOCUMENT)
    await seed_controls(entities, 30)
    mapping = await make_mapping(entities)
    settings = make_settings(dsn, fake.url, worker_http_port=0)
    async with running_worker(settings, dsn, pool) as worker:
        assert worker.http_port
        status, before = await scrape(worker.http_port)
        assert status == 200
        assert sample(before, "aijobs_jobs_completed_total", '{job_type="ai-match"}') == 0
        first = await jobs.enqueue("ai-match", mapping["id"])
        second = await jobs.enqueue("ai-map-controls", doc["id"])
        await wait_for_job(jobs, first.id)
        await wait_for_job(jobs, second.id)
        fake.enqueue(Error(529))
        third = await jobs.enqueue("ai-coverage", mapping["requirement_id"])
        await wait_for_job(jobs, third.id)
        _, after = await scrape(worker.http_port)
        assert sample(after, "aijobs_jobs_started_total", '{job_type="ai-match"}') == 1
        assert sample(after, "aijobs_jobs_completed_total", '{job_type="ai-match"}') == 1
        assert sample(after, "aijobs_jobs_completed_total", '{job_type="ai-map-controls"}') == 1
        assert sample(after, "aijobs_job_duration_seconds_count", '{job_type="ai-match"}') == 1
        assert sample(after, "aijobs_job_queue_wait_seconds_count", '{job_type="ai-match"}') == 1
        assert "aijobs_jobs_in_flight 0.0" in after
        calls = sum(
            float(line.split()[-1])
            for line in after.splitlines()
            if line.startswith("aijobs_anthropic_calls_total{")
        )
        # Every request answered 200 is a call; the 529 is an error.
        assert calls == fake.count(200) >= 3
        assert sample(after, "aijobs_anthropic_tokens_total", '{kind="input"}') > 0
        assert sample(after, "aijobs_anthropic_tokens_total", '{kind="output"}') > 0
        assert sample(after, "aijobs_anthropic_errors_total", '{status="529"}') == 1
        assert sample(after, "aijobs_jobs_snoozed_total", '{job_type="ai-coverage"}') == 1
        assert "aijobs_listener_reconnects_total 0.0" in after
        assert await scrape(worker.http_port, "/healthz") == (200, '{"status":"ok"}')
        assert await scrape(worker.http_port, "/readyz") == (200, '{"status":"ready"}')


async def test_readyz_fails_while_the_database_is_unreachable(
    dsn: str, fake: FakeAnthropic
) -> None:
    proxy = TcpProxy.for_dsn(dsn)
    await proxy.start()
    proxied = proxy.dsn(dsn)
    from service.db.pool import create_pool

    worker_pool = await create_pool(proxied, 1, 2)
    try:
        settings = make_settings(proxied, fake.url, worker_http_port=0)
        async with running_worker(settings, proxied, worker_pool) as worker:
            assert worker.http_port
            assert (await scrape(worker.http_port, "/readyz"))[0] == 200
            await proxy.cut()
            status, body = await scrape(worker.http_port, "/readyz")
            assert status == 503 and "database unreachable" in body
            assert (await scrape(worker.http_port, "/healthz"))[0] == 200
            await proxy.start()

            async def ready() -> bool:
                return (await scrape(worker.http_port or 0, "/readyz"))[0] == 200

            await wait_until(ready, within=10, interval=0.1)
    finally:
        await worker_pool.close()
        await proxy.stop()


async def test_api_metrics_health_and_readiness(client: Any, entities: EntityStore) -> None:
    mapping = await make_mapping(entities)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    before = await response.text()
    assert sample(before, "aijobs_jobs_dispatched_total", '{job_type="ai-match"}') == 0
    assert "aijobs_sse_subscribers 0.0" in before
    for _ in range(3):  # one job: the repeats return it
        assert (await client.post(f"/api/gap-analysis/ai-match/{mapping['id']}")).status == 202
    after = await (await client.get("/metrics")).text()
    assert sample(after, "aijobs_jobs_dispatched_total", '{job_type="ai-match"}') == 1
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ready"})


async def run_cli(dsn: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import os
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        env={**os.environ, "DATABASE_URL": dsn, "AIJOBS_WORKER_PORT": "off", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"aijobs {' '.join(args)} was still running after 60 s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_stats_and_jobs_commands(dsn: str, pool: asyncpg.Pool) -> None:
    await insert_job(pool, "ai-match", "pending", entity_id=1)
    await insert_job(
        pool,
        "ai-coverage",
        "failed",
        entity_id=2,
        error_message="it broke",
        finished_at=await pool.fetchval("SELECT now()"),
    )
    code, out = await run_cli(dsn, "stats")
    assert code == 0, out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("ai-")}
    assert lines["ai-match"][1:5] == ["1", "0", "0", "0"]
    assert lines["ai-coverage"][1:5] == ["0", "0", "0", "1"]
    code, out = await run_cli(dsn, "jobs", "--status", "failed")
    assert code == 0, out
    assert "it broke" in out and "ai-coverage" in out and "ai-match" not in out


@pytest.fixture
async def unmigrated_dsn(databases: DatabaseFactory) -> AsyncIterator[str]:
    name = await databases.create_empty()
    yield databases.dsn(name)
    await databases.drop(name)


async def test_reports_on_a_database_without_the_migrations_say_to_migrate(
    unmigrated_dsn: str,
) -> None:
    for command in ("stats", "jobs"):
        code, out = await run_cli(unmigrated_dsn, command)
        assert code == 2, out
        assert "Traceback" not in out
        assert out.strip() == (
            "aijobs: the database has no aijobs tables yet: run `aijobs migrate` first "
            "(`api`, `worker`, `serve` and `demo` apply them at start)"
        )
    assert (await run_cli(unmigrated_dsn, "migrate"))[0] == 0
    code, out = await run_cli(unmigrated_dsn, "jobs")
    assert (code, out.strip()) == (0, "(none)")


@pytest.mark.parametrize(
    ("args", "told"),
    [
        (("jobs", "--limit", "-1"), "argument --limit: must be at least 1, got -1"),
        (("jobs", "--limit", "x"), "argument --limit: must be an integer, got 'x'"),
        (("stats", "--days", "-2"), "argument --days: must be at least 1, got -2"),
        (("worker", "--concurrency", "0"), "argument --concurrency: must be at least 1, got 0"),
        (("worker", "--processes", "0"), "argument --processes: must be at least 1, got 0"),
        (("serve", "--concurrency", "-1"), "argument --concurrency: must be at least 1, got -1"),
        (("api", "--port", "70000"), "argument --port: must be at most 65535, got 70000"),
        (("demo", "--port", "-1"), "argument --port: must be at least 0, got -1"),
    ],
)
async def test_an_option_out_of_range_is_a_usage_error(
    dsn: str, args: tuple[str, ...], told: str
) -> None:
    """Refused before anything starts: no worker with a slot count it did not ask for, no API
    announcing one port while listening on another, no traceback."""
    code, out = await run_cli(dsn, *args, env={"AIJOBS_JWT_SECRET": "s" * 32})
    assert code == 2, out
    assert out.splitlines()[-1] == f"aijobs {args[0]}: error: {told}"


@pytest.mark.parametrize(
    ("env", "told"),
    [
        (
            {"AIJOBS_LOG_LEVEL": "loud"},
            "AIJOBS_LOG_LEVEL must be one of debug, info, warning, error, not 'loud'",
        ),
        ({"AIJOBS_PORT": "70000"}, "AIJOBS_PORT must be at most 65535, got 70000"),
        ({"AIJOBS_WORKER_PORT": "65536"}, "AIJOBS_WORKER_PORT must be at most 65535, got 65536"),
    ],
)
async def test_a_setting_out_of_range_stops_every_command(
    dsn: str, env: dict[str, str], told: str
) -> None:
    code, out = await run_cli(dsn, "jobs", env=env)
    assert (code, out.strip()) == (2, f"aijobs: {told}")


@pytest.mark.parametrize("command", ["migrate", "api", "worker", "serve", "stats", "jobs"])
async def test_a_command_that_cannot_reach_its_database_says_where(command: str) -> None:
    """One line naming the server and database (not the password), exit status 2, no
    traceback."""
    import socket

    with socket.socket() as closed:  # bound, never listening: a connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code, out = await run_cli(
            f"postgresql://aijobs:sekrit@127.0.0.1:{port}/aijobs",
            command,
            env={"AIJOBS_JWT_SECRET": "s" * 32},
        )
    assert code == 2, out
    assert out.splitlines()[-1].startswith(
        f"aijobs: cannot connect to the database at 127.0.0.1:{port}/aijobs: "
    )
    assert "Connection refused" in out
    assert "sekrit" not in out and "Traceback" not in out


async def test_a_database_that_does_not_exist_is_named(databases: DatabaseFactory) -> None:
    missing = f"aijobs_missing_{databases.run_id}"
    code, out = await run_cli(databases.dsn(missing), "jobs")
    assert code == 2, out
    assert out.splitlines()[-1].endswith(f'/{missing}: database "{missing}" does not exist')


@pytest.mark.parametrize("command", ["api", "serve"])
async def test_an_api_whose_port_is_taken_says_so(dsn: str, command: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = await run_cli(
            dsn, command, "--port", str(port), env={"AIJOBS_JWT_SECRET": "s" * 32}
        )
    assert code == 2, out
    assert out.splitlines()[-1].startswith(f"aijobs: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in out and "Traceback" not in out


async def test_operations_psql_block_runs_as_written(dsn: str, entities: EntityStore) -> None:
    import re
    from pathlib import Path

    from service.sample import load_sample

    await load_sample(entities)
    page = Path(__file__).resolve().parent.parent / "docs" / "operations.md"  # noqa: ASYNC240
    text = page.read_text()
    section = text[text.index("# Operating it with psql") :]
    sql = re.search(r"```sql\n(.*?)```", section, re.S)
    assert sql is not None
    code, _, err = await psql(dsn, sql.group(1))
    assert code == 0, err
