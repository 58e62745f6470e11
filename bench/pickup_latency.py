"""Pickup latency: an idle worker, single dispatches spaced apart; time from the dispatch's
commit (the INSERT returning to the client) to the processor starting.

    python -m bench.pickup_latency [--jobs 200] [--gap-ms 20]

Uses DATABASE_URL, or the machine's Postgres at 127.0.0.1:5432, in a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

import asyncpg

from service.db.migrations import migrate
from service.db.pool import connect, create_pool
from service.jobs.model import Completion
from service.jobs.registry import JobType
from service.jobs.store import JobStore
from service.jobs.worker import Worker, WorkerOptions
from service.logs import configure_logging
from tests.pg import DEFAULT_SERVER, with_database


async def measure(admin_dsn: str, jobs: int, gap_ms: float) -> dict[str, Any]:
    name = f"aijobs_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(admin_dsn, name)
    try:
        conn = await connect(dsn)
        await migrate(conn)
        await conn.close()
        pool = await create_pool(dsn, 2, 10)
        store = JobStore(pool)
        started: dict[uuid.UUID, float] = {}
        done = asyncio.Event()

        async def noop(ctx: Any) -> Completion:
            started[ctx.job.id] = time.perf_counter()
            if len(started) == jobs:
                done.set()
            return Completion(None)

        worker = Worker(
            dsn, store, {"ai-match": JobType("ai-match", noop)}, WorkerOptions(poll_interval_s=5)
        )
        await worker.start()
        await worker.listener.connected.wait()
        committed: dict[uuid.UUID, float] = {}
        for i in range(jobs):
            job = await store.enqueue("ai-match", i + 1)
            committed[job.id] = time.perf_counter()
            await asyncio.sleep(gap_ms / 1000)
        await asyncio.wait_for(done.wait(), 60)
        await worker.stop()
        await pool.close()
        delays = sorted((started[j] - committed[j]) * 1000 for j in committed)
        return {
            "jobs": jobs,
            "p50_ms": round(statistics.median(delays), 2),
            "p99_ms": round(delays[int(len(delays) * 0.99) - 1], 2),
            "max_ms": round(delays[-1], 2),
        }
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20)
    args = parser.parse_args()
    configure_logging("warning", "console")
    dsn = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    print(asyncio.run(measure(dsn, args.jobs, args.gap_ms)))


if __name__ == "__main__":
    main()
