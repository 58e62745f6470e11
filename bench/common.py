"""What every benchmark shares: scratch databases, child processes, statistics, /proc.

Nothing here measures anything by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from service.db.migrations import migrate
from service.db.pool import connect
from tests.pg import DEFAULT_SERVER, with_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# The two sizes every benchmark knows: `full` for `make bench`, `tiny` for the test suite
# (a few hundred jobs, seconds, so that the benchmarks cannot rot).
SCALES = ("full", "tiny")


def admin_dsn() -> str:
    """The server the benchmarks make their scratch databases on."""
    return os.environ.get("DATABASE_URL") or DEFAULT_SERVER


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str, *, aijobs_schema: bool = True) -> AsyncIterator[str]:
    """A database of its own for one run: created, migrated, and dropped at the end."""
    name = f"aijobs_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    try:
        if aijobs_schema:
            conn = await connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        yield dsn
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop a benchmark process runs on: "uvloop" (as `aijobs` runs) or "asyncio"."""
    if name == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


# -- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)]


def spread(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """Median, min and max of the runs of one figure, and the runs themselves."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


# -- /proc --------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, field: str) -> int:
    """A `kB` line of /proc/<pid>/status: VmRSS now, VmHWM the peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def postgres_cpu_seconds() -> float:
    """CPU time of every Postgres process on this machine (other users' work included)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if (entry / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(entry.name))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def commits(conn: asyncpg.Connection, database: str) -> int:
    """Transactions committed in `database` so far (as far as the statistics know)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    value: int = await conn.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
    )
    return value


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float, interval: float, what: str
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        await asyncio.sleep(interval)


# -- child processes ----------------------------------------------------------------------


class Child:
    """A Python process of the benchmark that reports JSON lines on stdout.

    Each line is an object with an "event" key; `expect` waits for the next one of a kind.
    Its stderr goes to a file, shown when something goes wrong.
    """

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, argv: list[str]) -> None:
        self.proc = proc
        self.log_path = log_path
        self.argv = argv

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        label: str = "child",
        reports: bool = True,
    ) -> Child:
        """Start `argv` in the repository's root; `reports`: it speaks JSON lines on stdout."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        log_path = RESULTS / f"{label}-{os.getpid()}-{uuid.uuid4().hex[:6]}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if reports else asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        return cls(proc, log_path, list(argv))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def expect(self, event: str, within: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.001))
            except TimeoutError:
                raise RuntimeError(
                    f"{self.argv[:4]}: no {event!r} within {within} s\n{self.log_tail()}"
                ) from None
            if not line:
                await self.proc.wait()
                raise RuntimeError(
                    f"{self.argv[:4]} exited ({self.proc.returncode}) before {event!r}\n"
                    f"{self.log_tail()}"
                )
            if not line.startswith(b"{"):
                continue
            message: dict[str, Any] = orjson.loads(line)
            if message.get("event") == event:
                return message

    def terminate(self) -> None:
        """SIGTERM without waiting: the child reports its `result` and exits."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    async def stop(self, within: float = 60.0, keep_log: bool = False) -> int:
        """SIGTERM, then wait; SIGKILL after `within` seconds."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), within)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        # Read what is left so that the pipe's transport closes cleanly.
        if self.proc.stdout is not None:
            with contextlib.suppress(Exception):
                await self.proc.stdout.read()
        code = self.proc.returncode
        assert code is not None
        if not keep_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return code


async def port_answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def report(event: str, **fields: Any) -> None:
    """One JSON line on stdout, for the parent's `Child.expect`."""
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def python() -> str:
    return sys.executable
