"""`aijobs worker --processes N`: one supervisor, N worker processes; a child that dies is
replaced, and its jobs run again elsewhere, none lost and none written twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import asyncpg

from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.supervisor import Supervisor, SupervisorOptions
from tests.conftest import WorkerProcess, start_worker_process, wait_for_job, wait_until
from tests.fake_anthropic import Delay, FakeAnthropic
from tests.test_reliability import count_match_writes, make_mappings, match_writes


async def worker_pids(pool: asyncpg.Pool) -> set[int]:
    return {r["pid"] for r in await pool.fetch("SELECT pid FROM ai_worker_registry")}


SHORT_LEASE = {"AIJOBS_LEASE": "2", "AIJOBS_HEARTBEAT": "0.5", "AIJOBS_WORKER_PORT": "off"}


async def start_two_workers(dsn: str, pool: asyncpg.Pool, fake: FakeAnthropic) -> WorkerProcess:
    """`aijobs worker --processes 2` with short leases, once both workers have registered."""
    supervisor = await start_worker_process(dsn, fake, 10, processes=2, **SHORT_LEASE)

    async def both_registered() -> bool:
        return len(await worker_pids(pool)) == 2

    await wait_until(both_registered, within=60)
    return supervisor


async def test_a_killed_worker_process_is_replaced_and_its_jobs_run_once_in_effect(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    await count_match_writes(pool)
    mapping_ids = await make_mappings(entities, 20)
    fake.default = Delay(1.5)
    supervisor = await start_two_workers(dsn, pool, fake)
    try:
        first = await worker_pids(pool)
        queued = [await jobs.enqueue("ai-match", m) for m in mapping_ids]
        await fake.wait_for_requests(20, timeout=30)
        # Each process runs some of the jobs; one of them dies.
        holders = {
            r["locked_by"]
            for r in await pool.fetch("SELECT locked_by FROM ai_jobs WHERE status = 'processing'")
        }
        assert len(holders) == 2
        doomed = min(first)
        os.kill(doomed, signal.SIGKILL)

        async def replaced() -> bool:
            return bool(await worker_pids(pool) - first)

        await wait_until(replaced, within=60)
        done = [await wait_for_job(jobs, j.id, within=60) for j in queued]
    finally:
        supervisor.signal(signal.SIGTERM)
        code = await supervisor.wait()
    assert code == 0
    assert {j.status for j in done} == {"completed"}
    # The killed process's jobs ran again (a second attempt); every result was written once.
    assert {j.attempts for j in done} <= {1, 2}
    assert any(j.attempts == 2 for j in done)
    writes = await match_writes(pool)
    assert writes == Counter({m: 1 for m in mapping_ids})
    events = [e["event"] for e in supervisor.log_lines()]
    assert events.count("worker_process_died") == 1
    assert events.count("worker_process_stopped") == 2
    # The processes that stopped gracefully took their registry entries with them; at most
    # the killed one's is left, for the stale-worker sweep.
    assert await worker_pids(pool) <= {doomed}


async def test_the_supervisor_gives_up_when_its_children_keep_dying() -> None:
    supervisor = Supervisor(
        lambda _: [sys.executable, "-c", "raise SystemExit(3)"],
        lambda _: dict(os.environ),
        SupervisorOptions(processes=2, max_restarts=3, restart_delay_s=0.01),
    )
    assert await asyncio.wait_for(supervisor.run(), 60) == 1


async def test_the_supervisor_passes_sigterm_on_and_exits_0_once_its_children_have(
    tmp_path: Path,
) -> None:
    # A child that exits 0 on SIGTERM, as a worker does once it has drained, and says when
    # it is ready for it.
    child = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(60)\n"
        "sys.exit(5)\n"
    )
    supervisor = Supervisor(
        lambda i: [sys.executable, "-c", child, str(tmp_path / f"ready-{i}")],
        lambda _: dict(os.environ),
        SupervisorOptions(processes=3),
    )
    running = asyncio.create_task(supervisor.run())

    def ready() -> int:
        return len(list(tmp_path.glob("ready-*")))

    async def all_ready() -> bool:
        return ready() == 3

    await wait_until(all_ready, within=30)
    assert len(supervisor.pids) == 3
    supervisor.stop(signal.SIGTERM)
    assert await asyncio.wait_for(running, 30) == 0
    assert supervisor.pids == []


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def test_workers_drain_and_leave_when_their_supervisor_is_killed_outright(
    dsn: str, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    await count_match_writes(pool)
    mapping_ids = await make_mappings(entities, 10)
    fake.default = Delay(2.0)
    supervisor = await start_two_workers(dsn, pool, fake)
    children = await worker_pids(pool)
    queued = [await jobs.enqueue("ai-match", m) for m in mapping_ids]
    await fake.wait_for_requests(10, timeout=30)
    supervisor.signal(signal.SIGKILL)
    await supervisor.wait()

    # The kernel tells each child its supervisor died: it drains and deregisters, as on SIGTERM.
    async def children_gone() -> bool:
        return not await worker_pids(pool) and not any(process_alive(p) for p in children)

    await wait_until(children_gone, within=60)
    # Whatever they did not finish, another worker does; each result is written once.
    successor = await start_worker_process(dsn, fake, 10, **SHORT_LEASE)
    try:
        done = [await wait_for_job(jobs, j.id, within=60) for j in queued]
    finally:
        successor.signal(signal.SIGTERM)
        await successor.wait()
    assert {j.status for j in done} == {"completed"}
    writes = await match_writes(pool)
    assert writes == Counter({m: 1 for m in mapping_ids})
