"""Fairness: how long one user's few jobs wait behind another user's backlog.

    python -m bench.fairness [--scale full|tiny] [--fair-share on|off]

Starts the fake Anthropic server answering after `delay_s` (1 s) and one
`python -m service worker --concurrency C` (20) against a scratch database, with
AIJOBS_FAIR_SHARE on or off. Once one warm-up job has taught the shared rate limit budget the
fake's limits, user A dispatches N ai-match jobs (1,000) in one statement; once the worker
runs C of them, user B dispatches M (10). A job's start delay is its claim (started_at) less
its dispatch (created_at), both Postgres clocks. Reports B's p50 and p99, and A's queue for
comparison: with fair share on, B's jobs take the next slots that free, about one model call;
off, they wait for A's whole backlog, about N / C model calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import asyncpg

from bench.common import Child, admin_dsn, free_port, python, scratch_database, wait_until
from bench.slow_model import _ENTITIES, _wait_for_port, _warm_up, start_fake

FULL = {"jobs_a": 1000, "jobs_b": 10, "delay_s": 1.0, "concurrency": 20}
TINY = {"jobs_a": 40, "jobs_b": 3, "delay_s": 0.2, "concurrency": 4}

_DISPATCH = """
INSERT INTO ai_jobs (job_type, entity_id, created_by)
SELECT 'ai-match', id, $1 FROM requirement_mappings ORDER BY id LIMIT $2
"""
_DELAYS = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))
         AS p50_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))
         AS p99_s,
       max(extract(epoch FROM started_at - created_at)) AS max_s
FROM ai_jobs
WHERE created_by = $1
"""


async def measure(
    server_dsn: str,
    fair_share: bool = True,
    jobs_a: int = 1000,
    jobs_b: int = 10,
    delay_s: float = 1.0,
    concurrency: int = 20,
) -> dict[str, Any]:
    async with scratch_database(server_dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        fake: asyncio.subprocess.Process | None = None
        child: Child | None = None
        ok = False
        try:
            await conn.execute(_ENTITIES, jobs_a)
            port = free_port()
            fake = await start_fake(port, delay_s)
            await _wait_for_port(port, 30)
            env = {
                "DATABASE_URL": dsn,
                "ANTHROPIC_API_KEY": "x",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
                "AIJOBS_WORKER_PORT": "off",
                "AIJOBS_LOG_FORMAT": "json",
                "AIJOBS_FAIR_SHARE": "on" if fair_share else "off",
            }
            child = await Child.start(
                [python(), "-m", "service", "worker", "--concurrency", str(concurrency)],
                env=env,
                label="fairness-worker",
                reports=False,
            )

            async def registered() -> bool:
                if child is not None and child.proc.returncode is not None:
                    raise RuntimeError(f"the worker exited\n{child.log_tail()}")
                return bool(await conn.fetchval("SELECT count(*) = 1 FROM ai_worker_registry"))

            await wait_until(registered, 60, 0.05, "worker registration")
            await _warm_up(conn)
            await conn.execute(_DISPATCH, "user-a", jobs_a)

            async def busy() -> bool:
                running = await conn.fetchval(
                    "SELECT count(*) FROM ai_jobs WHERE status = 'processing'"
                )
                return bool(running >= concurrency)

            await wait_until(busy, 60, 0.01, "the worker busy with user A's jobs")
            await conn.execute(_DISPATCH, "user-b", jobs_b)

            async def b_started() -> bool:
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM ai_jobs WHERE created_by = 'user-b' "
                    "AND started_at IS NULL"
                )
                return bool(waiting == 0)

            backlog_s = jobs_a / concurrency * delay_s
            await wait_until(b_started, backlog_s * 4 + 60, 0.05, "user B's jobs started")
            b = await conn.fetchrow(_DELAYS, "user-b")
            failed = await conn.fetchval("SELECT count(*) FROM ai_jobs WHERE status = 'failed'")
            assert b is not None
            ok = failed == 0
        finally:
            if child is not None:
                await child.stop(keep_log=not ok)
            if fake is not None and fake.returncode is None:
                fake.terminate()
                await fake.wait()
            await conn.close()
    return {
        "fair_share": fair_share,
        "jobs_a": jobs_a,
        "jobs_b": jobs_b,
        "delay_s": delay_s,
        "concurrency": concurrency,
        "failed": failed,
        "b_p50_s": round(float(b["p50_s"]), 3),
        "b_p99_s": round(float(b["p99_s"]), 3),
        "b_max_s": round(float(b["max_s"]), 3),
        "b_p99_in_model_calls": round(float(b["p99_s"]) / delay_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--fair-share", choices=("on", "off"), default="on")
    args = parser.parse_args()
    preset = TINY if args.scale == "tiny" else FULL
    result = asyncio.run(
        measure(
            admin_dsn(),
            args.fair_share == "on",
            jobs_a=int(preset["jobs_a"]),
            jobs_b=int(preset["jobs_b"]),
            delay_s=float(preset["delay_s"]),
            concurrency=int(preset["concurrency"]),
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
