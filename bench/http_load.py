"""HTTP: requests per second of dispatch and of polling, against `aijobs api` and against a
bare aiohttp handler (the ceiling), from a load generator in a process of its own.

    python -m bench.http_load [--scale full|tiny] [--connections 64] [--duration 5]

The load generator (`python -m bench.http_load load ...`) is a small keep-alive HTTP/1.1
client on asyncio streams, much lighter than an aiohttp client, so that the Python client
takes as little of the machine's two cores as it can; each of its connections has one
request in flight at a time. Figures:

- dispatch: `POST /api/gap-analysis/ai-match/{id}` over distinct mappings, each a new job
  (dispatch is idempotent per live job: the same mapping again would return the same job),
  by 2,000 users with bearer tokens of their own, so that the per-user dispatch limit (60 a
  minute by default) is in force and never reached. Every answer must be 202.
- poll: `GET /api/ai-jobs/{id}`, each user polling their own job: 200 with the body.
- poll, conditional: the same with `If-None-Match` of the job's ETag: 304, no body.
- the bare ceiling of each: an aiohttp handler of the same shape that touches no database,
  on the same event loop as the API (uvloop when the API process has it loaded, as `aijobs
  api` does where uvloop is installed); the figures say which (`loop`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.common import (
    RESULTS,
    Child,
    admin_dsn,
    cpu_seconds,
    free_port,
    percentile,
    port_answers,
    python,
    report,
    scratch_database,
    wait_until,
)

FULL = {"connections": 64, "duration_s": 5.0, "warmup_s": 1.0, "mappings": 60_000, "users": 2000}
TINY = {"connections": 4, "duration_s": 0.5, "warmup_s": 0.2, "mappings": 400, "users": 20}

JWT_SECRET = "bench-secret-bench-secret-bench-secret"
FIGURES = ("dispatch", "poll", "poll_conditional")
DISPATCH = "/api/gap-analysis/ai-match/{}"
JOB = "/api/ai-jobs/{}"


# -- the bare ceiling ---------------------------------------------------------------------


def bare_app() -> Any:
    """Handlers of the same shape as aijobs', with no auth, no database, no middleware."""
    from aiohttp import web

    job_body = orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "jobType": "ai-match",
            "entityId": 1,
            "status": "pending",
            "progressMessage": None,
            "progress": None,
            "result": None,
            "errorMessage": None,
            "attempts": 0,
            "maxAttempts": 5,
            "runAfter": "2026-01-01T00:00:00+00:00",
            "startedAt": None,
            "finishedAt": None,
            "createdAt": "2026-01-01T00:00:00+00:00",
            "updatedAt": "2026-01-01T00:00:00+00:00",
        }
    )
    etag = '"' + uuid.uuid4().hex + '"'

    async def dispatch(request: web.Request) -> web.Response:
        job_id = str(uuid.uuid4())
        return web.Response(
            status=202,
            body=orjson.dumps({"jobId": job_id, "status": "pending"}),
            content_type="application/json",
            headers={"Location": JOB.format(job_id)},
        )

    async def get_job(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=job_body, content_type="application/json", headers={"ETag": etag})

    app = web.Application()
    app.router.add_post("/api/gap-analysis/ai-match/{id}", dispatch)
    app.router.add_get("/api/ai-jobs/{id}", get_job)
    return app


def serve_bare(port: int, loop: str = "asyncio") -> None:
    from aiohttp import web

    event_loop = None
    if loop == "uvloop":
        import uvloop

        event_loop = uvloop.new_event_loop()
    web.run_app(
        bare_app(), host="127.0.0.1", port=port, access_log=None, print=None, loop=event_loop
    )


def loop_of(pid: int) -> str:
    """The event loop a running process uses: uvloop when its extension is loaded in the
    process, else asyncio's own."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "asyncio"
    return "uvloop" if "/uvloop/loop." in maps else "asyncio"


# -- the load generator -------------------------------------------------------------------


class Plan:
    """What to ask, in turn: request i goes to paths[i % len] with tokens[i % len]."""

    def __init__(self, method: str, paths: list[str], tokens: list[str], conditional: bool):
        self.method = method
        self.paths = paths
        self.tokens = tokens
        self.conditional = conditional
        self.etags: dict[str, str] = {}
        self.next = 0
        self.limit: int | None = None

    def request(self) -> tuple[str, bytes]:
        i = self.next
        self.next += 1
        path = self.paths[i % len(self.paths)]
        token = self.tokens[i % len(self.tokens)] if self.tokens else ""
        lines = [f"{self.method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if self.method == "POST":
            lines.append("Content-Length: 0")
        if self.conditional and path in self.etags:
            lines.append(f"If-None-Match: {self.etags[path]}")
        return path, ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _connection(
    host: str, port: int, plan: Plan, until: float, record_from: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            now = time.monotonic()
            if now >= until or (plan.limit is not None and plan.next >= plan.limit):
                return
            path, request = plan.request()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            etag = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"etag":
                    etag = value.strip().decode()
            if length:
                await reader.readexactly(length)
            if etag is not None and plan.conditional:
                plan.etags[path] = etag
            out["served"] = out.get("served", 0) + 1
            done = time.monotonic()
            if now >= record_from:
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
                out["latencies"].append(done - now)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def generate_load(
    url: str, plan: Plan, connections: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    host, _, port = url.removeprefix("http://").partition(":")
    learn: dict[str, Any] = {"statuses": {}, "latencies": []}
    if plan.conditional:
        # Learn every ETag first, as a poller has after its first answer.
        plan.limit = len(plan.paths)
        far = time.monotonic() + 600
        await asyncio.gather(
            *(_connection(host, int(port), plan, far, far, learn) for _ in range(connections))
        )
        plan.limit = None
    start = time.monotonic()
    record_from = start + warmup_s
    until = record_from + duration_s
    out: dict[str, Any] = {"statuses": {}, "latencies": []}
    cpu_before = time.process_time()
    await asyncio.gather(
        *(_connection(host, int(port), plan, until, record_from, out) for _ in range(connections))
    )
    elapsed = time.monotonic() - record_from
    latencies = out["latencies"] or [0.0]
    return {
        "requests": len(out["latencies"]),
        # Every answer, warm-up (and learning the ETags) included: the server's CPU is
        # measured over all of them.
        "served": out.get("served", 0) + (learn.get("served", 0) if plan.conditional else 0),
        "rps": round(len(out["latencies"]) / elapsed, 1),
        "statuses": {str(k): v for k, v in out["statuses"].items()},
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "client_cpu_s": round(time.process_time() - cpu_before, 2),
    }


def _load_main(args: argparse.Namespace) -> None:
    spec = orjson.loads(Path(args.plan).read_bytes())
    plan = Plan(spec["method"], spec["paths"], spec["tokens"], spec["conditional"])
    result = asyncio.run(
        generate_load(args.url, plan, args.connections, args.warmup, args.duration)
    )
    report("result", **result)


# -- the measurement ----------------------------------------------------------------------


def _tokens(users: int) -> list[str]:
    import jwt

    now = int(time.time())
    return [
        jwt.encode(
            {
                "sub": f"bench-user-{n}",
                "role": "authenticated",
                "iat": now,
                "exp": now + 3600,
                "aud": "authenticated",
            },
            JWT_SECRET,
            algorithm="HS256",
        )
        for n in range(users)
    ]


async def _load(
    base: str, spec: dict[str, Any], connections: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    plan_path = RESULTS / f"plan-{uuid.uuid4().hex[:8]}.json"
    plan_path.write_bytes(orjson.dumps(spec))
    try:
        child = await Child.start(
            [
                python(),
                "-m",
                "bench.http_load",
                "load",
                "--url",
                base,
                "--plan",
                str(plan_path),
                "--connections",
                str(connections),
                "--warmup",
                str(warmup_s),
                "--duration",
                str(duration_s),
            ],
            label="http-load",
        )
        try:
            result = await child.expect("result", within=warmup_s + duration_s + 120)
        finally:
            await child.stop()
    finally:
        plan_path.unlink(missing_ok=True)
    result.pop("event", None)
    return result


async def _serve(argv: list[str], env: dict[str, str], port: int, label: str) -> Child:
    child = await Child.start(argv, env=env, label=label, reports=False)

    async def answers() -> bool:
        if child.proc.returncode is not None:
            raise RuntimeError(f"{label} exited\n{child.log_tail()}")
        return await port_answers(port)

    await wait_until(answers, 60, 0.05, label)
    return child


def _measured(result: dict[str, Any], expect: int, server_pid: int, cpu_before: float) -> None:
    """Add the server's CPU (in all, and per 1,000 answers) and the share of answers that
    were not the expected status."""
    total = sum(result["statuses"].values()) or 1
    result["unexpected_pct"] = round(100 * (1 - result["statuses"].get(str(expect), 0) / total), 2)
    cpu = cpu_seconds(server_pid) - cpu_before
    result["server_cpu_s"] = round(cpu, 2)
    result["server_cpu_s_per_1k"] = round(1000 * cpu / max(result["served"], 1), 3)


async def _backends(conn: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds so far of every other Postgres backend on this database (the API's)."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    cpu: dict[int, float] = {}
    for row in pids:
        with contextlib.suppress(OSError, ValueError):
            cpu[row["pid"]] = cpu_seconds(row["pid"])
    return cpu


def _postgres_measured(
    result: dict[str, Any], before: dict[int, float], after: dict[int, float]
) -> None:
    """Add the CPU the API's Postgres backends used (a backend opened meanwhile: all of it)."""
    cpu = sum(used - before.get(pid, 0.0) for pid, used in after.items())
    result["postgres_cpu_s"] = round(cpu, 2)
    result["postgres_cpu_s_per_1k"] = round(1000 * cpu / max(result["served"], 1), 3)


async def measure(
    server_dsn: str,
    connections: int = 64,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    mappings: int = 60_000,
    users: int = 2000,
    profile: list[str] | None = None,
    only: Sequence[str] = FIGURES,
) -> dict[str, Any]:
    """One run of every HTTP figure (or of those in `only`), aijobs and the bare ceiling side
    by side. `profile`: a profiler command (`py-spy record ... -o FILE`) to attach to the API
    with `--pid` for the run; it is stopped with SIGINT at the end."""
    tokens = _tokens(users)
    results: dict[str, Any] = {}
    async with scratch_database(server_dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        api: Child | None = None
        bare: Child | None = None
        profiler: asyncio.subprocess.Process | None = None
        try:
            documents = max(1, mappings // 100)
            await conn.execute(
                "INSERT INTO requirements (code, title) SELECT 'R-' || g, 'Requirement ' || g"
                " FROM generate_series(1, $1) g",
                mappings // documents,
            )
            await conn.execute(
                "INSERT INTO documents (title, content) SELECT 'Policy ' || g,"
                " 'Access is reviewed quarterly; MFA for remote access.'"
                " FROM generate_series(1, $1) g",
                documents,
            )
            await conn.execute(
                "INSERT INTO requirement_mappings (requirement_id, document_id)"
                " SELECT r.id, d.id FROM requirements r, documents d"
            )
            mapping_ids: list[int] = [
                r["id"] for r in await conn.fetch("SELECT id FROM requirement_mappings ORDER BY id")
            ]
            # One pending job per user to poll, created as that user.
            poll_jobs: list[str] = [
                str(r["id"])
                for r in await conn.fetch(
                    "INSERT INTO ai_jobs (job_type, entity_id, created_by)"
                    " SELECT 'ai-match', $1::bigint + g, 'bench-user-' || g"
                    " FROM generate_series(0, $2 - 1) g RETURNING id",
                    mapping_ids[-1] + 1,
                    users,
                )
            ]
            await conn.execute("VACUUM ANALYZE")

            api_port, bare_port = free_port(), free_port()
            env = {
                "DATABASE_URL": dsn,
                "AIJOBS_JWT_SECRET": JWT_SECRET,
                "AIJOBS_LOG_FORMAT": "json",
            }
            api = await _serve(
                [python(), "-m", "service", "api", "--port", str(api_port)], env, api_port, "api"
            )
            # The ceiling runs on the loop the API runs on: a fair comparison of the handlers.
            loop = loop_of(api.pid)
            results["loop"] = loop
            bare = await _serve(
                [
                    python(),
                    "-m",
                    "bench.http_load",
                    "bare",
                    "--port",
                    str(bare_port),
                    "--loop",
                    loop,
                ],
                {},
                bare_port,
                f"bare-aiohttp-{loop}",
            )
            if profile:
                profiler = await asyncio.create_subprocess_exec(
                    *profile, "--pid", str(api.pid), stdout=asyncio.subprocess.DEVNULL
                )
            api_base, bare_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{bare_port}"
            dispatch_paths = [DISPATCH.format(i) for i in mapping_ids]
            poll_paths = [JOB.format(j) for j in poll_jobs]
            figures = [
                ("dispatch", "POST", dispatch_paths, False, 202),
                ("poll", "GET", poll_paths, False, 200),
                ("poll_conditional", "GET", poll_paths, True, 304),
            ]
            for name, method, paths, conditional, expect in figures:
                if name not in only:
                    continue
                for target, base, child in (("aijobs", api_base, api), ("bare", bare_base, bare)):
                    spec = {
                        "method": method,
                        "paths": paths,
                        "tokens": tokens,
                        "conditional": conditional,
                    }
                    cpu_before = cpu_seconds(child.pid)
                    backends = await _backends(conn) if target == "aijobs" else {}
                    result = await _load(base, spec, connections, warmup_s, duration_s)
                    _measured(result, expect, child.pid, cpu_before)
                    if target == "aijobs":
                        _postgres_measured(result, backends, await _backends(conn))
                    results[f"{name}_{target}"] = result
            created = await conn.fetchval(
                "SELECT count(*) FROM ai_jobs WHERE created_by LIKE 'bench-user-%'"
            )
            results["dispatch_jobs_created"] = created - len(poll_jobs)
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                await asyncio.wait_for(profiler.wait(), 120)
            for server in (api, bare):
                if server is not None:
                    await server.stop()
            await conn.close()
    for name in only:
        results[f"{name}_ratio"] = round(
            results[f"{name}_aijobs"]["rps"] / max(results[f"{name}_bare"]["rps"], 0.1), 3
        )
    return {"connections": connections, "duration_s": duration_s, **results}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_load")
    sub = parser.add_subparsers(dest="command")
    bare = sub.add_parser("bare", help="serve the bare aiohttp ceiling")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    load = sub.add_parser("load", help="run the load generator")
    load.add_argument("--url", required=True)
    load.add_argument("--plan", required=True)
    load.add_argument("--connections", type=int, default=64)
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--connections", type=int, default=0)
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to measure, of {', '.join(FIGURES)}",
    )
    args = parser.parse_args()
    if args.command == "bare":
        serve_bare(args.port, args.loop)
        return
    if args.command == "load":
        _load_main(args)
        return
    preset = TINY if args.scale == "tiny" else FULL
    result = asyncio.run(
        measure(
            admin_dsn(),
            connections=args.connections or int(preset["connections"]),
            duration_s=args.duration or float(preset["duration_s"]),
            warmup_s=float(preset["warmup_s"]),
            mappings=int(preset["mappings"]),
            users=int(preset["users"]),
            only=[name for name in args.only.split(",") if name in FIGURES],
        )
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
