"""Debian's PgBouncer in front of the test server, as a deployment has it in front of its
database (Supabase's pooler on port 6543 is one in transaction mode).

`pgbouncer_path()` finds it, installing Debian's `pgbouncer` package when it is missing and
the tests run as root (as in CI). `python -m tests.pgbouncer` does the same ahead of a run.
PgBouncer refuses to run as root: as root, it is started as an unprivileged user (`-u`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.debian import PackageUnavailable, apt_install

PGBOUNCER = "/usr/sbin/pgbouncer"
# Who PgBouncer runs as when the tests run as root.
RUN_AS = ("postgres", "nobody")


def pgbouncer_path(install: bool = True) -> str:
    """The pgbouncer executable, installing Debian's package first when it is missing.

    Raises PackageUnavailable when it is missing and cannot be installed (not root, no apt).
    """
    for candidate in (PGBOUNCER, shutil.which("pgbouncer")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if not install:
        raise PackageUnavailable(f"{PGBOUNCER} is not installed")
    apt_install("pgbouncer", PGBOUNCER)
    return PGBOUNCER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in RUN_AS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PackageUnavailable(f"no unprivileged user ({', '.join(RUN_AS)}) to run pgbouncer as")


class PgBouncer:
    """A PgBouncer process on a free port in front of the server of `server_dsn`: any
    database of that server under its own name, each client's user connecting as itself
    (trust authentication, the users named in `users`)."""

    def __init__(
        self, server_dsn: str, users: tuple[str, ...] = ("root",), pool_mode: str = "transaction"
    ) -> None:
        self.server = urlsplit(server_dsn)
        self.users = users
        self.pool_mode = pool_mode
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    def dsn(self, database: str, user: str | None = None) -> str:
        """The DSN of `database` through PgBouncer, as `user` (default: the server's)."""
        user = user or self.server.username or "root"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", f"/{database}", "", ""))

    def via(self, dsn: str) -> str:
        """`dsn` (a database of the server) through PgBouncer."""
        parts = urlsplit(dsn)
        return self.dsn(parts.path.lstrip("/"), parts.username)

    def start(self, within: float = 20.0) -> None:
        executable = pgbouncer_path()
        user = _run_as()
        self._dir = Path(tempfile.mkdtemp(prefix="aijobs-pgbouncer-"))
        self.port = _free_port()
        host = self.server.hostname or "127.0.0.1"
        server_port = self.server.port or 5432
        (self._dir / "users.txt").write_text("".join(f'"{u}" ""\n' for u in self.users))
        (self._dir / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self._dir / "users.txt"}
pool_mode = {self.pool_mode}
max_client_conn = 1000
default_pool_size = 20
log_connections = 0
log_disconnections = 0
logfile =
pidfile =
"""
        )
        args = [executable]
        if user is not None:
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            args += ["-u", user.pw_name]
        with open(self._dir / "stderr.log", "wb") as log:
            self._proc = subprocess.Popen(
                [*args, str(self._dir / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._wait_listening(within)

    def _wait_listening(self, within: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + within
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen in time: {self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        """What PgBouncer wrote to its log so far."""
        assert self._dir is not None
        return (self._dir / "stderr.log").read_text(errors="replace")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def main() -> int:
    try:
        print(pgbouncer_path())
    except PackageUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
