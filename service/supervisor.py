"""`aijobs worker --processes N`: one supervisor, N worker processes.

A worker is one process on one core: the Anthropic SDK spends about a millisecond of client
CPU per call, so a process running hundreds of model calls at once is bound by its core long
before by its slots. The supervisor runs N ordinary workers (`aijobs worker`, each with
`--concurrency` slots and a registry entry of its own) and only watches them: it forwards
SIGTERM and SIGINT for a graceful drain, starts again a child that exits while it should
not, and gives up (stops the others, exits 1) when children keep dying. A child asks the
kernel for SIGTERM when the supervisor dies, so a supervisor killed outright (SIGKILL, OOM)
leaves no worker behind: each drains and exits as if told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from service.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SupervisorOptions:
    processes: int
    # More unexpected exits than this within `restart_window_s`: the supervisor gives up.
    max_restarts: int = 5
    restart_window_s: float = 60.0
    # The wait before a child that died is started again.
    restart_delay_s: float = 1.0


class Supervisor:
    """Runs `command(i)` with `env(i)` for i in 0..processes-1 until told to stop."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        env: Callable[[int], dict[str, str]],
        options: SupervisorOptions,
    ) -> None:
        self._command = command
        self._env = env
        self._options = options
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._exits: deque[float] = deque()
        self._gave_up = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._children.values() if p.returncode is None]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop supervising and pass `sig` on to every child: each drains and exits."""
        self._stopping.set()
        for proc in self._children.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def run(self) -> int:
        """0 when every child stopped cleanly once asked to; 1 when the children kept dying
        or one did not stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        try:
            codes = await asyncio.gather(*(self._keep(i) for i in range(self._options.processes)))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._gave_up:
            return 1
        return 0 if all(code == 0 for code in codes) else 1

    async def _keep(self, index: int) -> int:
        """Keep child `index` running until the supervisor stops; its last exit code."""
        while True:
            proc = await asyncio.create_subprocess_exec(*self._command(index), env=self._env(index))
            self._children[index] = proc
            log.info("worker_process_started", index=index, pid=proc.pid)
            if self._stopping.is_set():  # asked to stop while it was starting
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            if self._stopping.is_set():
                log.info("worker_process_stopped", index=index, pid=proc.pid, code=code)
                return code
            log.warning("worker_process_died", index=index, pid=proc.pid, code=code)
            if self._too_many_exits():
                log.error(
                    "worker_processes_keep_dying",
                    exits=len(self._exits),
                    window_s=self._options.restart_window_s,
                )
                self._gave_up = True
                self.stop(signal.SIGTERM)
                return code
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.restart_delay_s):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return code

    def _too_many_exits(self) -> bool:
        now = time.monotonic()
        self._exits.append(now)
        while self._exits and self._exits[0] < now - self._options.restart_window_s:
            self._exits.popleft()
        return len(self._exits) > self._options.max_restarts


# The environment variable that tells a worker the pid of the supervisor it belongs to.
SUPERVISOR_PID_ENV = "AIJOBS_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def follow_supervisor(environ: Mapping[str, str] = os.environ) -> bool:
    """In a supervised worker: have the kernel send SIGTERM when the supervisor dies.

    False when the supervisor is gone already (the caller exits at once); True otherwise,
    including when not supervised or where the kernel has no such request (not Linux): there
    a killed supervisor's children run on until stopped.
    """
    supervisor = environ.get(SUPERVISOR_PID_ENV)
    if not supervisor:
        return True
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # Asked after the supervisor died: no signal will come, so look.
    return os.getppid() == int(supervisor)


def worker_command(concurrency: int) -> list[str]:
    return [sys.executable, "-m", "service", "worker", "--concurrency", str(concurrency)]


def worker_env(
    base: dict[str, str], dsn: str, index: int, metrics_port: int | None
) -> dict[str, str]:
    """A child's environment: the supervisor's, the database it chose, and a metrics port of
    its own (the configured one plus its index)."""
    env = {**base, "DATABASE_URL": dsn, SUPERVISOR_PID_ENV: str(os.getpid())}
    if metrics_port is not None and metrics_port != 0:
        env["AIJOBS_WORKER_PORT"] = str(metrics_port + index)
    return env


async def supervise(
    dsn: str, concurrency: int, options: SupervisorOptions, metrics_port: int | None
) -> int:
    base = dict(os.environ)
    supervisor = Supervisor(
        lambda _: worker_command(concurrency),
        lambda index: worker_env(base, dsn, index, metrics_port),
        options,
    )
    log.info("supervisor_started", processes=options.processes, concurrency=concurrency)
    code = await supervisor.run()
    log.info("supervisor_stopped", code=code)
    return code
