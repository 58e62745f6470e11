"""End-to-end time of N jobs with the database reached directly, and through PgBouncer in
transaction mode with AIJOBS_DIRECT_URL set (LISTEN and migrations direct, everything else
pooled): from the first dispatch over HTTP until the last job is completed.

One API and one worker in this process, the offline analyzer answering at once; the jobs
are dispatched by several users at once, and their completion is watched in the table.

    python -m bench.pooler --jobs 200 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from bench.common import admin_dsn, scratch_database
from service.api.app import create_app
from service.config import Settings
from service.db.pool import create_pool
from service.entities.store import EntityStore
from service.runtime import create_worker_pool, running_worker
from tests.conftest import TEST_JWT_SECRET, auth_headers
from tests.pgbouncer import PgBouncer

USERS = 10


async def _wait_for_completion(dsn: str, jobs: int, within: float) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while True:
            done = await conn.fetchval("SELECT count(*) FROM ai_jobs WHERE status = 'completed'")
            if done >= jobs:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {jobs} jobs completed in {within} s")
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def run_once(
    server_dsn: str, bouncer: PgBouncer | None, jobs: int, *, no_cache: bool = False
) -> float:
    """Seconds from the first dispatch to the last completion. `no_cache`: direct, but as
    if pooled (no statement cache), to tell the pooler's cost from the cache's."""
    async with scratch_database(server_dsn) as direct:
        dsn = bouncer.via(direct) if bouncer else direct
        settings = Settings(
            database_url=dsn,
            direct_url=direct if bouncer else None,
            pooler="on" if no_cache else "auto",
            jwt_secret=TEST_JWT_SECRET,
            concurrency=50,
            dispatch_per_minute=0,
            worker_http_port=None,
        )
        api_pool = await create_pool(dsn, 2, 10, pooled=settings.pooled)
        worker_pool = await create_worker_pool(settings, dsn)
        try:
            entities = EntityStore(api_pool)
            doc = await entities.create_document("Policy", "Access reviews happen quarterly.")
            requirements = [
                await entities.create_requirement(f"R-{n}", f"Requirement {n}", "Review access")
                for n in range(jobs)
            ]
            for req in requirements:
                await entities.create_mapping(req["id"], doc["id"])
            async with (
                TestClient(TestServer(create_app(settings, dsn, api_pool))) as client,
                running_worker(settings, dsn, worker_pool) as worker,
            ):
                await asyncio.wait_for(worker.listener.connected.wait(), 10)
                started = time.monotonic()

                async def dispatch(n: int, req: dict[str, Any]) -> None:
                    answer = await client.post(
                        f"/api/requirements/{req['id']}/ai-coverage",
                        headers=auth_headers(f"user-{n % USERS}"),
                    )
                    assert answer.status == 202, await answer.text()

                await asyncio.gather(*(dispatch(n, r) for n, r in enumerate(requirements)))
                await _wait_for_completion(direct, jobs, 120)
                return time.monotonic() - started
        finally:
            await worker_pool.close()
            await api_pool.close()


async def measure(server_dsn: str, jobs: int, runs: int) -> dict[str, Any]:
    bouncer = PgBouncer(server_dsn)
    bouncer.start()
    try:
        times: dict[str, list[float]] = {"direct": [], "direct_no_cache": [], "pgbouncer": []}
        for _ in range(runs):
            times["direct"].append(await run_once(server_dsn, None, jobs))
            times["direct_no_cache"].append(await run_once(server_dsn, None, jobs, no_cache=True))
            times["pgbouncer"].append(await run_once(server_dsn, bouncer, jobs))
    finally:
        bouncer.stop()
    return {
        "jobs": jobs,
        "runs": runs,
        **{f"{k}_median_s": round(statistics.median(v), 3) for k, v in times.items()},
        **{f"{k}_s": [round(t, 3) for t in v] for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(admin_dsn(), args.jobs, args.runs))))


if __name__ == "__main__":
    main()
