"""Cost as the table grows: the queue's figures with a million finished jobs in its tables,
as a ratio to the same figures on empty tables, the tables' sizes, and the retention prune.

    python -m bench.scale [--scale full|tiny] [--runs 3]

Two scratch databases side by side: one empty, one loaded with 1,000,000 finished jobs (95%
completed, 5% failed, from 1,000 users, finished over the last week: inside the default
retention of jobs, 30 days, and of their events, 7 days) with three events each, and 100,000
pending jobs scheduled over the next day (retries in backoff and snoozed jobs: they sit in
the pending indexes without being due). In each, interleaved, every run takes:

- no-op throughput: 20,000 jobs of 100 users enqueued, one worker process at concurrency 50
  drains them (bench/worker_proc.py, the real Worker), from its start to the last completion;
- pickup latency: as bench/pickup_latency.py, 200 dispatches 20 ms apart to an idle worker;
- GET /api/ai-jobs/{id} p50: `aijobs api`, one client, each request the job of its owner
  (a bearer token of that user, so that row level security is in force), sequentially.

Then, in the loaded database, the project's retention pruner (service/jobs/retention.py, a
batch of 1,000 per transaction) deletes the million finished jobs (their events go with them)
while drains like the above run back to back: its duration and their throughput.

The load goes in with INSERT ... SELECT from generate_series: each job in its final state,
and its events (created, claimed, finished) written by the same statement pattern the event
trigger uses, with that trigger off for the load only, so that a million-row insert does not
send 10,000 NOTIFYs; the insert trigger's one NOTIFY per statement stays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from bench import pickup_latency, worker_proc
from bench.common import (
    Child,
    admin_dsn,
    free_port,
    percentile,
    python,
    scratch_database,
    wait_until,
)
from service.api.auth import mint_token
from service.config import Settings
from service.db.pool import connect
from service.jobs.retention import Pruner
from service.jobs.store import JobStore
from service.jobs.store import Q as JOB_QUERIES
from service.runtime import create_worker_pool


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Preset:
    finished: int
    pending: int
    drain_jobs: int
    concurrency: int
    pickups: int
    gap_ms: float
    gets: int


FULL = Preset(1_000_000, 100_000, 20_000, 50, 200, 20.0, 2_000)
TINY = Preset(2_000, 200, 200, 10, 10, 5.0, 50)

DRAIN_OWNERS = 100
LOADED_OWNERS = 1_000
JWT_SECRET = "bench-secret-long-enough-for-hs256-signing"
# The loaded jobs finished between this long ago and a week ago; the prune keeps younger ones.
PRUNE_RETENTION_S = 1800.0

# Finished jobs, each in its final state. finished_at runs back from an hour ago, 0.5 s apart
# at the full size: 1,000,000 jobs span 5.8 days.
_LOAD_FINISHED = """
INSERT INTO ai_jobs (job_type, entity_id, status, progress_message, result, error_message,
                     attempts, locked_by, started_at, finished_at, created_by, created_at,
                     updated_at)
SELECT (ARRAY['ai-match', 'ai-coverage', 'ai-map-controls'])[1 + g % 3],
       1000000 + g,
       CASE WHEN g % 20 = 0 THEN 'failed' ELSE 'completed' END,
       CASE WHEN g % 20 = 0 THEN 'Failed' ELSE 'Done' END,
       CASE WHEN g % 20 = 0 THEN NULL ELSE jsonb_build_object(
         'confidence', (g % 100) / 100.0,
         'reasoning', 'The document covers the requirement in its section ' || g % 37
                      || '; evidence is quoted and the gaps are listed below.',
         'gaps', jsonb_build_array('retention period', 'review cadence')) END,
       CASE WHEN g % 20 = 0 THEN 'The model answered with no tool call' END,
       1,
       'bench-worker',
       f.at - interval '3 s',
       f.at,
       'user-' || g % $2,
       f.at - interval '4 s',
       f.at
FROM generate_series(1, $1::bigint) AS g
CROSS JOIN LATERAL (
  SELECT now() - interval '1 hour' - g * (interval '6 days' / greatest($1, 1)) AS at
) AS f
"""

# Their events: created, claimed, finished, as the event trigger would have written them;
# in job order, which fills the (job_id, id) index in order: several times faster.
_LOAD_FINISHED_EVENTS = """
INSERT INTO ai_job_events (job_id, status, progress_message, created_at)
SELECT j.id, e.status, e.message, e.at
FROM ai_jobs AS j
CROSS JOIN LATERAL (VALUES
  ('pending', NULL, j.created_at),
  ('processing', 'Starting...', j.started_at),
  (j.status, j.progress_message, j.finished_at)
) AS e (status, message, at)
WHERE j.status IN ('completed', 'failed')
ORDER BY j.id, e.at
"""

_LOAD_SCHEDULED = """
INSERT INTO ai_jobs (job_type, entity_id, created_by, run_after)
SELECT 'ai-match', 5000000 + g, 'user-' || g % $2,
       now() + interval '1 hour' + g * (interval '1 day' / greatest($1, 1))
FROM generate_series(1, $1::bigint) AS g
"""

_LOAD_SCHEDULED_EVENTS = """
INSERT INTO ai_job_events (job_id, status, progress_message, created_at)
SELECT id, status, progress_message, created_at FROM ai_jobs WHERE status = 'pending'
"""

# The drain's jobs: one each for entities 1..N, from DRAIN_OWNERS users.
_ENQUEUE = """
INSERT INTO ai_jobs (job_type, entity_id, created_by)
SELECT 'ai-match', g, 'user-' || g % $3 FROM generate_series($1::bigint, $2::bigint) AS g
"""

_RUNNING = "SELECT count(*) FROM ai_jobs WHERE status = 'processing'"

_SIZES = """
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS total,
       pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
       (SELECT count(*) FROM pg_index AS i WHERE i.indrelid = c.oid) AS index_count
FROM pg_class AS c
WHERE c.relname IN ('ai_jobs', 'ai_job_events') AND c.relkind = 'r'
ORDER BY 1
"""

_INDEX_SIZES = """
SELECT i.indexrelid::regclass::text AS name, t.relname AS "table",
       pg_relation_size(i.indexrelid) AS bytes, pg_get_expr(i.indpred, i.indrelid) AS predicate
FROM pg_index AS i JOIN pg_class AS t ON t.oid = i.indrelid
WHERE t.relname IN ('ai_jobs', 'ai_job_events')
ORDER BY pg_relation_size(i.indexrelid) DESC
"""


async def load(dsn: str, finished: int, pending: int) -> float:
    """The finished jobs and their events, and the scheduled ones; returns the seconds taken."""
    started = time.monotonic()
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE ai_jobs DISABLE TRIGGER ai_job_events_on_insert")
            await conn.execute(_LOAD_FINISHED, finished, LOADED_OWNERS)
            await conn.execute(_LOAD_FINISHED_EVENTS)
            await conn.execute(_LOAD_SCHEDULED, pending, DRAIN_OWNERS)
            await conn.execute(_LOAD_SCHEDULED_EVENTS)
            await conn.execute("ALTER TABLE ai_jobs ENABLE TRIGGER ai_job_events_on_insert")
        await conn.execute("VACUUM ANALYZE ai_jobs")
        await conn.execute("VACUUM ANALYZE ai_job_events")
    finally:
        await conn.close()
    return time.monotonic() - started


_VACUUMS = """
SELECT relname AS name, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count
FROM pg_stat_user_tables WHERE relname IN ('ai_jobs', 'ai_job_events') ORDER BY 1
"""


async def vacuums(dsn: str) -> list[dict[str, Any]]:
    """What autovacuum did to the tables so far, and the dead rows left."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return [dict(r) for r in await conn.fetch(_VACUUMS)]
    finally:
        await conn.close()


async def sizes(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [dict(r) for r in await conn.fetch(_SIZES)]
        indexes = [dict(r) for r in await conn.fetch(_INDEX_SIZES)]
        rows = {
            "ai_jobs": await conn.fetchval("SELECT count(*) FROM ai_jobs"),
            "ai_job_events": await conn.fetchval("SELECT count(*) FROM ai_job_events"),
        }
    finally:
        await conn.close()
    return {"tables": tables, "indexes": indexes, "rows": rows}


# -- the figures ---------------------------------------------------------------------------


async def drain(dsn: str, jobs: int, concurrency: int) -> dict[str, Any]:
    """`jobs` no-op jobs enqueued, then drained by one worker process: jobs/s."""
    conn = await connect(dsn)
    child: Child | None = None
    try:
        for first in range(1, jobs + 1, 1_000):
            await conn.execute(_ENQUEUE, first, min(first + 999, jobs), DRAIN_OWNERS)
        await conn.execute("ANALYZE ai_jobs")
        child = await Child.start(
            worker_proc.command("aijobs", dsn, concurrency, jobs), label="scale-drain"
        )
        start = await child.expect("start", within=60)
        await child.expect("ran", within=600)

        async def finished() -> bool:
            return await conn.fetchval(_RUNNING) == 0

        await wait_until(finished, within=60, interval=0.002, what="the last completions")
        end = time.monotonic()
        await child.stop()
        child = None
    finally:
        if child is not None:
            await child.stop(keep_log=True)
        await conn.close()
    elapsed = end - start["t"]
    return {"jobs": jobs, "elapsed_s": round(elapsed, 3), "jobs_per_s": round(jobs / elapsed, 1)}


class Api:
    """`aijobs api` on a database, for the GET figure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.port = free_port()
        self.child: Child | None = None

    async def __aenter__(self) -> Api:
        env = {
            "DATABASE_URL": self.dsn,
            "AIJOBS_JWT_SECRET": JWT_SECRET,
            "AIJOBS_LOG_LEVEL": "warning",
        }
        argv = [python(), "-m", "service", "api", "--port", str(self.port)]
        self.child = await Child.start(argv, env=env, label="scale-api", reports=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.child is not None:
            await self.child.stop(within=30)

    async def get_p50(self, jobs: list[tuple[str, str]], count: int) -> dict[str, Any]:
        """`count` sequential GETs of `jobs` (id, owner), each with its owner's token."""
        base = f"http://127.0.0.1:{self.port}"
        tokens = {owner: mint_token(JWT_SECRET, owner) for _, owner in jobs}
        delays: list[float] = []
        async with aiohttp.ClientSession() as session:

            async def answering() -> bool:
                try:
                    async with session.get(f"{base}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(answering, within=60, interval=0.1, what="the API")
            for n in range(count + count // 10):
                job_id, owner = jobs[n % len(jobs)]
                headers = {"Authorization": f"Bearer {tokens[owner]}"}
                started = time.perf_counter()
                async with session.get(f"{base}/api/ai-jobs/{job_id}", headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"GET /api/ai-jobs/{job_id}: {r.status}")
                if n >= count // 10:  # the first tenth warms up
                    delays.append((time.perf_counter() - started) * 1000)
        return {
            "gets": len(delays),
            "p50_ms": round(statistics.median(delays), 3),
            "p99_ms": round(percentile(delays, 0.99), 3),
        }


async def recent_jobs(dsn: str, count: int) -> list[tuple[str, str]]:
    """The most recently finished drain jobs, as a client polls them: (id, owner)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id::text, created_by FROM ai_jobs WHERE entity_id <= $1"
            " AND created_by IS NOT NULL AND status = 'completed'"
            " ORDER BY finished_at DESC LIMIT $2",
            1_000_000,
            count,
        )
    finally:
        await conn.close()
    return [(r["id"], r["created_by"]) for r in rows]


# -- query plans ---------------------------------------------------------------------------

_PRUNE_BATCH = """
SELECT id FROM ai_jobs
WHERE status IN ('completed', 'failed') AND finished_at < now() - make_interval(secs => $1)
ORDER BY finished_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

_SCAN = re.compile(
    r"(Seq Scan|Index Only Scan|Index Scan|Bitmap Index Scan|Bitmap Heap Scan)"
    r"(?: Backward)?(?: using (\S+))? on (\S+)"
)
_BUFFERS = re.compile(r"Buffers: shared(?: hit=(\d+))?(?: read=(\d+))?")
_TIME = re.compile(r"Execution Time: ([\d.]+) ms")


def summarise_plan(text: str) -> dict[str, Any]:
    """What a plan scans of ai_jobs: the indexes it uses, whether it reads the whole table,
    the buffers of its top node and its execution time."""
    scans = sorted(
        {
            f"{kind} using {index}" if index else kind
            for kind, index, table in _SCAN.findall(text)
            if table == "ai_jobs" or (index or "").startswith("ai_jobs")
        }
    )
    buffers = _BUFFERS.search(text)
    took = _TIME.search(text)
    return {
        "ai_jobs_scans": scans,
        "seq_scan_of_ai_jobs": any(
            kind == "Seq Scan" and table == "ai_jobs" for kind, _, table in _SCAN.findall(text)
        ),
        "buffers": (int(buffers.group(1) or 0) + int(buffers.group(2) or 0) if buffers else None),
        "ms": float(took.group(1)) if took else None,
    }


async def plans(dsn: str, due: int) -> dict[str, dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the queue's scanning statements in `dsn`, with `due`
    jobs due; everything in a transaction that is rolled back."""
    conn = await asyncpg.connect(dsn)
    statements: dict[str, tuple[str, tuple[Any, ...]]] = {
        "claim (fair share, the default)": (JOB_QUERIES.claim_jobs, (50, "bench-explain", 30.0, 0)),
        "claim (in plain order)": (JOB_QUERIES.claim_jobs_in_order, (50, "bench-explain", 30.0)),
        "reap expired leases": (JOB_QUERIES.reap_expired, (100,)),
        "prune: one batch": (_PRUNE_BATCH, (PRUNE_RETENTION_S, 1000)),
        "GET one job by id": ("SELECT * FROM ai_jobs WHERE id = $1", (None,)),
    }
    found: dict[str, dict[str, Any]] = {}
    try:
        for name, (sql, args) in statements.items():
            try:
                async with conn.transaction():
                    await conn.execute(_ENQUEUE, 9_000_001, 9_000_000 + due, DRAIN_OWNERS // 5)
                    if args == (None,):
                        args = (await conn.fetchval("SELECT id FROM ai_jobs LIMIT 1"),)
                    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, *args)
                    text = "\n".join(r[0] for r in rows)
                    found[name] = {"plan": text, **summarise_plan(text)}
                    raise _Rollback
            except _Rollback:
                pass
    finally:
        await conn.close()
    return found


class _Rollback(Exception):
    pass


# -- the prune -----------------------------------------------------------------------------


async def prune_under_load(dsn: str, preset: Preset) -> dict[str, Any]:
    """The retention pruner deletes the loaded finished jobs while drains run back to back;
    its duration and the drains' throughput (each drain counted whole)."""
    settings = Settings(database_url=dsn, log_level="warning")
    pool = await create_worker_pool(settings, dsn, "aijobs-bench-pruner")
    try:
        pruner = Pruner(JobStore(pool), PRUNE_RETENTION_S, interval_s=3600.0)
        started = time.monotonic()
        pruning = asyncio.create_task(pruner.prune())
        drains: list[dict[str, Any]] = []
        while not pruning.done() or not drains:
            drains.append(await drain(dsn, preset.drain_jobs, preset.concurrency))
        deleted = await pruning
        prune_s = time.monotonic() - started
    finally:
        await pool.close()
    jobs = sum(d["jobs"] for d in drains)
    busy = sum(d["elapsed_s"] for d in drains)
    return {
        "deleted": deleted,
        "prune_s": round(prune_s, 1),
        "jobs_per_s_pruned": round(deleted / prune_s),
        "drains": len(drains),
        "jobs_per_s": round(jobs / busy, 1),
    }


# -- the whole figure ----------------------------------------------------------------------


async def measure(server_dsn: str, preset: Preset = FULL, runs: int = 1) -> dict[str, Any]:
    """Every figure of the module's docstring, `runs` times each, for both databases."""
    async with (
        scratch_database(server_dsn) as empty,
        scratch_database(server_dsn) as loaded,
    ):
        load_s = await load(loaded, preset.finished, preset.pending)
        grown = await sizes(loaded)
        log(f"loaded in {load_s:.0f} s: {grown['rows']}")
        figures: dict[str, dict[str, list[float]]] = {
            "empty": {"jobs_per_s": [], "pickup_p50_ms": [], "pickup_p99_ms": [], "get_p50_ms": []},
            "loaded": {
                "jobs_per_s": [],
                "pickup_p50_ms": [],
                "pickup_p99_ms": [],
                "get_p50_ms": [],
            },
        }
        databases = {"empty": empty, "loaded": loaded}
        async with Api(empty) as empty_api, Api(loaded) as loaded_api:
            apis = {"empty": empty_api, "loaded": loaded_api}
            for _ in range(runs):
                # Interleaved, so that a noisy minute of the machine hits both alike.
                for name, dsn in databases.items():
                    mine = figures[name]
                    drained = await drain(dsn, preset.drain_jobs, preset.concurrency)
                    mine["jobs_per_s"].append(drained["jobs_per_s"])
                    picked = await pickup_latency.measure_in(dsn, preset.pickups, preset.gap_ms)
                    mine["pickup_p50_ms"].append(picked["p50_ms"])
                    mine["pickup_p99_ms"].append(picked["p99_ms"])
                    polled = await apis[name].get_p50(
                        await recent_jobs(dsn, min(preset.gets, 500)), preset.gets
                    )
                    mine["get_p50_ms"].append(polled["p50_ms"])
                    log(f"{name}: {drained}, {picked}, {polled}")
        vacuumed = {name: await vacuums(dsn) for name, dsn in databases.items()}
        explained = await plans(loaded, due=preset.concurrency * 4)
        log("plans taken; pruning")
        pruned = await prune_under_load(loaded, preset)
        log(f"pruned: {pruned}")
        after = await sizes(loaded)
    return {
        "finished": preset.finished,
        "pending": preset.pending,
        "drain_jobs": preset.drain_jobs,
        "concurrency": preset.concurrency,
        "load_s": round(load_s, 1),
        "figures": figures,
        "sizes": grown,
        "sizes_after_prune": after,
        "plans": explained,
        "vacuums": vacuumed,
        "prune": pruned,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    preset = TINY if args.scale == "tiny" else FULL
    print(json.dumps(asyncio.run(measure(admin_dsn(), preset, args.runs)), indent=1, default=str))


if __name__ == "__main__":
    main()
