from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.api.auth import mint_token
from service.config import Settings
from service.db.pool import create_pool
from service.entities.store import ControlInput, EntityStore
from service.jobs.model import Job
from service.jobs.store import JobStore
from service.logs import configure_logging
from service.runtime import running_worker
from tests.fake_anthropic import FakeAnthropic
from tests.pg import DatabaseFactory
from tests.pgbouncer import PgBouncer
from tests.tcp_proxy import TcpProxy


def pytest_configure(config: pytest.Config) -> None:
    configure_logging("warning", "console")


@pytest.fixture(scope="session")
def databases() -> Iterator[DatabaseFactory]:
    dbs = DatabaseFactory()
    dbs.start()
    yield dbs
    dbs.stop()


@pytest.fixture
async def dsn(databases: DatabaseFactory) -> AsyncIterator[str]:
    name = await databases.create()
    yield databases.dsn(name)
    await databases.drop(name)


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    the_pool = await create_pool(dsn, 1, 10)
    yield the_pool
    await the_pool.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


TEST_JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
TEST_USER = "test-user"


def token_for(user_id: str = TEST_USER, role: str = "authenticated") -> str:
    return mint_token(TEST_JWT_SECRET, user_id, role)


def auth_headers(user_id: str = TEST_USER, role: str = "authenticated") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user_id, role)}"}


def make_settings(dsn: str, fake_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "anthropic_api_key": "test-key" if fake_url else None,
        "anthropic_base_url": fake_url,
        "anthropic_timeout_s": 10.0,
        "poll_interval_s": 0.5,
        "lease_s": 10.0,
        "heartbeat_s": 1.0,
        "retry_base_s": 0.05,
        "retry_max_s": 1.0,
        "max_attempts": 3,
        "jwt_secret": TEST_JWT_SECRET,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(dsn: str, fake: FakeAnthropic) -> Settings:
    return make_settings(dsn, fake.url)


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    assert settings.database_url
    app = create_app(settings, settings.database_url, pool)
    async with TestClient(TestServer(app), headers=auth_headers()) as test_client:
        yield test_client


@pytest.fixture
async def worker(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Any]:
    assert settings.database_url
    async with running_worker(settings, settings.database_url, pool) as running:
        await asyncio.wait_for(running.listener.connected.wait(), 10)
        yield running


@contextlib.asynccontextmanager
async def api_behind_a_proxy(
    dsn: str, fake_url: str
) -> AsyncIterator[tuple[TestClient[Any, Any], TcpProxy]]:
    """An API whose every connection to the database goes through a proxy the test can cut,
    and a client of it signed in as the test user."""
    proxy = TcpProxy.for_dsn(dsn)
    await proxy.start()
    proxied = proxy.dsn(dsn)
    app = create_app(make_settings(proxied, fake_url), proxied)
    try:
        async with TestClient(TestServer(app), headers=auth_headers()) as client:
            yield client, proxy
    finally:
        await proxy.stop()


@pytest.fixture
def entities(pool: asyncpg.Pool) -> EntityStore:
    return EntityStore(pool)


@pytest.fixture
def jobs(pool: asyncpg.Pool) -> JobStore:
    return JobStore(pool)


async def wait_until(
    check: Callable[[], Awaitable[Any]], within: float = 15.0, interval: float = 0.02
) -> Any:
    """Return check()'s first truthy value; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


async def wait_for_job(store: JobStore, job_id: uuid.UUID | str, within: float = 15.0) -> Job:
    """Wait until the job is completed or failed."""
    job_uuid = uuid.UUID(str(job_id))

    async def finished() -> Job | None:
        job = await store.get(job_uuid)
        return job if job is not None and job.finished else None

    job: Job = await wait_until(finished, within)
    return job


DOCUMENT = (
    "Access control policy. Access to production systems is granted on least privilege and "
    "reviewed quarterly by system owners. Multi-factor authentication is required for all "
    "remote access. Leavers have their accounts disabled within one business day."
)


async def seed_controls(entities: EntityStore, count: int) -> list[dict[str, Any]]:
    return await entities.create_controls(
        [
            ControlInput(f"C-{i:03d}", f"Control {i}", f"Control number {i} about access review")
            for i in range(1, count + 1)
        ]
    )


class WorkerProcess:
    """`aijobs worker` in a process of its own; its JSON log goes to a file."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: str) -> None:
        self.proc = proc
        self.log_path = log_path

    def log_lines(self) -> list[dict[str, Any]]:
        with open(self.log_path, "rb") as log:
            return [orjson.loads(line) for line in log if line.startswith(b"{")]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, within: float = 60.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), within)


async def start_worker_process(
    dsn: str,
    fake: FakeAnthropic,
    concurrency: int,
    *,
    processes: int = 1,
    **env_overrides: str,
) -> WorkerProcess:
    """Start `aijobs worker --concurrency N [--processes P]` against `dsn` and the fake
    Claude."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": fake.url,
        "AIJOBS_LOG_FORMAT": "json",
        "AIJOBS_POLL_INTERVAL": "0.5",
        **env_overrides,
    }
    fd, log_path = tempfile.mkstemp(prefix="aijobs-worker-", suffix=".log")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "worker",
            "--concurrency",
            str(concurrency),
            *(["--processes", str(processes)] if processes != 1 else []),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=fd,
        )
    finally:
        os.close(fd)
    return WorkerProcess(proc, log_path)


@pytest.fixture(scope="session")
def pgbouncer(databases: DatabaseFactory) -> Iterator[PgBouncer]:
    """Debian's PgBouncer in transaction mode in front of the test server (installed first
    when it is missing)."""
    bouncer = PgBouncer(databases.admin_dsn)
    bouncer.start()
    yield bouncer
    bouncer.stop()
