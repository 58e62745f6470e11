"""The embedded PostgreSQL used when DATABASE_URL is unset: it never outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db.embedded import SYSTEM_USER, EmbeddedPostgres, _bin_dir, _free_port

HOLD = """
import sys, time
from pathlib import Path
from service.db.embedded import EmbeddedPostgres
from service.logs import configure_logging
configure_logging("warning", "json")
server = EmbeddedPostgres(Path(sys.argv[1]))
server.start()
print(server.process.pid if server.process else 0, server.port, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def wait_dead(pid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside root's home: the server runs as another user that must reach it.
    with tempfile.TemporaryDirectory(prefix="aijobs-embedded-", dir="/tmp") as tmp:
        yield Path(tmp)


def test_server_dies_with_a_killed_owner_and_starts_again(data_dir: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        server_pid, port = (int(x) for x in owner.stdout.readline().split())
        assert alive(server_pid) and port > 0
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()  # type: ignore[union-attr]
    assert wait_dead(server_pid), "the embedded server outlived its killed owner"

    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        assert server.process is not None and alive(server.process.pid)
    finally:
        server.stop()


def test_a_leftover_server_is_stopped_on_start(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    first.start()
    first.stop()
    # A server started some other way, with no live owner: what a crash can leave behind.
    user = SYSTEM_USER if os.geteuid() == 0 else None
    subprocess.run(
        [
            str(_bin_dir() / "pg_ctl"),
            "-D",
            str(data_dir / "pgdata"),
            "-w",
            "-l",
            str(data_dir / "leftover.log"),
            "-o",
            f"-p {_free_port()} -c listen_addresses=127.0.0.1 -c unix_socket_directories=",
            "start",
        ],
        check=True,
        capture_output=True,
        user=user,
    )
    leftover_pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    server = EmbeddedPostgres(data_dir)
    try:
        server.start()
        assert server.process is not None and server.process.pid != leftover_pid
        assert wait_dead(leftover_pid)
    finally:
        server.stop()
        if alive(leftover_pid):
            os.kill(leftover_pid, signal.SIGKILL)


def test_a_second_process_shares_a_running_server(data_dir: Path) -> None:
    owner = EmbeddedPostgres(data_dir)
    owner.start()
    try:
        guest = EmbeddedPostgres(data_dir)
        guest.start()
        assert guest.port == owner.port and guest.process is None
        guest.stop()
        assert owner.process is not None and alive(owner.process.pid)
    finally:
        owner.stop()
