"""What operators and orchestrators ask of every process: alive? ready? metrics?"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import asyncpg
import orjson
from aiohttp import web

from service.db.migrations import pending_migrations
from service.jobs.duties import Duty, problems
from service.metrics import Metrics

READY_TIMEOUT_S = 3.0


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def ops_routes(
    pool: Callable[[], asyncpg.Pool],
    metrics: Metrics,
    duties: Callable[[], Iterable[Duty]] = lambda: (),
) -> list[web.RouteDef]:
    """/healthz (the process answers), /readyz (database reachable, migrations current, every
    background duty doing its work) and /metrics (Prometheus text format)."""

    async def healthz(_request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S), pool().acquire() as conn:
                missing = await pending_migrations(conn)
        except Exception as exc:
            # Unavailable (see db/errors.py), or any other reason the check could not be made.
            return _json({"status": "unavailable", "reason": f"database unreachable: {exc}"}, 503)
        if missing:
            return _json({"status": "unavailable", "reason": f"migrations pending: {missing}"}, 503)
        stuck = problems(duties())
        if stuck:
            return _json(
                {"status": "unavailable", "reason": "; ".join(stuck), "duties": stuck}, 503
            )
        return _json({"status": "ready"})

    async def metrics_text(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": Metrics.content_type})

    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics_text),
    ]
