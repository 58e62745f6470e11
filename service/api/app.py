"""The aiohttp application factory."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from service.ai.dispatch import Dispatcher
from service.api import entities, jobs, openapi, page, session, sse
from service.api.auth import VERIFIED_TOKENS, VerifiedTokens, auth_middleware
from service.api.cors import add_cors_headers, preflight_middleware
from service.api.errors import error_middleware
from service.api.state import (
    DISPATCHER,
    ENTITIES,
    EVENT_HUB,
    JOB_READS,
    JOBS,
    METRICS,
    OPEN_STREAMS,
    POOL,
    SETTINGS,
)
from service.config import Settings
from service.db.pool import create_pool
from service.entities.store import EntityStore
from service.jobs.duties import Duty
from service.jobs.events import EventHub, EventPruner, EventStore
from service.jobs.grouped import Grouped
from service.jobs.store import JobStore
from service.jobs.text import TextSoFar
from service.metrics import Metrics
from service.ops import ops_routes

# Documents may be up to 2 MB of text; JSON escaping can add to that.
CLIENT_MAX_SIZE = 3 * 1024 * 1024


def create_app(settings: Settings, dsn: str, pool: asyncpg.Pool | None = None) -> web.Application:
    """Build the API. With `pool`, use it (and leave closing it to the caller)."""
    app = web.Application(
        middlewares=[error_middleware, preflight_middleware, auth_middleware],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[SETTINGS] = settings
    app[page.ASSETS] = page.Assets.load()
    metrics = Metrics()
    app[METRICS] = metrics
    app[OPEN_STREAMS] = Counter()
    app[VERIFIED_TOKENS] = VerifiedTokens()
    # The background duties of the API process, for /readyz.
    duties: list[Duty] = []

    async def database(app: web.Application) -> AsyncIterator[None]:
        owned = pool is None
        the_pool = pool or await create_pool(
            dsn, settings.pool_min_size, settings.pool_max_size, pooled=settings.pooled
        )
        app[POOL] = the_pool
        app[ENTITIES] = EntityStore(the_pool)
        app[JOBS] = JobStore(the_pool)
        try:
            # Refuse to start, rather than answer 202 to dispatches and 500 to every read.
            await app[JOBS].check_user_scope()
        except BaseException:
            if owned:
                await the_pool.close()
            raise
        app[JOB_READS] = Grouped(app[JOBS].read_many, name="job_reads")
        app[DISPATCHER] = Dispatcher(
            the_pool,
            settings.max_attempts_for,
            settings.dispatch_per_minute,
            daily_budget_usd=settings.user_daily_budget_usd,
        )
        yield
        if owned:
            await the_pool.close()

    async def live_events(app: web.Application) -> AsyncIterator[None]:
        store = EventStore(app[POOL])
        hub = EventHub(
            settings.session_url(dsn),
            store,
            poll_interval_s=settings.poll_interval_s,
            texts=TextSoFar() if settings.stream_deltas else None,
        )
        pruner = EventPruner(store, settings.event_retention_s)
        app[EVENT_HUB] = hub
        metrics.gauge_from(
            "aijobs_sse_subscribers", "Open event streams", lambda: hub.subscriber_count
        )
        metrics.counter_from(
            "aijobs_listener_reconnects",
            "Reconnects of this process's LISTEN connection",
            lambda: hub.listener.reconnects,
        )
        await hub.start()
        await pruner.start()
        duties[:] = [
            hub.listener.duty,
            hub.duty,
            pruner.duty,
            app[JOB_READS].duty,
            app[DISPATCHER].duty,
        ]
        yield
        duties.clear()
        await pruner.stop()
        await hub.stop()

    async def end_streams(app: web.Application) -> None:
        # on_shutdown runs before the server waits for running handlers: open event streams
        # end here, or shutdown would wait for them until its timeout.
        app[EVENT_HUB].drain()

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(live_events)
    app.on_shutdown.append(end_streams)
    app.on_response_prepare.append(add_cors_headers)
    app.add_routes(entities.routes)
    app.add_routes(jobs.routes)
    app.add_routes(sse.routes)
    app.add_routes(session.routes)
    app.add_routes(openapi.routes)
    app.add_routes(page.routes)
    app.add_routes(ops_routes(lambda: app[POOL], metrics, lambda: duties))
    return app
