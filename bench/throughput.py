"""No-op throughput: N jobs enqueued in batches, then drained by one worker process.

    python -m bench.throughput [--system aijobs|pgqueuer|floor] [--concurrency 10]
                               [--scale full|tiny] [--jobs N]

The clock runs from the worker process starting to consume (after its imports and
connections) to the moment the database shows the last job finished (committed). The enqueuer
is this process; the worker is another (bench/worker_proc.py). Each run uses a scratch
database of its own on DATABASE_URL (or the machine's Postgres at 127.0.0.1:5432).

Besides jobs/s, a run reports what it cost: the worker's CPU seconds, the CPU seconds of every
Postgres process on the machine (other users' included) and the commits per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

import asyncpg

from bench import queues, worker_proc
from bench.common import (
    Child,
    admin_dsn,
    commits,
    cpu_seconds,
    postgres_cpu_seconds,
    scratch_database,
    wait_until,
)

FULL_JOBS = 20_000
TINY_JOBS = 200
ENQUEUE_BATCH = 1_000


def jobs_for(scale: str) -> int:
    return TINY_JOBS if scale == "tiny" else FULL_JOBS


async def measure(
    server_dsn: str,
    system: str = "aijobs",
    jobs: int = FULL_JOBS,
    concurrency: int = 10,
    *,
    batch: int = ENQUEUE_BATCH,
    profile: list[str] | None = None,
    timeout_s: float = 600.0,
    synchronous_commit: str | None = None,
    fair_share: str | None = None,
) -> dict[str, Any]:
    """One drain. `profile`: a profiler command (`py-spy record ... -o FILE`) to attach to the
    worker with `--pid` once it starts consuming, and to stop (SIGINT) when it is drained."""
    async with scratch_database(server_dsn, aijobs_schema=system == "aijobs") as dsn:
        await queues.install(system, dsn)
        await queues.enqueue_batches(system, dsn, jobs, batch)
        database = dsn.rsplit("/", 1)[1]
        conn = await asyncpg.connect(dsn)
        child: Child | None = None
        try:
            await conn.execute("VACUUM ANALYZE")
            commits_before = await commits(conn, database)
            options = (
                [] if synchronous_commit is None else ["--synchronous-commit", synchronous_commit]
            )
            if fair_share is not None:
                options += ["--fair-share", fair_share]
            argv = worker_proc.command(system, dsn, concurrency, jobs, *options)
            child = await Child.start(argv, label=f"throughput-{system}")
            ready = await child.expect("ready", within=60)
            worker_pid: int = ready["pid"]
            pg_cpu_before = postgres_cpu_seconds()
            start = await child.expect("start", within=60)
            if profile:
                profiler = await asyncio.create_subprocess_exec(
                    *profile, "--pid", str(worker_pid), stdout=asyncio.subprocess.DEVNULL
                )
            await child.expect("ran", within=timeout_s)

            async def drained() -> bool:
                return await queues.remaining(system, conn) == 0

            await wait_until(drained, within=60, interval=0.002, what="the last commits")
            end = time.monotonic()
            pg_cpu = postgres_cpu_seconds() - pg_cpu_before
            worker_cpu = cpu_seconds(worker_pid) - start["cpu"]
            if profile:
                # py-spy writes its output when interrupted.
                profiler.send_signal(signal.SIGINT)
                await asyncio.wait_for(profiler.wait(), 120)
            await child.stop()
            child = None
            # Backends report their counts when they exit: the worker's have now.
            await asyncio.sleep(0.7)
            committed = await commits(conn, database) - commits_before
        finally:
            if child is not None:
                await child.stop(keep_log=True)
            await conn.close()
    elapsed = end - start["t"]
    return {
        "system": system,
        "synchronous_commit": synchronous_commit,
        "fair_share": fair_share,
        "jobs": jobs,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed, 1),
        "worker_cpu_s": round(worker_cpu, 2),
        "postgres_cpu_s": round(pg_cpu, 2),
        "commits_per_job": round(committed / jobs, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput")
    parser.add_argument("--system", choices=queues.SYSTEMS, default="aijobs")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--jobs", type=int, default=0, help="overrides the scale's job count")
    parser.add_argument(
        "--synchronous-commit", choices=("on", "off"), help="aijobs' worker synchronous_commit"
    )
    parser.add_argument("--fair-share", choices=("on", "off"), help="aijobs' AIJOBS_FAIR_SHARE")
    args = parser.parse_args()
    jobs = args.jobs or jobs_for(args.scale)
    result = asyncio.run(
        measure(
            admin_dsn(),
            args.system,
            jobs,
            args.concurrency,
            synchronous_commit=args.synchronous_commit,
            fair_share=args.fair_share,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
