"""Slow-model concurrency: real ai-match jobs whose model call takes seconds, one worker.

    python -m bench.slow_model [--scale full|tiny] [--jobs 2000] [--delay 2.0]
                               [--concurrency 500] [--pool-max 20] [--workers 1] [--cold]
                               [--processes 1] [--profile OUT]

Starts the fake Anthropic server (`python -m tests.fake_anthropic --delay D`) and one
`python -m service worker --concurrency C` against a scratch database holding 1 requirement,
N documents and N mappings. Once the worker has registered itself, it runs one job first,
which teaches the shared rate limit budget the fake's limits (as in any database where a
worker has answered before; `--cold` skips it, and the first wave then waits for the first
answer at the lowest tier's 50 requests a minute, see docs/claude.md). Then one INSERT ...
SELECT records the N jobs; the clock runs from that commit to the last job completed. Ideal: every
slot busy with a model call all the time, ceil(N / C) waves of D seconds (250 jobs/s at 500
slots and 2 s). Reports the throughput as a share of that, the worker's peak RSS (VmHWM),
and per job over the measured span: the worker's CPU, the CPU of the Postgres backends
serving the scratch database, the fake server's CPU, and the transactions
committed in the scratch database. `--profile OUT` attaches py-spy to the worker for the
measured span and writes its collapsed stacks (`--format raw`) to OUT (the first worker's,
with `--workers N`, which splits the concurrency among N processes; RSS is then the largest
worker's and CPU the sum).

`--deltas on|off|both` (both by default): the model calls stream and their text goes to event
stream followers as it is written (AIJOBS_STREAM_DELTAS), or they answer whole; `both` runs
off then on, side by side. Either way the fake writes each reply over D seconds (`--pace`:
the call takes as long streamed as whole), an API process runs beside the worker, and
FOLLOWERS event streams follow jobs spread over the run. With deltas on, the fake's rationale
is STAMP_WORDS words, each the wall-clock time it left the fake, so that each follower
measures the delay from a token leaving the fake to its delta reaching it (tokens written
before the follower connected are not counted); and a LISTEN of this process counts the
worker's notifications on the text channel per second (each send of the worker is one
statement of one or more of them); the workers' /metrics count the statements
(`text_sends_per_s`) and the notifications they sent.

`--sdk-only` measures the ceiling the Anthropic SDK itself sets on one process: the same
model calls (ClaudeAnalyzer.match, on the same client and event loop as a worker), C at once
against the same fake, with no queue, database or budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.common import (
    Child,
    admin_dsn,
    commits,
    cpu_seconds,
    free_port,
    percentile,
    port_answers,
    proc_status_kb,
    python,
    report,
    scratch_database,
    wait_until,
)
from service.jobs.text import TEXT_CHANNEL
from service.watch import SseParser

FULL = {"jobs": 2000, "delay_s": 2.0, "concurrency": 500, "pool_max": 20}
TINY = {"jobs": 40, "delay_s": 0.2, "concurrency": 20, "pool_max": 5}
FOLLOWERS = 50
STAMP_WORDS = 12
BENCH_JWT_SECRET = "bench-secret-long-enough-for-hs256-signing"
_STAMP = re.compile(r"T([0-9 ]{6,}\.[0-9]{6})")

_ENTITIES = """
WITH r AS (
  INSERT INTO requirements (code, title, description)
  VALUES ('A.5.15', 'Access control',
          'Rules to control physical and logical access to information shall be established.')
  RETURNING id
), d AS (
  INSERT INTO documents (title, content)
  SELECT 'Access policy ' || g,
         'Access to production systems is granted on least privilege and reviewed quarterly. '
         || 'Multi-factor authentication is required for all remote access. Version ' || g
  FROM generate_series(1, $1) g
  RETURNING id
)
INSERT INTO requirement_mappings (requirement_id, document_id)
SELECT r.id, d.id FROM r, d
"""
_WARM_UP = """
INSERT INTO ai_jobs (job_type, entity_id)
SELECT 'ai-match', id FROM requirement_mappings ORDER BY id LIMIT 1
RETURNING id
"""
_ENQUEUE_ALL = """
INSERT INTO ai_jobs (job_type, entity_id) SELECT 'ai-match', id FROM requirement_mappings
"""
# Where a job's time went: claim to its first progress write (the mapping read, the wait for
# a pooled connection), then to completion (the model call, its budget and accounting, the
# completion's transaction).
_PHASES = """
WITH p AS (
  SELECT j.id, j.started_at, j.finished_at, min(e.created_at) AS progressed_at
  FROM ai_jobs j JOIN ai_job_events e ON e.job_id = j.id AND e.progress_message LIKE 'Analyzing%'
  GROUP BY j.id
)
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM progressed_at - started_at))
         AS to_progress_p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM progressed_at - started_at))
         AS to_progress_p90,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - progressed_at))
         AS to_finish_p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - progressed_at))
         AS to_finish_p90
FROM p
"""
_FINISHED = """
SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM ai_jobs
"""


async def _backends_cpu(conn: asyncpg.Connection, database: str) -> dict[int, float]:
    """CPU seconds so far of each Postgres backend connected to `database`, this one's
    excepted: the database's share of Postgres' work, without other users' (the shared
    WAL writer and checkpointer are not counted)."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    cpu: dict[int, float] = {}
    for row in pids:
        with contextlib.suppress(OSError):
            cpu[row["pid"]] = cpu_seconds(row["pid"])
    return cpu


async def _warm_up(conn: asyncpg.Connection) -> None:
    """One job through the worker, then out of the way: the budget has learned the limits."""
    job_id = await conn.fetchval(_WARM_UP)

    async def done() -> bool:
        status = await conn.fetchval("SELECT status FROM ai_jobs WHERE id = $1", job_id)
        if status == "failed":
            raise RuntimeError("the warm-up job failed")
        return bool(status == "completed")

    await wait_until(done, 60, 0.02, "the warm-up job")
    await conn.execute("DELETE FROM ai_jobs WHERE id = $1", job_id)


async def _wait_for_port(port: int, within: float) -> None:
    await wait_until(lambda: port_answers(port), within, 0.05, f"port {port}")


async def measure(
    server_dsn: str,
    jobs: int = 2000,
    delay_s: float = 2.0,
    concurrency: int = 500,
    pool_max: int = 20,
    profile: str | None = None,
    cold: bool = False,
    workers: int = 1,
    deltas: bool = True,
    followers: int = FOLLOWERS,
    processes: int = 1,
) -> dict[str, Any]:
    """`workers`: separate `aijobs worker` processes sharing the concurrency; `processes`:
    one `aijobs worker --processes N` (a supervisor) whose N children share it."""
    async with scratch_database(server_dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        fake: asyncio.subprocess.Process | None = None
        children: list[Child] = []
        api: Child | None = None
        listener: asyncpg.Connection | None = None
        following: list[asyncio.Task[None]] = []
        session: aiohttp.ClientSession | None = None
        ok = False
        try:
            await conn.execute(_ENTITIES, jobs)
            port = free_port()
            fake = await start_fake(port, delay_s, STAMP_WORDS if deltas else 0)
            await _wait_for_port(port, 30)
            env = {
                "DATABASE_URL": dsn,
                "ANTHROPIC_API_KEY": "x",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
                "AIJOBS_WORKER_PORT": "off",
                "AIJOBS_POOL_MAX_SIZE": str(pool_max),
                "AIJOBS_LOG_FORMAT": "json",
                "AIJOBS_STREAM_DELTAS": "on" if deltas else "off",
            }
            api_port = free_port()
            api = await Child.start(
                [python(), "-m", "service", "api", "--port", str(api_port)],
                env={
                    **env,
                    "AIJOBS_POOL_MAX_SIZE": "5",
                    "AIJOBS_JWT_SECRET": BENCH_JWT_SECRET,
                    "AIJOBS_SSE_STREAMS_PER_USER": "0",
                },
                label="slow-model-api",
                reports=False,
            )
            # The slots split evenly among the worker processes, the first taking the rest.
            shares = [concurrency // workers] * workers
            shares[0] += concurrency - sum(shares)
            # Each worker's /metrics, for what it sent of the text (a supervisor's children
            # serve theirs on the port given plus their index).
            supervised = ["--processes", str(processes)] if processes > 1 else []
            metrics_ports: list[int] = []
            for share in shares:
                metrics_port = free_port()
                metrics_ports += [metrics_port + i for i in range(processes)]
                command = [python(), "-m", "service", "worker"]
                command += ["--concurrency", str(share // processes), *supervised]
                children.append(
                    await Child.start(
                        command,
                        env={**env, "AIJOBS_WORKER_PORT": str(metrics_port)},
                        label="slow-model-worker",
                        reports=False,
                    )
                )

            async def registered() -> bool:
                for child in children:
                    if child.proc.returncode is not None:
                        raise RuntimeError(f"a worker exited\n{child.log_tail()}")
                count = await conn.fetchval("SELECT count(*) FROM ai_worker_registry")
                return bool(count == len(children) * processes)

            await wait_until(registered, 60, 0.05, "worker registration")
            # The processes that run jobs: the workers, or a supervisor's children.
            pids = [int(r["pid"]) for r in await conn.fetch("SELECT pid FROM ai_worker_registry")]
            await _wait_for_port(api_port, 60)
            for metrics_port in metrics_ports:  # a worker serves /metrics once it has started
                await _wait_for_port(metrics_port, 60)
            if not cold:
                await _warm_up(conn)
            notified: list[float] = []
            listener = await asyncpg.connect(dsn)
            await listener.add_listener(TEXT_CHANNEL, lambda *_: notified.append(time.monotonic()))
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"Authorization": f"Bearer {_token()}"},
            )
            await asyncio.sleep(0.5)
            spy: asyncio.subprocess.Process | None = None
            if profile is not None:
                spy = await _py_spy(pids[0], profile)
            database = str(await conn.fetchval("SELECT current_database()"))
            commits_before = await commits(conn, database)
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            pg_cpu_before = await _backends_cpu(conn, database)
            fake_cpu_before = cpu_seconds(fake.pid)
            sent_before = await _text_sent(session, metrics_ports)
            await conn.execute(_ENQUEUE_ALL)
            start = time.monotonic()
            delays: list[float] = []
            follower_deltas = [0]
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM ai_jobs ORDER BY id")]
            step = max(len(ids) // max(followers, 1), 1)
            base = f"http://127.0.0.1:{api_port}"
            following = [
                asyncio.create_task(_follow(session, base, job_id, delays, follower_deltas))
                for job_id in ids[::step][:followers]
            ]
            finished: dict[str, int] = {}

            async def all_finished() -> bool:
                row = await conn.fetchrow(_FINISHED)
                assert row is not None
                finished.update(row)
                return int(row["completed"]) + int(row["failed"]) >= jobs

            ideal_s = math.ceil(jobs / concurrency) * delay_s
            await wait_until(all_finished, ideal_s * 10 + 60, 0.02, "all jobs finished")
            elapsed = time.monotonic() - start
            end = start + elapsed
            sent = await _text_sent(session, metrics_ports)
            sends = sent[0] - sent_before[0]
            payloads = sent[1] - sent_before[1]
            await asyncio.wait(following, timeout=10)
            notifications = [t for t in notified if start <= t <= end]
            per_second = Counter(int(t - start) for t in notifications)
            api_cpu = cpu_seconds(api.pid)
            peak_kb = max(proc_status_kb(pid, "VmHWM") for pid in pids)
            rss_kb = max(proc_status_kb(pid, "VmRSS") for pid in pids)
            worker_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            pg_cpu_after = await _backends_cpu(conn, database)
            pg_cpu = sum(cpu - pg_cpu_before.get(pid, 0.0) for pid, cpu in pg_cpu_after.items())
            fake_cpu = cpu_seconds(fake.pid) - fake_cpu_before
            committed = await commits(conn, database) - commits_before
            phases = dict(await conn.fetchrow(_PHASES) or {})
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                await spy.wait()
            ok = finished["failed"] == 0
        finally:
            for task in following:
                task.cancel()
            if session is not None:
                await session.close()
            if listener is not None:
                await listener.close()
            if api is not None:
                await api.stop(keep_log=not ok)
            for child in children:
                await child.stop(keep_log=not ok)
            if fake is not None and fake.returncode is None:
                fake.terminate()
                await fake.wait()
            await conn.close()
    throughput = jobs / elapsed
    return {
        "jobs": jobs,
        "delay_s": delay_s,
        "concurrency": concurrency,
        "pool_max": pool_max,
        "workers": workers,
        "processes": processes,
        "cold": cold,
        "completed": finished["completed"],
        "failed": finished["failed"],
        "elapsed_s": round(elapsed, 3),
        "ideal_s": ideal_s,
        "jobs_per_s": round(throughput, 1),
        "ideal_jobs_per_s": round(jobs / ideal_s, 1),
        "share_of_ideal_pct": round(100 * ideal_s / elapsed, 1),
        "worker_peak_rss_mb": round(peak_kb / 1024, 1),
        "worker_rss_mb": round(rss_kb / 1024, 1),
        "worker_cpu_s": round(worker_cpu, 2),
        "worker_cpu_ms_per_job": round(1000 * worker_cpu / jobs, 2),
        "postgres_cpu_ms_per_job": round(1000 * pg_cpu / jobs, 2),
        "fake_cpu_ms_per_job": round(1000 * fake_cpu / jobs, 2),
        "commits_per_job": round(committed / jobs, 2),
        **{f"{k}_s": round(v, 3) for k, v in phases.items() if v is not None},
        "deltas": deltas,
        "followers": followers,
        "follower_deltas": follower_deltas[0],
        "text_sends_per_s": round(sends / elapsed, 1),
        "text_notifications_per_s": round(payloads / elapsed, 1),
        "text_notifications_heard_per_s": round(len(notifications) / elapsed, 1),
        "text_notifications_max_in_1_s": max(per_second.values(), default=0),
        "token_to_sse_p50_ms": round(1000 * percentile(delays, 0.5), 1) if delays else None,
        "token_to_sse_p99_ms": round(1000 * percentile(delays, 0.99), 1) if delays else None,
        "token_to_sse_samples": len(delays),
        "api_cpu_s": round(api_cpu, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def _text_sent(session: aiohttp.ClientSession, ports: list[int]) -> tuple[float, float]:
    """The text statements and notifications the workers have sent so far, from /metrics."""
    sends = payloads = 0.0
    for port in ports:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            body = await response.text()
        for line in body.splitlines():
            name, _, value = line.partition(" ")
            if name == "aijobs_text_sends_total":
                sends += float(value)
            elif name == "aijobs_text_notifications_total":
                payloads += float(value)
    return sends, payloads


def _token() -> str:
    from service.api.auth import mint_token

    return mint_token(BENCH_JWT_SECRET, "bench", role="service_role")


async def _follow(
    session: aiohttp.ClientSession,
    base: str,
    job_id: object,
    delays: list[float],
    count: list[int],
) -> None:
    """Follow a job's event stream to its end; the delay of each stamped token that left the
    fake after the stream opened, from the fake to here."""
    opened = time.time()
    async with session.get(f"{base}/api/ai-jobs/{job_id}/events") as response:
        if response.status != 200:
            return
        parser = SseParser()
        async for chunk in response.content.iter_any():
            now = time.time()
            for event in parser.feed(chunk):
                if event.event != "delta":
                    continue
                count[0] += 1
                for stamp in _STAMP.findall(orjson.loads(event.data)["text"]):
                    sent = float(stamp)
                    if sent >= opened:
                        delays.append(now - sent)


async def start_fake(port: int, delay_s: float, stamp_words: int = 0) -> asyncio.subprocess.Process:
    """The fake Anthropic server in a process of its own, answering in `delay_s` (a streamed
    reply written over that time)."""
    return await asyncio.create_subprocess_exec(
        python(),
        "-m",
        "tests.fake_anthropic",
        "--port",
        str(port),
        "--delay",
        str(delay_s),
        "--pace",
        "--stamp-words",
        str(stamp_words),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def measure_sdk_only(
    jobs: int = 2000, delay_s: float = 2.0, concurrency: int = 500
) -> dict[str, Any]:
    """The model calls alone, in a process of their own: see the module's docstring."""
    port = free_port()
    fake = await start_fake(port, delay_s)
    client: Child | None = None
    try:
        await _wait_for_port(port, 30)
        fake_cpu_before = cpu_seconds(fake.pid)
        client = await Child.start(
            [
                python(),
                "-m",
                "bench.slow_model",
                "--sdk-client",
                f"http://127.0.0.1:{port}",
                "--jobs",
                str(jobs),
                "--concurrency",
                str(concurrency),
            ],
            label="slow-model-sdk",
        )
        result = await client.expect("result", within=math.ceil(jobs / concurrency) * delay_s * 10)
        fake_cpu = cpu_seconds(fake.pid) - fake_cpu_before
    finally:
        if client is not None:
            await client.stop()
        if fake.returncode is None:
            fake.terminate()
            await fake.wait()
    ideal_s = math.ceil(jobs / concurrency) * delay_s
    elapsed = float(result["elapsed_s"])
    return {
        "sdk_only": True,
        "jobs": jobs,
        "delay_s": delay_s,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "ideal_s": ideal_s,
        "jobs_per_s": round(jobs / elapsed, 1),
        "share_of_ideal_pct": round(100 * ideal_s / elapsed, 1),
        "client_cpu_ms_per_call": round(1000 * float(result["cpu_s"]) / jobs, 2),
        "fake_cpu_ms_per_call": round(1000 * fake_cpu / jobs, 2),
    }


async def _sdk_client(url: str, jobs: int, concurrency: int) -> None:
    """The child of measure_sdk_only: `concurrency` slots making `jobs` calls in all."""
    from service.ai.analyzer import MATCH, DocumentText, NoMeter, RequirementText
    from service.ai.claude import CallConfig, ClaudeAnalyzer, create_client

    client = create_client("x", url, 60.0)
    config = CallConfig("claude-sonnet-5-5", 2048)
    analyzer = ClaudeAnalyzer(client, {MATCH: config})
    requirement = RequirementText(1, "A.5.15", "Access control", "Rules shall be established.")
    document = DocumentText(1, "Access policy", "Access is granted on least privilege.")

    async def slot(calls: int) -> None:
        for _ in range(calls):
            await analyzer.match(requirement, document, NoMeter())

    await slot(1)  # the platform lookup and the first connection, before the clock
    shares = [
        jobs // concurrency + (1 if i < jobs % concurrency else 0) for i in range(concurrency)
    ]
    cpu_before = cpu_seconds(os.getpid())
    started = time.monotonic()
    await asyncio.gather(*(slot(n) for n in shares))
    elapsed = time.monotonic() - started
    report("result", elapsed_s=elapsed, cpu_s=cpu_seconds(os.getpid()) - cpu_before)
    await client.close()


async def _py_spy(pid: int, out: str) -> asyncio.subprocess.Process:
    """py-spy recording the worker's on-CPU stacks until SIGINT."""
    tool = Path(sys.executable).parent / "py-spy"
    spy = await asyncio.create_subprocess_exec(
        str(tool) if tool.exists() else "py-spy",
        "record",
        "-p",
        str(pid),
        "--rate",
        "200",
        "--format",
        "raw",
        "-o",
        out,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    # py-spy needs a moment to attach before the measured span starts.
    await asyncio.sleep(1.0)
    return spy


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_model")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--pool-max", type=int, default=0)
    parser.add_argument("--profile", default=None, help="py-spy's collapsed stacks to this file")
    parser.add_argument(
        "--cold", action="store_true", help="no warm-up job: the budget learns during the run"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the concurrency (each with its own pool of --pool-max)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="one `aijobs worker --processes N` whose N children share the concurrency",
    )
    parser.add_argument(
        "--sdk-only", action="store_true", help="the model calls alone: the SDK's ceiling"
    )
    parser.add_argument("--sdk-client", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--deltas", choices=("on", "off", "both"), default="both", help="AIJOBS_STREAM_DELTAS"
    )
    parser.add_argument("--followers", type=int, default=FOLLOWERS, help="event streams")
    args = parser.parse_args()
    preset = TINY if args.scale == "tiny" else FULL
    jobs = args.jobs or int(preset["jobs"])
    concurrency = args.concurrency or int(preset["concurrency"])
    if args.sdk_client is not None:
        # The loop a worker runs on: uvloop where installed (see service/cli.py).
        try:
            import uvloop
        except ImportError:
            factory = None
        else:
            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_sdk_client(args.sdk_client, jobs, concurrency))
        return
    if args.sdk_only:
        delay_s = args.delay or float(preset["delay_s"])
        print(json.dumps(asyncio.run(measure_sdk_only(jobs, delay_s, concurrency))))
        return
    for deltas in {"on": (True,), "off": (False,), "both": (False, True)}[args.deltas]:
        result = asyncio.run(
            measure(
                admin_dsn(),
                jobs=args.jobs or int(preset["jobs"]),
                delay_s=args.delay or float(preset["delay_s"]),
                concurrency=args.concurrency or int(preset["concurrency"]),
                pool_max=args.pool_max or int(preset["pool_max"]),
                profile=args.profile,
                cold=args.cold,
                workers=args.workers,
                deltas=deltas,
                followers=args.followers,
                processes=args.processes,
            )
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
