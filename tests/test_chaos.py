"""The soak test, kept out of the default run (`make chaos`): 2,000 jobs while workers are
killed and listeners cut every few seconds. Every job must finish, none twice in effect."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest

from tests.conftest import WorkerProcess, start_worker_process
from tests.fake_anthropic import Delay, FakeAnthropic
from tests.test_reliability import count_match_writes, match_writes

pytestmark = pytest.mark.chaos

JOBS = 2000
WORKERS = 3
LEASE = {"AIJOBS_LEASE": "3", "AIJOBS_HEARTBEAT": "0.5", "AIJOBS_MAX_ATTEMPTS": "20"}


async def note_recoveries(
    pool: asyncpg.Pool, orphaned: dict[Any, tuple[float, str]], waits: list[float]
) -> None:
    """A killed worker's job is recovered once another worker has it, or it finished."""
    if not orphaned:
        return
    rows = await pool.fetch(
        "SELECT id, status, locked_by FROM ai_jobs WHERE id = ANY($1::uuid[])", list(orphaned)
    )
    now = time.monotonic()
    for r in rows:
        killed_at, dead_worker = orphaned[r["id"]]
        if r["status"] != "pending" and r["locked_by"] != dead_worker:
            waits.append(now - killed_at)
            del orphaned[r["id"]]


async def test_chaos(dsn: str, pool: asyncpg.Pool, fake: FakeAnthropic) -> None:
    await count_match_writes(pool)
    await pool.execute(
        """
        WITH r AS (INSERT INTO requirements (code, title, description)
                   VALUES ('R', 'Records', 'Keep records') RETURNING id),
             d AS (INSERT INTO documents (title, content)
                   SELECT 'Doc-' || g, 'Records are kept. Doc-' || g
                   FROM generate_series(1, $1) g RETURNING id)
        INSERT INTO requirement_mappings (requirement_id, document_id)
        SELECT r.id, d.id FROM r, d
        """,
        JOBS,
    )
    await pool.execute(
        "INSERT INTO ai_jobs (job_type, entity_id, max_attempts)"
        " SELECT 'ai-match', id, 20 FROM requirement_mappings"
    )
    fake.default = Delay(0.2)
    rng = random.Random(7)
    workers: list[WorkerProcess] = [
        await start_worker_process(dsn, fake, 25, **LEASE) for _ in range(WORKERS)
    ]
    kills = terminations = 0
    orphaned: dict[Any, tuple[float, str]] = {}  # job id -> (when, the killed worker's id)
    recovery_waits: list[float] = []
    started = time.monotonic()
    deadline = started + 600
    try:
        while True:
            finished = await pool.fetchval(
                "SELECT count(*) FROM ai_jobs WHERE status IN ('completed', 'failed')"
            )
            if finished == JOBS:
                break
            assert time.monotonic() < deadline, f"only {finished} of {JOBS} finished"
            next_action = time.monotonic() + rng.uniform(1.5, 3.5)
            while time.monotonic() < next_action:
                await asyncio.sleep(0.2)
                await note_recoveries(pool, orphaned, recovery_waits)
            if rng.random() < 0.6:
                victim = rng.randrange(len(workers))
                pid = workers[victim].proc.pid
                running = await pool.fetch(
                    "SELECT id, locked_by FROM ai_jobs"
                    " WHERE status = 'processing' AND locked_by LIKE $1",
                    f"%:{pid}:%",
                )
                workers[victim].signal(signal.SIGKILL)
                await workers[victim].wait()
                now = time.monotonic()
                orphaned.update({r["id"]: (now, r["locked_by"]) for r in running})
                kills += 1
                workers[victim] = await start_worker_process(dsn, fake, 25, **LEASE)
            else:
                terminations += await pool.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'aijobs-listener' AND datname = current_database()"
                )
    finally:
        for worker in workers:
            worker.signal(signal.SIGTERM)
        for worker in workers:
            await worker.wait()

    statuses = Counter(r["status"] for r in await pool.fetch("SELECT status FROM ai_jobs"))
    writes = await match_writes(pool)
    duplicated = sum(1 for n in writes.values() if n > 1)
    lost = JOBS - statuses["completed"]
    figures = {
        "jobs": JOBS,
        "seconds": round(time.monotonic() - started, 1),
        "worker_kills": kills,
        "listener_terminations": terminations,
        "completed": statuses["completed"],
        "lost": lost,
        "duplicated_effects": duplicated,
        "jobs_orphaned_by_kills": len(recovery_waits) + len(orphaned),
        "longest_recovery_wait_s": round(max(recovery_waits, default=0.0), 1),
        "model_calls": len(fake.requests),
    }
    print("\nchaos figures:", json.dumps(figures))
    assert lost == 0 and duplicated == 0
    assert len(writes) == JOBS
