"""SSE fan-out: the delay from a progress UPDATE's commit to its event at a client, and the
memory of an API process holding many idle event streams.

    python -m bench.sse_fanout [--subscribers 10000] [--updates 200] [--gap-ms 20]

Runs `aijobs api` as a process of its own against a scratch database (DATABASE_URL, or the
machine's Postgres at 127.0.0.1:5432); this process opens the streams and writes the
progress, as a worker would, one UPDATE at a time. The delay is measured at one subscriber,
first alone, then with the idle subscribers connected to other jobs.

The memory per subscriber is the API's RSS growth from opening the idle streams, divided by
their number. Its baseline is taken after the first measured stream has run to its end, so
that what the API sets up once (code paths first run, prepared statements, the hub's
structures) is not charged to the subscribers; the growth from the API's start is reported
beside it (`rss_kb_per_subscriber_from_start`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import signal
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from service.api.auth import mint_token
from service.db.migrations import migrate
from service.db.pool import connect
from service.logs import configure_logging
from service.watch import SseParser
from tests.pg import DEFAULT_SERVER, with_database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _raise_open_files_limit() -> None:
    # Each stream is a socket at both ends; children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(len(ordered) * fraction) - 1)], 2)


# The API must exit within 5 s of SIGTERM with every stream open; past this, the figure is
# not taken rather than waited for.
SHUTDOWN_WITHIN_S = 60.0

BENCH_JWT_SECRET = "bench-secret-long-enough-for-hs256-signing"


async def _stream(
    session: aiohttp.ClientSession, url: str, on_job: Callable[[dict[str, Any]], None]
) -> None:
    """Read one event stream to its end, handing each job event to `on_job`."""
    async with session.get(url) as response:
        assert response.status == 200, response.status
        parser = SseParser()
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                if event.event == "job":
                    on_job(orjson.loads(event.data))


async def _insert_job(conn: asyncpg.Connection, status: str, entity_id: int) -> uuid.UUID:
    job_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO ai_jobs (job_type, entity_id) VALUES ('ai-map-controls', $1) RETURNING id",
        entity_id,
    )
    if status == "processing":
        await conn.execute(
            "UPDATE ai_jobs SET status = 'processing', attempts = 1, locked_by = 'bench',"
            " locked_until = now() + interval '1 hour' WHERE id = $1",
            job_id,
        )
    return job_id


async def _commit_to_event(
    session: aiohttp.ClientSession,
    base: str,
    conn: asyncpg.Connection,
    updates: int,
    gap_ms: float,
) -> tuple[list[float], int]:
    """Milliseconds from each progress UPDATE's commit to its event at a subscriber, and how
    many updates never came as events of their own.

    A stream may skip intermediate progress of a reader that fell behind (the next event
    carries the latest state), so the wait ends with the last update's event, not with an
    event for every update: a skipped one is counted, not waited for.
    """
    job_id = await _insert_job(conn, "processing", entity_id=0)
    received: dict[int, float] = {}
    first = asyncio.Event()
    done = asyncio.Event()

    def on_job(job: dict[str, Any]) -> None:
        first.set()
        progress = job.get("progress")
        # The first event with a step is the step's: the completion that follows the last
        # step carries its progress too.
        if progress and progress.get("current") and progress["current"] not in received:
            received[progress["current"]] = time.perf_counter()
            if progress["current"] == updates:
                done.set()

    reader = asyncio.create_task(_stream(session, f"{base}/api/ai-jobs/{job_id}/events", on_job))
    await asyncio.wait_for(first.wait(), 60)
    committed: dict[int, float] = {}
    for step in range(1, updates + 1):
        await conn.execute(
            "UPDATE ai_jobs SET progress_message = $2, progress_current = $3, progress_total = $4"
            " WHERE id = $1",
            job_id,
            f"Step {step} of {updates}",
            step,
            updates,
        )
        committed[step] = time.perf_counter()
        await asyncio.sleep(gap_ms / 1000)
    await asyncio.wait_for(done.wait(), 60)
    await conn.execute(
        "UPDATE ai_jobs SET status = 'completed', locked_until = NULL, finished_at = now()"
        " WHERE id = $1",
        job_id,
    )
    await asyncio.wait_for(reader, 60)
    delays = [(received[step] - committed[step]) * 1000 for step in committed if step in received]
    return delays, updates - len(delays)


async def _open_idle_streams(
    session: aiohttp.ClientSession, base: str, job_ids: list[uuid.UUID], count: int
) -> list[asyncio.Task[None]]:
    """`count` streams spread over `job_ids`, each past its first event."""
    connecting = asyncio.Semaphore(200)
    opened = 0
    all_open = asyncio.Event()

    async def one(job_id: uuid.UUID) -> None:
        nonlocal opened
        seen = asyncio.Event()
        await connecting.acquire()
        try:
            task = asyncio.create_task(
                _stream(session, f"{base}/api/ai-jobs/{job_id}/events", lambda _j: seen.set())
            )
            await asyncio.wait_for(seen.wait(), 120)
        finally:
            connecting.release()
        opened += 1
        if opened == count:
            all_open.set()
        await task

    tasks = [asyncio.create_task(one(job_ids[i % len(job_ids)])) for i in range(count)]
    await asyncio.wait_for(all_open.wait(), 600)
    return tasks


async def _wait_until_answering(session: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(f"{base}/api/ai-jobs?limit=1") as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        await asyncio.sleep(0.1)


async def measure(
    admin_dsn: str,
    subscribers: int = 10_000,
    updates: int = 200,
    gap_ms: float = 20,
    idle_jobs: int = 100,
) -> dict[str, Any]:
    _raise_open_files_limit()
    name = f"aijobs_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(admin_dsn, name)
    api: asyncio.subprocess.Process | None = None
    try:
        conn = await connect(dsn)
        await migrate(conn)
        port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "AIJOBS_LOG_LEVEL": "warning",
            "AIJOBS_JWT_SECRET": BENCH_JWT_SECRET,
            # Every subscriber here is the same user.
            "AIJOBS_SSE_STREAMS_PER_USER": "0",
        }
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "api", "--port", str(port), env=env
        )
        base = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        token = mint_token(BENCH_JWT_SECRET, "bench", role="service_role")
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers
        ) as session:
            await _wait_until_answering(session, base)
            rss_start = _rss_kb(api.pid)
            alone, alone_missed = await _commit_to_event(session, base, conn, updates, gap_ms)

            job_ids = [await _insert_job(conn, "pending", n) for n in range(1, idle_jobs + 1)]
            rss_before = _rss_kb(api.pid)
            idle = await _open_idle_streams(session, base, job_ids, subscribers)
            rss_with = _rss_kb(api.pid)
            crowded, missed = await _commit_to_event(session, base, conn, updates, gap_ms)

            # SIGTERM: the API drains the streams and exits.
            stopping = time.perf_counter()
            api.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(api.wait(), SHUTDOWN_WITHIN_S)
            except TimeoutError:
                raise RuntimeError(
                    f"the API did not exit within {SHUTDOWN_WITHIN_S:g} s of SIGTERM"
                ) from None
            shutdown_s = time.perf_counter() - stopping
            await asyncio.wait_for(asyncio.gather(*idle, return_exceptions=True), 60)
        await conn.close()
        return {
            "subscribers": subscribers,
            "updates": updates,
            "alone_p50_ms": round(statistics.median(alone), 2),
            "alone_p99_ms": _percentile(alone, 0.99),
            "p50_ms": round(statistics.median(crowded), 2),
            "p99_ms": _percentile(crowded, 0.99),
            "max_ms": round(max(crowded), 2),
            "missed": alone_missed + missed,
            "rss_mb_start": round(rss_start / 1024, 1),
            "rss_mb_before": round(rss_before / 1024, 1),
            "rss_mb": round(rss_with / 1024, 1),
            "rss_kb_per_subscriber": round((rss_with - rss_before) / subscribers, 1),
            "rss_kb_per_subscriber_from_start": round((rss_with - rss_start) / subscribers, 1),
            "shutdown_s": round(shutdown_s, 2),
        }
    finally:
        if api is not None and api.returncode is None:
            api.kill()
            await api.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20)
    parser.add_argument("--idle-jobs", type=int, default=100)
    args = parser.parse_args()
    configure_logging("warning", "console")
    dsn = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    print(asyncio.run(measure(dsn, args.subscribers, args.updates, args.gap_ms, args.idle_jobs)))


if __name__ == "__main__":
    main()
