"""Slow-model concurrency: real ai-match jobs whose model call takes seconds, one worker.

    python -m bench.slow_model [--scale full|tiny] [--jobs 2000] [--delay 2.0]
                               [--concurrency 500] [--pool-max 20]

Starts the fake Anthropic server (`python -m tests.fake_anthropic --delay D`) and one
`python -m service worker --concurrency C` against a scratch database holding 1 requirement,
N documents and N mappings. Once the worker has registered itself, one INSERT ... SELECT
records the N jobs; the clock runs from that commit to the last job completed. Ideal: every
slot busy with a model call all the time, ceil(N / C) waves of D seconds (250 jobs/s at 500
slots and 2 s). Reports the throughput as a share of that, and the worker's peak RSS
(VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Any

import asyncpg

from bench.common import (
    Child,
    admin_dsn,
    cpu_seconds,
    free_port,
    port_answers,
    proc_status_kb,
    python,
    scratch_database,
    wait_until,
)

FULL = {"jobs": 2000, "delay_s": 2.0, "concurrency": 500, "pool_max": 20}
TINY = {"jobs": 40, "delay_s": 0.2, "concurrency": 20, "pool_max": 5}

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
_ENQUEUE_ALL = """
INSERT INTO ai_jobs (job_type, entity_id) SELECT 'ai-match', id FROM requirement_mappings
"""
_FINISHED = """
SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM ai_jobs
"""


async def _wait_for_port(port: int, within: float) -> None:
    await wait_until(lambda: port_answers(port), within, 0.05, f"port {port}")


async def measure(
    server_dsn: str,
    jobs: int = 2000,
    delay_s: float = 2.0,
    concurrency: int = 500,
    pool_max: int = 20,
) -> dict[str, Any]:
    async with scratch_database(server_dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        fake: asyncio.subprocess.Process | None = None
        worker: Child | None = None
        ok = False
        try:
            await conn.execute(_ENTITIES, jobs)
            port = free_port()
            fake = await asyncio.create_subprocess_exec(
                python(),
                "-m",
                "tests.fake_anthropic",
                "--port",
                str(port),
                "--delay",
                str(delay_s),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await _wait_for_port(port, 30)
            env = {
                "DATABASE_URL": dsn,
                "ANTHROPIC_API_KEY": "x",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
                "AIJOBS_WORKER_PORT": "off",
                "AIJOBS_POOL_MAX_SIZE": str(pool_max),
                "AIJOBS_LOG_FORMAT": "json",
            }
            worker = await Child.start(
                [python(), "-m", "service", "worker", "--concurrency", str(concurrency)],
                env=env,
                label="slow-model-worker",
                reports=False,
            )

            async def registered() -> bool:
                if worker is not None and worker.proc.returncode is not None:
                    raise RuntimeError(f"the worker exited\n{worker.log_tail()}")
                return bool(await conn.fetchval("SELECT count(*) FROM ai_worker_registry"))

            await wait_until(registered, 60, 0.05, "worker registration")
            await asyncio.sleep(0.5)
            cpu_before = cpu_seconds(worker.pid)
            await conn.execute(_ENQUEUE_ALL)
            start = time.monotonic()
            finished: dict[str, int] = {}

            async def all_finished() -> bool:
                row = await conn.fetchrow(_FINISHED)
                assert row is not None
                finished.update(row)
                return int(row["completed"]) + int(row["failed"]) >= jobs

            ideal_s = math.ceil(jobs / concurrency) * delay_s
            await wait_until(all_finished, ideal_s * 10 + 60, 0.02, "all jobs finished")
            elapsed = time.monotonic() - start
            peak_kb = proc_status_kb(worker.pid, "VmHWM")
            rss_kb = proc_status_kb(worker.pid, "VmRSS")
            worker_cpu = cpu_seconds(worker.pid) - cpu_before
            ok = finished["failed"] == 0
        finally:
            if worker is not None:
                await worker.stop(keep_log=not ok)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_model")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--pool-max", type=int, default=0)
    args = parser.parse_args()
    preset = TINY if args.scale == "tiny" else FULL
    result = asyncio.run(
        measure(
            admin_dsn(),
            jobs=args.jobs or int(preset["jobs"]),
            delay_s=args.delay or float(preset["delay_s"]),
            concurrency=args.concurrency or int(preset["concurrency"]),
            pool_max=args.pool_max or int(preset["pool_max"]),
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
