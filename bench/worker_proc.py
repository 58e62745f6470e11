"""A worker process of one of the queues, running no-op jobs, for the benchmarks.

    python -m bench.worker_proc {aijobs,pgqueuer,floor} --dsn DSN --concurrency N
                                [--expect N] [--record-starts]

Reports JSON lines on stdout: `ready` (with its pid), `start` (the monotonic clock just
before the worker starts consuming), `ran` (when the processor has run `--expect` times) and,
after SIGTERM or SIGINT, `result` (with the start time of every job when `--record-starts`).
CLOCK_MONOTONIC is one clock for every process of the machine, so the parent can compare.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import event_loop_factory, python, report
from bench.queues import AIJOBS_JOB_TYPE, PGQUEUER_ENTRYPOINT, SYSTEMS


def command(system: str, dsn: str, concurrency: int, expect: int, *options: str) -> list[str]:
    """The command line that starts this module as a worker process of `system`."""
    argv = [python(), "-m", "bench.worker_proc", system, "--dsn", dsn]
    return [*argv, "--concurrency", str(concurrency), "--expect", str(expect), *options]


class Tally:
    """Counts processor runs; remembers when each started if asked to."""

    def __init__(self, expect: int, record: bool) -> None:
        self.expect = expect
        self.count = 0
        self.record = record
        self.starts: dict[str, float] = {}

    def started(self, job_id: object) -> None:
        now = time.monotonic()
        if self.record:
            self.starts[str(job_id)] = now
        self.count += 1
        if self.count == self.expect:
            report("ran", t=time.monotonic())


Stop = Callable[[], Awaitable[None]]


async def _start_aijobs(
    dsn: str,
    concurrency: int,
    tally: Tally,
    log_level: str,
    synchronous_commit: str | None,
    fair_share: str | None = None,
) -> Stop:
    from service.config import Settings
    from service.jobs.context import JobContext
    from service.jobs.model import Completion
    from service.jobs.registry import JobType
    from service.jobs.store import JobStore
    from service.jobs.worker import Worker
    from service.logs import configure_logging
    from service.runtime import create_worker_pool, worker_options

    settings = Settings(database_url=dsn, log_level=log_level)
    if synchronous_commit is not None:
        settings = dataclasses.replace(settings, worker_synchronous_commit=synchronous_commit)
    if fair_share is not None:
        settings = dataclasses.replace(settings, fair_share=fair_share == "on")
    configure_logging(settings.log_level, "json")
    pool = await create_worker_pool(settings, dsn, "aijobs-bench-worker")

    async def noop(ctx: JobContext) -> Completion:
        tally.started(ctx.job.id)
        return Completion(None)

    worker = Worker(
        dsn,
        JobStore(pool),
        {AIJOBS_JOB_TYPE: JobType(AIJOBS_JOB_TYPE, noop)},
        worker_options(settings, concurrency),
    )
    report("ready", pid=os.getpid())
    report("start", t=time.monotonic(), cpu=time.process_time())
    await worker.start()

    async def stop() -> None:
        await worker.stop()
        await pool.close()

    return stop


async def _start_pgqueuer(dsn: str, concurrency: int, tally: Tally, batch_size: int) -> Stop:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    conn = await asyncpg.connect(dsn)
    pgq = PgQueuer.from_asyncpg_connection(conn)

    @pgq.entrypoint(PGQUEUER_ENTRYPOINT)
    async def noop(job: Job) -> None:
        tally.started(job.id)

    batch = batch_size or max(1, concurrency // 2)
    report("ready", pid=os.getpid())
    report("start", t=time.monotonic(), cpu=time.process_time())
    # max_concurrent_tasks caps the jobs this worker holds; it must be at least twice the
    # dequeue batch.
    run = asyncio.create_task(pgq.run(batch_size=batch, max_concurrent_tasks=concurrency))
    run.add_done_callback(_exit_if_crashed)

    async def stop() -> None:
        run.remove_done_callback(_exit_if_crashed)
        pgq.shutdown.set()
        await run
        await conn.close()

    return stop


def _exit_if_crashed(task: asyncio.Task[None]) -> None:
    # Without this, a worker that died would leave the parent waiting for `ran` until its
    # timeout.
    error = None if task.cancelled() else task.exception()
    if error is not None:
        traceback.print_exception(error)
        raise SystemExit(f"the worker crashed: {error!r}")


async def _start_floor(dsn: str, concurrency: int, tally: Tally) -> Stop:
    from bench.floor import FloorWorker

    async def noop(job_id: int, _payload: str | None) -> None:
        tally.started(job_id)

    worker = FloorWorker(dsn, noop, concurrency)
    await worker.open()
    report("ready", pid=os.getpid())
    report("start", t=time.monotonic(), cpu=time.process_time())
    await worker.start()
    return worker.stop


async def run(args: argparse.Namespace) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    tally = Tally(args.expect, args.record_starts)
    stop: Stop
    if args.system == "aijobs":
        stop = await _start_aijobs(
            args.dsn,
            args.concurrency,
            tally,
            args.log_level,
            args.synchronous_commit,
            args.fair_share,
        )
    elif args.system == "pgqueuer":
        stop = await _start_pgqueuer(args.dsn, args.concurrency, tally, args.batch_size)
    else:
        stop = await _start_floor(args.dsn, args.concurrency, tally)
    await stop_requested.wait()
    await stop()
    result: dict[str, Any] = {"count": tally.count}
    if args.record_starts:
        result["starts"] = tally.starts
    report("result", **result)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_proc")
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--expect", type=int, default=0, help="report `ran` after this many")
    parser.add_argument("--record-starts", action="store_true")
    parser.add_argument("--log-level", default="info", help="aijobs' log level (its default)")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="PgQueuer's dequeue batch (default N/2)"
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        help="aijobs' AIJOBS_WORKER_SYNCHRONOUS_COMMIT (default: its default, off)",
    )
    parser.add_argument(
        "--fair-share",
        choices=("on", "off"),
        help="aijobs' AIJOBS_FAIR_SHARE (default: its default, on)",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop, the same for every system (uvloop: what `aijobs worker` runs on)",
    )
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory(args.loop)) as runner:
        runner.run(run(args))


if __name__ == "__main__":
    main()
