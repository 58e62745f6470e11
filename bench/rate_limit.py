"""The shared rate limit, measured: worker processes finish a batch of ai-match jobs against a
fake Claude that allows `--rpm` requests per minute to all of them together, once with the
budget they share through Postgres and once without it.

    python -m bench.rate_limit [--jobs 300] [--rpm 60] [--workers 3] [--concurrency 10]

Prints, for each run, the time until every job finished, the 429s the fake answered, the
requests it saw, and the attempts the jobs used. Without the shared budget the jobs retry
after each 429's retry-after (with attempts enough never to run out of them). Each run takes
about `jobs / rpm` minutes. Uses DATABASE_URL, or the machine's Postgres at 127.0.0.1:5432,
in scratch databases.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

import asyncpg

from bench.common import scratch_database
from service.db.pool import create_pool
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.logs import configure_logging
from tests.fake_anthropic import FakeAnthropic
from tests.pg import DEFAULT_SERVER


async def finished(pool: asyncpg.Pool) -> None:
    """Return once every job has completed or failed."""
    while True:
        left = await pool.fetchval(
            "SELECT count(*) FROM ai_jobs WHERE status NOT IN ('completed', 'failed')"
        )
        if not left:
            return
        await asyncio.sleep(0.5)


async def start_workers(
    dsn: str, fake_url: str, count: int, concurrency: int, shared_limit: bool
) -> list[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "ANTHROPIC_API_KEY": "bench-key",
        "ANTHROPIC_BASE_URL": fake_url,
        "AIJOBS_LOG_LEVEL": "error",
        "AIJOBS_LOG_FORMAT": "json",
        "AIJOBS_POLL_INTERVAL": "0.5",
        "AIJOBS_WORKER_PORT": "off",
        "AIJOBS_CLAUDE_RATE_LIMIT": "on" if shared_limit else "off",
        # Enough attempts that no job fails for want of them, and time enough to wait.
        "AIJOBS_MAX_ATTEMPTS": "1000",
        "AIJOBS_TIMEOUT_AI_MATCH": "3600",
    }
    return [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "worker",
            "--concurrency",
            str(concurrency),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


async def run_once(
    admin_dsn: str, jobs: int, rpm: int, workers: int, concurrency: int, shared_limit: bool
) -> dict[str, Any]:
    async with scratch_database(admin_dsn) as dsn, FakeAnthropic() as fake:
        fake.rate_limit(rpm)
        pool = await create_pool(dsn, 1, 5)
        try:
            entities, store = EntityStore(pool), JobStore(pool)
            requirement = await entities.create_requirement("R-1", "Records", "Keep records")
            mapping_ids = []
            for i in range(jobs):
                doc = await entities.create_document(f"Doc {i}", f"Records are kept ({i}).")
                mapping = await entities.create_mapping(requirement["id"], doc["id"])
                mapping_ids.append(mapping["id"])
            processes = await start_workers(dsn, fake.url, workers, concurrency, shared_limit)
            try:
                started = time.monotonic()
                for mapping_id in mapping_ids:
                    await store.enqueue("ai-match", mapping_id, max_attempts=1000)
                await finished(pool)
                elapsed = time.monotonic() - started
            finally:
                for process in processes:
                    process.terminate()
                for process in processes:
                    await process.wait()
            rows = await pool.fetch("SELECT status, attempts FROM ai_jobs")
        finally:
            await pool.close()
        attempts = [r["attempts"] for r in rows]
        return {
            "shared_limit": shared_limit,
            "jobs": jobs,
            "rpm": rpm,
            "seconds": round(elapsed, 1),
            "jobs_per_minute": round(jobs / elapsed * 60, 1),
            "responses_429": fake.rate_limited,
            "requests": len(fake.requests),
            "completed": sum(1 for r in rows if r["status"] == "completed"),
            "attempts_mean": round(statistics.mean(attempts), 2),
            "attempts_max": max(attempts),
            # Jobs that, with the default of 5 attempts, would have failed instead.
            "over_default_attempts": sum(1 for a in attempts if a > 5),
        }


async def measure(
    admin_dsn: str, jobs: int, rpm: int, workers: int = 3, concurrency: int = 10
) -> list[dict[str, Any]]:
    """Both runs, with the shared budget first."""
    return [
        await run_once(admin_dsn, jobs, rpm, workers, concurrency, shared)
        for shared in (True, False)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    configure_logging("warning", "console")
    dsn = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    results = asyncio.run(measure(dsn, args.jobs, args.rpm, args.workers, args.concurrency))
    for figures in results:
        print(figures, flush=True)
    shared, alone = results
    print(
        f"{args.jobs} ai-match jobs, {args.workers} workers x {args.concurrency}, "
        f"limit {args.rpm} requests/min: shared budget {shared['seconds']} s and "
        f"{shared['responses_429']} 429s; without it {alone['seconds']} s and "
        f"{alone['responses_429']} 429s ({alone['requests']} requests for {args.jobs} jobs)"
    )


if __name__ == "__main__":
    main()
