"""`aijobs demo`: the whole flow on sample data, watched from the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from service import runtime
from service.api.auth import mint_token
from service.config import Settings
from service.db.embedded import SYSTEM_USER
from service.db.pool import create_pool
from service.entities.store import EntityStore
from service.sample import load_sample
from service.watch import follow_job, progress_line

DEMO_OFFLINE_DELAY_S = 0.8
DEMO_USER = "demo-user"


def _say(line: str = "") -> None:
    print(line, flush=True)


async def run(settings: Settings, host: str, port: int, *, serve_after: bool) -> int:
    if not settings.uses_claude and settings.offline_delay_s == 0:
        # The offline analyzer answers at once; slow it down so progress can be watched.
        settings = dataclasses.replace(settings, offline_delay_s=DEMO_OFFLINE_DELAY_S)
    if settings.jwt_secret is None:
        # A secret for this run, so that the demo shows the API as it runs in production.
        settings = dataclasses.replace(settings, jwt_secret=secrets.token_urlsafe(32))
    assert settings.jwt_secret is not None
    token = mint_token(settings.jwt_secret, DEMO_USER, ttl_s=24 * 3600)
    stop = runtime.stop_on_signals()
    _say("aijobs demo")
    where = (
        "DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.data_dir}/"
    )
    who = (
        f"Claude ({settings.model})"
        if settings.uses_claude
        else "offline analyzer (no ANTHROPIC_API_KEY)"
    )
    _say(f"  database: {where}")
    _say(f"  analyzer: {who}")
    if not settings.database_url and os.geteuid() == 0:
        _say(
            f"  as root: the embedded server runs as the system user {SYSTEM_USER} (added if\n"
            "  missing), and every folder above its data and its binaries gets o+x so that it\n"
            "  can reach them; set DATABASE_URL, or run as another user, to avoid both"
        )
    async with runtime.database(settings) as dsn:
        if not settings.database_url:
            _say(f"  connection string: {dsn}")
        applied = await runtime.run_migrations(settings, dsn)
        _say(f"  migrations: {_migrations_line(applied)}")
        pool = await create_pool(
            dsn, settings.pool_min_size, settings.pool_max_size, pooled=settings.pooled
        )
        try:
            ids = await load_sample(EntityStore(pool))
            _say(
                f"  sample: {len(ids.requirements)} requirements, {len(ids.documents)} documents, "
                f"{ids.controls} controls, {len(ids.mappings)} mappings"
            )
            async with (
                runtime.running_worker(settings, dsn, pool),
                runtime.running_api(settings, dsn, host, port, pool),
            ):
                base = f"http://{host}:{port}"
                ok, jobs = await _dispatch_and_watch(base, ids, token)
                _say()
                _say(f"API: {base}")
                _say(f"Jobs page: {base}/ (sign in with the token below; it becomes a cookie)")
                _say(f"A token for user {DEMO_USER!r}, valid for 24 hours, and what to try")
                _say("with it, in another terminal in this folder:")
                for command in _try_next(settings, base, token, ids, jobs):
                    _say(f"  {command}")
                _say()
                if serve_after:
                    _say("Serving until Ctrl-C.")
                    await stop.wait()
                return 0 if ok else 1
        finally:
            await pool.close()


def _migrations_line(applied: list[int]) -> str:
    if not applied:
        return "up to date"
    line = "applied " + ", ".join(str(v) for v in applied)
    skipped = sorted(set(range(applied[0], applied[-1] + 1)) - set(applied))
    if skipped:
        numbers = ", ".join(str(v) for v in skipped)
        line += f" (no {numbers}: that number was never used; nothing is missing)"
    return line


def _aijobs() -> str:
    """How to run the `aijobs` of this installation from here, as a shell would."""
    script = Path(sys.executable).parent / "aijobs"
    on_path = shutil.which("aijobs")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "aijobs"
    with contextlib.suppress(ValueError):
        return str(script.absolute().relative_to(Path.cwd()))
    return shlex.quote(str(script))


def _try_next(
    settings: Settings, base: str, token: str, ids: Any, jobs: dict[str, str]
) -> list[str]:
    """Commands that work as printed, from this folder, while the demo serves."""
    auth = '-H "Authorization: Bearer $TOKEN"'
    aijobs = _aijobs()
    env = ""
    if not settings.database_url and settings.data_dir != Settings().data_dir:
        env = f"AIJOBS_DATA_DIR={shlex.quote(str(settings.data_dir))} "
    document_id = ids.documents["access-control-policy"]
    requirement_id = ids.requirements["ISMS-7.5"]
    job_id = jobs.get("ai-map-controls")
    if job_id is None:
        return [f"export TOKEN={token}"]
    return [
        f"export TOKEN={token}",
        f"curl {auth} '{base}/api/ai-jobs?limit=5'",
        f"curl {auth} -X POST {base}/api/documents/{document_id}/ai-map-controls",
        f"curl {auth} {base}/api/ai-jobs/{job_id}           # one job",
        f"curl {auth} -N {base}/api/ai-jobs/{job_id}/events  # its events",
        f"AIJOBS_TOKEN=$TOKEN {aijobs} dispatch ai-coverage {requirement_id} --watch --url {base}",
        f"AIJOBS_TOKEN=$TOKEN {aijobs} watch {job_id} --url {base}",
        f"{env}{aijobs} psql -c 'TABLE ai_jobs_overview'",
        f"{env}{aijobs} stats",
    ]


async def _dispatch_and_watch(base: str, ids: Any, token: str) -> tuple[bool, dict[str, str]]:
    match_mapping = ids.mappings[0]
    requests = [
        ("ai-match", f"/api/gap-analysis/ai-match/{match_mapping}"),
        ("ai-coverage", f"/api/requirements/{ids.requirements['ISMS-7.5']}/ai-coverage"),
        (
            "ai-map-controls",
            f"/api/documents/{ids.documents['access-control-policy']}/ai-map-controls",
        ),
    ]
    _say()
    jobs: dict[str, str] = {}
    # As the jobs page does: the token is handed over once for a session cookie, which
    # authenticates everything after it; a POST says where it comes from (its Origin).
    cookies = aiohttp.CookieJar(unsafe=True)  # unsafe: it keeps cookies of an IP address
    origin = {"Origin": base}
    async with aiohttp.ClientSession(base, cookie_jar=cookies, headers=origin) as http:
        async with http.post("/api/session", json={"accessToken": token}) as response:
            if response.status != 200:
                _say(f"POST /api/session -> {response.status} {await response.text()}")
                return False, {}
        _say("POST /api/session -> 200 (signed in: a session cookie)")
        for job_type, path in requests:
            started = time.perf_counter()
            async with http.post(path) as response:
                body = await response.json()
            elapsed_ms = (time.perf_counter() - started) * 1000
            _say(f"POST {path} -> {response.status} {json.dumps(body)}  ({elapsed_ms:.1f} ms)")
            jobs[job_type] = body["jobId"]
    _say()

    shown: dict[str, str] = {}

    def show(job_type: str) -> Callable[[dict[str, Any]], None]:
        def _show(job: dict[str, Any]) -> None:
            line = progress_line(job)
            if shown.get(job_type) != line:
                shown[job_type] = line
                _say(f"  {job_type:<16} {line}")

        return _show

    async with aiohttp.ClientSession(cookie_jar=cookies) as session:
        finals = await asyncio.gather(
            *(follow_job(session, base, job_id, show(t)) for t, job_id in jobs.items())
        )
    final = dict(zip(jobs, finals, strict=True))
    _say()
    for job_type, job in final.items():
        _say(f"{job_type}: {job['status']}  {_pickup(job)}")
        _say(f"  {_result_line(job)}")
    return all(job["status"] == "completed" for job in final.values()), jobs


def _pickup(job: dict[str, Any]) -> str:
    from datetime import datetime

    with contextlib.suppress(KeyError, TypeError, ValueError):
        created = datetime.fromisoformat(job["createdAt"])
        started = datetime.fromisoformat(job["startedAt"])
        finished = datetime.fromisoformat(job["finishedAt"])
        return (
            f"(picked up {(started - created).total_seconds() * 1000:.0f} ms after dispatch, "
            f"finished after {(finished - created).total_seconds():.1f} s)"
        )
    return ""


def _result_line(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    if job["status"] == "failed":
        return f"error: {job['errorMessage']}"
    if job["jobType"] == "ai-match":
        return f"score {result['aiMatchScore']}: {_words(result['aiMatchRationale'])}"
    if job["jobType"] == "ai-coverage":
        return f"coverage {result['coverageScore']}%: {_words(result['summary'])}"
    mapped = result.get("mappedControls", [])
    return f"{len(mapped)} controls mapped in {result.get('batches')} batches"


def _words(text: str, width: int = 200) -> str:
    """At most `width` characters, cut between words."""
    return textwrap.shorten(text, width, placeholder=" ...")
