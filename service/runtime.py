"""Assembling the processes: the database, the analyzer, the worker, the API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from service.ai.accounting import UsageLedger
from service.ai.analyzer import Analyzer
from service.ai.claude import CallConfig, ClaudeAnalyzer, create_client
from service.ai.offline import OfflineAnalyzer
from service.ai.pricing import PriceTable
from service.ai.processors import ProcessorDeps, build_registry
from service.ai.ratelimit import Limits, Policy, RateLimiter
from service.api.app import create_app
from service.config import JOB_TYPES, Settings
from service.db.embedded import EmbeddedPostgres
from service.db.migrations import migrate
from service.db.pool import connect, create_pool
from service.entities.store import EntityStore
from service.jobs.actor import RetryPolicy
from service.jobs.store import JobStore
from service.jobs.text import TextPublisher
from service.jobs.worker import Worker, WorkerOptions
from service.logs import get_logger
from service.metrics import Metrics
from service.ops import ops_routes

log = get_logger(__name__)

EMBEDDED_DATABASE = "aijobs"
# On SIGTERM the API's event streams end at once (the hub drains them); a request still in
# flight gets this long to finish, then is cancelled and gets this long again to unwind. A
# client that never sends the rest of its body cannot hold a stop up any longer (aiohttp's
# own default is 60 s for each of the two waits).
API_SHUTDOWN_TIMEOUT_S = 2.0

# What connecting raises when the database cannot be reached or refuses the connection (no
# such host, port, database or role, a wrong password, a server starting or full), as opposed
# to an error of a statement.
_CANNOT_CONNECT = (
    OSError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


class CannotStart(Exception):
    """A command cannot start: its database cannot be reached, or its port is taken."""


def _where(dsn: str) -> str:
    """The server and database a connection string names, without its credentials."""
    try:
        url = urlsplit(dsn)
        host = url.hostname or "localhost"
        port = f":{url.port}" if url.port else ""
    except ValueError:
        return "DATABASE_URL"
    return f"{host}{port}{url.path or ''}"


async def connect_at_start(dsn: str, name: str, *, pooled: bool) -> asyncpg.Connection:
    """A connection for a command that is starting; CannotStart, saying where, when the
    database cannot be reached."""
    try:
        return await connect(dsn, name, pooled=pooled)
    except _CANNOT_CONNECT as exc:
        raise CannotStart(f"cannot connect to the database at {_where(dsn)}: {exc}") from exc


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """Yield the DSN to use: DATABASE_URL, or an embedded server started for this process."""
    if settings.database_url:
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.data_dir.resolve())
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn("postgres"))
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", EMBEDDED_DATABASE
            )
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
        finally:
            await conn.close()
        yield server.dsn(EMBEDDED_DATABASE)
    finally:
        server.stop()


async def run_migrations(settings: Settings, dsn: str) -> list[int]:
    """Apply the pending migrations, on AIJOBS_DIRECT_URL when it is set."""
    session = settings.session_url(dsn)
    conn = await connect_at_start(
        session, "aijobs-migrate", pooled=settings.pooled and session == dsn
    )
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def rate_limiter(settings: Settings, pool: asyncpg.Pool | None) -> RateLimiter | None:
    """The budget shared with every other worker, when it is on and there is a database."""
    if not settings.claude_rate_limit or pool is None:
        return None
    policy = Policy(
        Limits(settings.claude_rpm, settings.claude_itpm, settings.claude_otpm),
        share=settings.claude_limit_share,
        burst=settings.claude_burst,
    )
    return RateLimiter(pool, policy, settings.claude_max_wait_s)


@contextlib.asynccontextmanager
async def analyzer_for(
    settings: Settings, pool: asyncpg.Pool | None = None, metrics: Metrics | None = None
) -> AsyncIterator[Analyzer]:
    if settings.anthropic_api_key:
        client = create_client(
            settings.anthropic_api_key, settings.anthropic_base_url, settings.anthropic_timeout_s
        )
        configs = {
            t: CallConfig(
                settings.model_for(t), settings.max_tokens_for(t), settings.temperature_for(t)
            )
            for t in JOB_TYPES
        }
        limiter = rate_limiter(settings, pool)
        try:
            yield ClaudeAnalyzer(client, configs, limiter, metrics)
        finally:
            if limiter is not None:
                await limiter.close()
            await client.close()
    else:
        log.info("offline_analyzer_in_use", reason="ANTHROPIC_API_KEY is not set")
        yield OfflineAnalyzer(settings.offline_delay_s)


async def create_worker_pool(
    settings: Settings, dsn: str, application_name: str = "aijobs-worker"
) -> asyncpg.Pool:
    """The pool a worker runs its jobs on, with the worker's synchronous_commit."""
    return await create_pool(
        dsn,
        settings.pool_min_size,
        settings.pool_max_size,
        application_name,
        synchronous_commit=settings.worker_synchronous_commit,
        pooled=settings.pooled,
    )


def worker_options(settings: Settings, concurrency: int | None = None) -> WorkerOptions:
    return WorkerOptions(
        concurrency=concurrency or settings.concurrency,
        poll_interval_s=settings.poll_interval_s,
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
        reap_interval_s=min(settings.lease_s / 2, 5.0),
        shutdown_grace_s=settings.shutdown_grace_s,
        retention_s=settings.retention_s,
        prune_interval_s=settings.prune_interval_s,
        retry=RetryPolicy(settings.retry_base_s, settings.retry_max_s, settings.max_wait_s),
        fair_share=settings.fair_share,
        user_concurrency=settings.user_concurrency,
    )


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, dsn: str, pool: asyncpg.Pool, concurrency: int | None = None
) -> AsyncIterator[Worker]:
    metrics = Metrics()
    ledger = UsageLedger(pool, PriceTable(settings.claude_prices))
    async with analyzer_for(settings, pool, metrics) as analyzer:
        deps = ProcessorDeps(
            analyzer,
            EntityStore(pool),
            settings.map_controls_batch_size,
            ledger=ledger,
            # The offline analyzer reads a document of any length at once.
            section_chars=settings.section_chars if settings.uses_claude else None,
            section_overlap_chars=settings.section_overlap_chars,
            parallel_batches=settings.parallel_batches,
            batch_retries=settings.batch_retries,
            retry_policy=RetryPolicy(settings.retry_base_s, settings.retry_max_s),
        )
        worker = Worker(
            settings.session_url(dsn),
            JobStore(pool),
            build_registry(deps, {t: settings.timeout_for(t) for t in JOB_TYPES}),
            worker_options(settings, concurrency),
            metrics=metrics,
            text=TextPublisher(
                pool,
                # A connection of its own, as the listener's: on AIJOBS_DIRECT_URL when set.
                connect=functools.partial(
                    connect,
                    settings.session_url(dsn),
                    "aijobs-worker-text",
                    pooled=settings.pooled and settings.session_url(dsn) == dsn,
                ),
            )
            if settings.stream_deltas
            else None,
        )
        await worker.start()
        http = await _serve_worker_ops(settings, pool, worker)
        try:
            yield worker
        finally:
            if http is not None:
                await http.cleanup()
            await worker.stop()
            # What the stopped jobs recorded last, written before the pool closes.
            await ledger.close()


async def _serve_worker_ops(
    settings: Settings, pool: asyncpg.Pool, worker: Worker
) -> web.AppRunner | None:
    """/metrics, /healthz and /readyz of a worker, on a small port of its own."""
    if settings.worker_http_port is None:
        return None
    app = web.Application()
    app.add_routes(ops_routes(lambda: pool, worker.metrics, lambda: worker.duties))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.worker_http_port)
    try:
        await site.start()
    except OSError as exc:
        # Another worker on this host has the port: run on without it rather than fail.
        log.warning("worker_http_unavailable", port=settings.worker_http_port, error=str(exc))
        await runner.cleanup()
        return None
    worker.http_port = runner.addresses[0][1]
    log.info("worker_http_started", url=f"http://{settings.host}:{worker.http_port}")
    return runner


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, dsn: str, host: str, port: int, pool: asyncpg.Pool | None = None
) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(
        create_app(settings, dsn, pool),
        handle_signals=False,
        shutdown_timeout=API_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotStart(f"cannot listen on {host}:{port}: {exc}") from exc
    log.info("api_started", url=f"http://{host}:{port}")
    try:
        yield runner
    finally:
        await runner.cleanup()
        log.info("api_stopped")


async def serve(
    settings: Settings,
    *,
    api: bool,
    worker: bool,
    host: str,
    port: int,
    concurrency: int | None = None,
) -> None:
    """Run the API, the worker, or both, until SIGTERM or SIGINT."""
    stop = stop_on_signals()
    async with database(settings) as dsn:
        await run_migrations(settings, dsn)
        role = "serve" if api and worker else "api" if api else "worker"
        # The worker's commits may be asynchronous (see Settings.worker_synchronous_commit);
        # the API's follow the server's setting, so that a 202 is as durable as the server
        # makes any commit. In `serve`, each has a pool of its own.
        pool = await create_pool(
            dsn,
            settings.pool_min_size,
            settings.pool_max_size,
            f"aijobs-{role}",
            synchronous_commit=None if api else settings.worker_synchronous_commit,
            pooled=settings.pooled,
        )
        worker_pool = pool
        if api and worker:
            worker_pool = await create_worker_pool(settings, dsn, "aijobs-serve-worker")
        try:
            async with contextlib.AsyncExitStack() as stack:
                if worker:
                    await stack.enter_async_context(
                        running_worker(settings, dsn, worker_pool, concurrency)
                    )
                if api:
                    await stack.enter_async_context(running_api(settings, dsn, host, port, pool))
                await stop.wait()
                log.info("shutdown_requested")
        finally:
            if worker_pool is not pool:
                await worker_pool.close()
            await pool.close()
