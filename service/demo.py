"""`aijobs demo`: the whole flow on sample data, watched from the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from service import runtime
from service.api.auth import mint_token
from service.config import Settings
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
    async with runtime.database(settings) as dsn:
        applied = await runtime.run_migrations(settings, dsn)
        _say(f"  migrations: {'applied ' + str(applied) if applied else 'up to date'}")
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
                ok = await _dispatch_and_watch(base, ids, token)
                _say()
                _say(f"API: {base}")
                _say(f"Jobs page: {base}/ (sign in with the token below; it becomes a cookie)")
                _say(f"A token for user {DEMO_USER!r}, valid for 24 hours:")
                _say(f"  export TOKEN={token}")
                auth = '-H "Authorization: Bearer $TOKEN"'
                _say(f"  curl {auth} {base}/api/ai-jobs?limit=5")
                document_id = ids.documents["access-control-policy"]
                _say(f"  curl {auth} -X POST {base}/api/documents/{document_id}/ai-map-controls")
                _say(f"  curl {auth} {base}/api/ai-jobs/<jobId>             # poll a job")
                _say(f"  curl {auth} -N {base}/api/ai-jobs/<jobId>/events   # follow it live")
                _say(f"  AIJOBS_TOKEN=$TOKEN aijobs watch <jobId> --url {base}")
                if serve_after:
                    _say("Serving until Ctrl-C.")
                    await stop.wait()
                return 0 if ok else 1
        finally:
            await pool.close()


async def _dispatch_and_watch(base: str, ids: Any, token: str) -> bool:
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
                return False
        _say("POST /api/session -> 200 (signed in: a session cookie)")
        for job_type, path in requests:
            started = time.perf_counter()
            async with http.post(path) as response:
                body = await response.json()
            elapsed_ms = (time.perf_counter() - started) * 1000
            _say(f"POST {path} -> {response.status} {body}  ({elapsed_ms:.1f} ms)")
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
    return all(job["status"] == "completed" for job in final.values())


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
        return f"score {result['aiMatchScore']}: {result['aiMatchRationale'][:160]}"
    if job["jobType"] == "ai-coverage":
        return f"coverage {result['coverageScore']}%: {result['summary'][:160]}"
    mapped = result.get("mappedControls", [])
    return f"{len(mapped)} controls mapped in {result.get('batches')} batches"
