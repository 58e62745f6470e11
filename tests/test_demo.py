"""`aijobs demo`, as a new user runs it: no API key, and with or without DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

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
