"""Pickup latency: an idle worker, single dispatches spaced apart; time from the dispatch's
commit (the INSERT returning to the client) to the processor starting.

    python -m bench.pickup_latency [--system aijobs|pgqueuer|floor] [--scale full|tiny]
                                   [--jobs 200] [--gap-ms 20]

The worker is a process of its own (bench/worker_proc.py) and records when each processor
started on CLOCK_MONOTONIC, which every process of the machine shares; this process enqueues,
one job per transaction, and notes when each commit returned. Uses DATABASE_URL, or the
machine's Postgres at 127.0.0.1:5432, in a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg

from bench import queues, worker_proc
from bench.common import Child, admin_dsn, percentile, scratch_database
from service.db.pool import connect

FULL = {"jobs": 200, "gap_ms": 20.0}
TINY = {"jobs": 20, "gap_ms": 5.0}


async def measure(
    admin_dsn: str, jobs: int = 200, gap_ms: float = 20, system: str = "aijobs"
) -> dict[str, Any]:
    async with scratch_database(admin_dsn, aijobs_schema=system == "aijobs") as dsn:
        await queues.install(system, dsn)
        return await measure_in(dsn, jobs, gap_ms, system)


async def measure_in(
    dsn: str, jobs: int = 200, gap_ms: float = 20, system: str = "aijobs"
) -> dict[str, Any]:
    """The same in a database that has the queue's schema already (and whatever rows)."""
    child = await Child.start(
        worker_proc.command(system, dsn, 10, jobs, "--record-starts"),
        label=f"pickup-{system}",
    )
    ok = False
    try:
        await child.expect("start", within=60)
        # Let it settle into idleness: listener connected, first empty claim done.
        await asyncio.sleep(1.0)
        conn = await (asyncpg.connect(dsn) if system == "pgqueuer" else connect(dsn))
        try:
            enqueuer = queues.Enqueuer(system, conn)
            committed: dict[str, float] = {}
            for _ in range(jobs):
                job_id = await enqueuer.one()
                committed[job_id] = time.monotonic()
                await asyncio.sleep(gap_ms / 1000)
        finally:
            await conn.close()
        await child.expect("ran", within=60)
        child.terminate()
        result = await child.expect("result", within=60)
        ok = True
    finally:
        await child.stop(keep_log=not ok)
    starts: dict[str, float] = result["starts"]
    delays = [(starts[j] - committed[j]) * 1000 for j in committed]
    return {
        "system": system,
        "jobs": jobs,
        "gap_ms": gap_ms,
        "p50_ms": round(statistics.median(delays), 2),
        "p99_ms": round(percentile(delays, 0.99), 2),
        "max_ms": round(max(delays), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pickup_latency")
    parser.add_argument("--system", choices=queues.SYSTEMS, default="aijobs")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--jobs", type=int, default=0, help="overrides the scale")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="overrides the scale")
    args = parser.parse_args()
    preset = TINY if args.scale == "tiny" else FULL
    jobs = args.jobs or int(preset["jobs"])
    gap_ms = args.gap_ms or preset["gap_ms"]
    print(json.dumps(asyncio.run(measure(admin_dsn(), jobs, gap_ms, args.system))))


if __name__ == "__main__":
    main()
