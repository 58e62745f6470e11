"""`aijobs demo`, as a new user runs it: no API key, and with or without DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from service.db.embedded import _free_port


async def run_demo(env_overrides: dict[str, str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ANTHROPIC_API_KEY")}
    env.update({"AIJOBS_OFFLINE_DELAY": "0.3", **env_overrides})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "demo",
        "--exit",
        "--port",
        str(_free_port()),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def assert_demo_output(out: str) -> None:
    assert "analyzer: offline analyzer" in out
    for job_type in ("ai-match", "ai-coverage", "ai-map-controls"):
        assert f"{job_type}: completed" in out, out
    assert "-> 202" in out
    assert "Analyzing batch" in out
    assert "controls mapped in 3 batches" in out
    assert "[offline analyzer]" in out
    assert 'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:' in out
    assert "export TOKEN=ey" in out
    # Signed in for a session cookie, as the jobs page does; no token in any URL.
    assert "POST /api/session -> 200" in out
    assert "access_token=" not in out


async def test_demo_against_database_url(dsn: str) -> None:
    code, out = await run_demo({"DATABASE_URL": dsn})
    assert code == 0, out
    assert_demo_output(out)
    # Run again: the sample is not loaded twice.
    code, out = await run_demo({"DATABASE_URL": dsn})
    assert code == 0, out
    assert "12 requirements, 4 documents, 64 controls, 19 mappings" in out


async def test_demo_with_embedded_postgres() -> None:
    with tempfile.TemporaryDirectory(prefix="aijobs-demo-", dir="/tmp") as tmp:
        code, out = await run_demo({"AIJOBS_DATA_DIR": tmp})
    assert code == 0, out
    assert "embedded PostgreSQL" in out
    assert_demo_output(out)


async def test_every_command_the_demo_prints_works_as_printed() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ANTHROPIC_API_KEY")}
    env.pop("AIJOBS_TOKEN", None)
    with tempfile.TemporaryDirectory(prefix="aijobs-demo-", dir="/tmp") as tmp:
        env.update({"AIJOBS_OFFLINE_DELAY": "0.1", "AIJOBS_DATA_DIR": tmp})
        demo = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "demo",
            "--port",
            str(_free_port()),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert demo.stdout is not None
        printed: list[str] = []
        try:
            while not printed or printed[-1] != "Serving until Ctrl-C.":
                line = await asyncio.wait_for(demo.stdout.readline(), 120)
                assert line, "\n".join(printed)
                printed.append(line.decode().rstrip("\n"))
            out = "\n".join(printed)
            # The embedded server's connection string, for any psql.
            assert "connection string: postgresql://postgres@127.0.0.1:" in out
            start = next(i for i, s in enumerate(printed) if "in another terminal" in s) + 1
            end = printed.index("", start)
            commands = [s.strip() for s in printed[start:end]]
            assert commands[0].startswith("export TOKEN=")
            assert any(" psql " in c for c in commands) and any(" watch " in c for c in commands)
            # Each one, as printed, in a shell in the folder the demo ran in.
            script = "set -e\n" + "".join(f"echo '>>> {i}'\n{c}\n" for i, c in enumerate(commands))
            shell = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                script,
                env=env,
                cwd=Path.cwd(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            ran, _ = await asyncio.wait_for(shell.communicate(), 120)
            text = ran.decode()
            assert shell.returncode == 0, text
            outputs = dict(
                (int(part.split("\n", 1)[0]), part.split("\n", 1)[1])
                for part in text.split(">>> ")[1:]
            )
            assert len(outputs) == len(commands), text
            for i, command in enumerate(commands):
                if command.startswith("curl"):
                    assert '"error"' not in outputs[i] and outputs[i].strip(), (command, text)
                if " psql " in command:
                    assert "job_type" in outputs[i], (command, text)
            assert (
                '"status"' in outputs[commands.index(next(c for c in commands if "-X POST" in c))]
            )
        finally:
            demo.send_signal(signal.SIGINT)
            await asyncio.wait_for(demo.wait(), 60)
    assert demo.returncode == 0
