"""The TypeScript client in clients/typescript/ (dispatch, followJob, useAiJob) and the web
app's own polling hook, run by node's test runner under jsdom against a real API and worker.

The node side gets the API's base URL, tokens and the ids of the entities to analyse in
environment variables; its jsdom document is on the API's origin, so relative URLs and the
session cookie work as they do in a browser (clients/typescript/test/setup.ts).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from service.entities.store import EntityStore
from tests.conftest import token_for
from tests.fake_anthropic import Delay, FakeAnthropic
from tests.test_page import answer, seed

Client = TestClient[Any, Any]

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "typescript"
# npm ci from the lock file, once per change of it.
INSTALLED = PACKAGE / "node_modules" / ".installed"
NODE_TIMEOUT_S = 240


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: the TypeScript client's tests need Node 20 and npm")
    return path


async def _run(*command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=PACKAGE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def _install(npm: str) -> None:
    lock = PACKAGE / "package-lock.json"
    if INSTALLED.exists() and INSTALLED.stat().st_mtime >= lock.stat().st_mtime:
        return
    code, output = await _run(npm, "ci", "--no-audit", "--no-fund")
    assert code == 0, f"npm ci failed:\n{output}"
    INSTALLED.touch()


@pytest.mark.timeout(NODE_TIMEOUT_S * 2)
async def test_the_typescript_client_and_the_apps_hook_against_a_real_api(
    client: Client, worker: Any, entities: EntityStore, fake: FakeAnthropic
) -> None:
    _tool("node")
    npm = _tool("npm")
    await _install(npm)
    ids = await seed(entities)
    fake.responder = answer
    fake.default = Delay(0.2)
    env = {
        **os.environ,
        "AIJOBS_TEST_BASE_URL": str(client.make_url("")).rstrip("/"),
        "AIJOBS_TEST_TOKEN": token_for(),
        "AIJOBS_TEST_ANON_TOKEN": token_for(role="anon"),
        "AIJOBS_TEST_ENTITIES": orjson.dumps(
            {
                "mapping": ids["mapping"],
                "requirement": ids["requirement"],
                "document": ids["document"],
                "mapped": ids["mapped"],
            }
        ).decode(),
        "NO_COLOR": "1",
    }
    code, output = await _run(npm, "test", env=env)
    assert code == 0, f"the node tests failed:\n{output[-20000:]}"
    # Every test ran: none was skipped or left out.
    assert "# fail 0" in output and "# skipped 0" in output, output[-3000:]
    assert "# pass 13" in output, output[-3000:]
