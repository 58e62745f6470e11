"""Following jobs over HTTP: the SSE stream on the wire, resuming, fan-out to many clients,
a lost listener, shutdown, conditional polling, and `aijobs watch` / `aijobs dispatch`."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import io
import math
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp.test_utils import TestClient, TestServer

from bench.sse_fanout import _raise_open_files_limit, measure
from service import watch
from service.api.app import create_app
from service.api.state import EVENT_HUB
from service.config import Settings
from service.db.embedded import _free_port
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.runtime import running_worker
from tests.conftest import (
    TEST_JWT_SECRET,
    auth_headers,
    make_settings,
    seed_controls,
    token_for,
    wait_for_job,
    wait_until,
)
from tests.fake_anthropic import Delay, FakeAnthropic, Refusal
from tests.pg import DatabaseFactory
from tests.test_api_jobs import make_mapping
from tests.test_auth import wait_answering
from tests.test_events import complete, many_steps, start_processing
from tests.test_processors import dispatch

Client = TestClient[Any, Any]
JobEvent = tuple[int, dict[str, Any]]


def blocks(raw: bytes) -> list[list[tuple[str, str]]]:
    """The blocks of an SSE stream, each as its lines split at the first ': '."""
    text = raw.decode()
    assert text.endswith("\n\n"), text[-200:]
    return [
        [(name, value) for name, _, value in (line.partition(": ") for line in block.split("\n"))]
        for block in text[:-2].split("\n\n")
    ]


def job_events(raw: bytes, *, keepalives: bool = False) -> list[JobEvent]:
    """The job events of a whole stream, each checked to be exactly `event`, `id`, `data`."""
    found = blocks(raw)
    assert found[0] == [("retry", "2000")]
    events: list[JobEvent] = []
    for block in found[1:]:
        if block == [("", "keepalive")]:
            assert keepalives, "a keepalive where none was due"
            continue
        if block[0] == ("event", "delta"):
            # The model's text as it is written: no id, never in the log (test_live_answers).
            assert [name for name, _ in block] == ["event", "data"], block
            continue
        assert [name for name, _ in block] == ["event", "id", "data"], block
        assert block[0][1] == "job"
        events.append((int(block[1][1]), orjson.loads(block[2][1])))
    return events


class Stream:
    """Reads an SSE response block by block, keeping every byte it read."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        self.response = response
        self.raw = bytearray()

    async def next_event(self) -> JobEvent:
        while True:
            block = await asyncio.wait_for(self.response.content.readuntil(b"\n\n"), 30)
            assert block, "the stream ended"
            self.raw += block
            if block.startswith(b"event: job"):
                return job_events(b"retry: 2000\n\n" + block)[0]

    async def until(self, message: str) -> JobEvent:
        while True:
            seq, job = await self.next_event()
            if job["progressMessage"] == message:
                return seq, job

    async def rest(self, *, keepalives: bool = False) -> list[JobEvent]:
        """Read to the end of the stream; returns every job event of the stream."""
        self.raw += await asyncio.wait_for(self.response.content.read(), 30)
        return job_events(bytes(self.raw), keepalives=keepalives)


async def logged_events(pool: asyncpg.Pool, job_id: str, after: int = 0) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, status, progress_message FROM ai_job_events"
        " WHERE job_id = $1 AND id > $2 ORDER BY id",
        uuid.UUID(job_id),
        after,
    )


async def map_controls_job(client: Client, entities: EntityStore) -> str:
    doc = await entities.create_document("Policy", "Access reviews happen quarterly.")
    await seed_controls(entities, 60)  # batches of 25 + 25 + 10
    return await dispatch(client, f"/api/documents/{doc['id']}/ai-map-controls")


@contextlib.asynccontextmanager
async def api(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Client]:
    assert settings.database_url
    app = create_app(settings, settings.database_url, pool)
    async with TestClient(TestServer(app), headers=auth_headers()) as test_client:
        yield test_client


async def get_json(client: Client, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


# -- the stream -------------------------------------------------------------------------


async def test_a_multi_batch_job_on_the_wire(
    client: Client,
    settings: Settings,
    pool: asyncpg.Pool,
    entities: EntityStore,
    fake: FakeAnthropic,
) -> None:
    fake.default = Delay(0.05)
    job_id = await map_controls_job(client, entities)
    stream = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
    # Subscribed while the job is still pending; only then does a worker run it.
    first_seq, first = await stream.next_event()
    assert (first["status"], first["id"]) == ("pending", job_id)
    assert settings.database_url
    async with running_worker(settings, settings.database_url, pool):
        events = await stream.rest()

    # Exact bytes: the retry line, then the job events, the last of them finishing the job.
    assert bytes(stream.raw).startswith(b"retry: 2000\n\nevent: job\nid: %d\ndata: {" % first_seq)
    assert events[0] == (first_seq, first)
    logged = await logged_events(pool, job_id, after=first_seq)
    assert [seq for seq, _ in events[1:]] == [r["id"] for r in logged]
    messages = [job["progressMessage"] for _, job in events]
    assert [m for m in messages if m and m.startswith("Analyz")] == [
        "Analyzing batch 1 of 3...",
        "Analyzed 1 of 3 batches",
        "Analyzing batch 2 of 3...",
        "Analyzing batch 3 of 3... (1 of 3 done)",
        "Analyzed 2 of 3 batches",
        "Analyzed 3 of 3 batches",
    ]
    assert messages == [None] + [r["progress_message"] for r in logged]
    assert [job["status"] for _, job in events] == ["pending"] + ["processing"] * 7 + ["completed"]
    progress = [job["progress"] for _, job in events if job["status"] == "processing"]
    assert progress[1:] == [{"current": n, "total": 3} for n in (0, 1, 1, 1, 2, 3)]
    # The last event is the final job, result and all, exactly as a GET shows it.
    _, final = events[-1]
    assert final == await get_json(client, f"/api/ai-jobs/{job_id}")
    assert final["result"]["batches"] == 3
    assert all(job["result"] is None for _, job in events[:-1])


async def test_last_event_id_resumes_with_exactly_the_missed_events(
    client: Client, worker: Any, pool: asyncpg.Pool, entities: EntityStore, fake: FakeAnthropic
) -> None:
    fake.default = Delay(0.3)
    job_id = await map_controls_job(client, entities)
    path = f"/api/ai-jobs/{job_id}/events"
    first = await client.get(path)
    seen, _ = await Stream(first).until("Analyzing batch 1 of 3...")
    first.close()  # the connection drops mid-job

    async def moved_on() -> bool:
        messages = [r["progress_message"] for r in await logged_events(pool, job_id, seen)]
        return "Analyzed 1 of 3 batches" in messages

    await wait_until(moved_on)
    resumed = await Stream(await client.get(path, headers={"Last-Event-ID": str(seen)})).rest()

    logged = await logged_events(pool, job_id, after=seen)
    assert [(seq, job["status"], job["progressMessage"]) for seq, job in resumed] == [
        (r["id"], r["status"], r["progress_message"]) for r in logged
    ]
    assert resumed[0][1]["progressMessage"] == "Analyzed 1 of 3 batches"
    assert resumed[-1][1]["status"] == "completed"


async def test_a_finished_job_gives_its_final_state_then_closes(
    client: Client, worker: Any, pool: asyncpg.Pool, entities: EntityStore, jobs: JobStore
) -> None:
    mapping = await make_mapping(entities)
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    await wait_for_job(jobs, job_id)
    path = f"/api/ai-jobs/{job_id}/events"
    logged = await logged_events(pool, job_id)

    events = await Stream(await client.get(path)).rest()
    assert events == [(logged[-1]["id"], await get_json(client, f"/api/ai-jobs/{job_id}"))]
    assert events[0][1]["result"]["aiMatchScore"] is not None

    # Resuming a finished job from an early event: the events after it, through the end.
    resumed = await Stream(await client.get(f"{path}?lastEventId={logged[0]['id']}")).rest()
    assert [seq for seq, _ in resumed] == [r["id"] for r in logged[1:]]
    assert resumed[-1][1] == events[0][1]
    # Resuming after the last event: nothing is left; 204 stops EventSource reconnecting.
    done = await client.get(path, headers={"Last-Event-ID": str(logged[-1]["id"])})
    assert done.status == 204


async def test_a_resume_after_a_thousand_missed_events_gets_them_all_then_live_ones(
    client: Client, pool: asyncpg.Pool
) -> None:
    job_id = str(
        await pool.fetchval(
            "INSERT INTO ai_jobs (job_type, entity_id, created_by)"
            " VALUES ('ai-match', 1, 'test-user') RETURNING id"
        )
    )
    path = f"/api/ai-jobs/{job_id}/events"
    first = await client.get(path)
    seen, _ = await Stream(first).next_event()
    first.close()  # the connection drops; a thousand changes happen meanwhile
    await start_processing(pool, uuid.UUID(job_id))
    await many_steps(pool, uuid.UUID(job_id), 1, 1000, total=1002)
    missed = len(await logged_events(pool, job_id, after=seen))
    assert missed == 1001

    stream = Stream(await client.get(path, headers={"Last-Event-ID": str(seen)}))
    await stream.until("Step 1000")
    # Then the live ones, on the same stream.
    await many_steps(pool, uuid.UUID(job_id), 1001, 1002)
    await complete(pool, uuid.UUID(job_id))
    resumed = await stream.rest()
    logged = await logged_events(pool, job_id, after=seen)
    assert [(seq, job["status"], job["progressMessage"]) for seq, job in resumed] == [
        (r["id"], r["status"], r["progress_message"]) for r in logged
    ]
    assert len(resumed) == 1004
    assert [job["progress"]["current"] for _, job in resumed[1:-1]] == list(range(1, 1003))

    # From 0: the job's whole log, through the end.
    replayed = await Stream(await client.get(f"{path}?lastEventId=0")).rest()
    assert [seq for seq, _ in replayed] == [r["id"] for r in await logged_events(pool, job_id)]
    assert len(replayed) == 1005
    assert replayed[-1][1] == await get_json(client, f"/api/ai-jobs/{job_id}")


async def test_errors_are_json_before_the_stream_starts(client: Client, pool: asyncpg.Pool) -> None:
    unknown = await client.get(f"/api/ai-jobs/{uuid.uuid4()}/events")
    assert unknown.status == 404
    assert unknown.headers["Content-Type"].startswith("application/json")
    assert (await unknown.json())["error"]["code"] == "not_found"

    malformed = await client.get("/api/ai-jobs/not-a-uuid/events")
    assert malformed.status == 400
    assert (await malformed.json())["error"]["code"] == "invalid_id"

    job_id = await pool.fetchval(
        "INSERT INTO ai_jobs (job_type, entity_id, created_by) VALUES ('ai-match', 1, 'test-user')"
        " RETURNING id"
    )
    bad_resume = await client.get(f"/api/ai-jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert bad_resume.status == 400
    assert (await bad_resume.json())["error"]["code"] == "invalid_event_id"


async def test_idle_streams_carry_a_keepalive_each_heartbeat_and_events_between(
    dsn: str, fake: FakeAnthropic, pool: asyncpg.Pool
) -> None:
    job_id = await pool.fetchval(
        "INSERT INTO ai_jobs (job_type, entity_id, created_by) VALUES ('ai-match', 1, 'test-user')"
        " RETURNING id"
    )
    heartbeat = 0.2
    async with api(make_settings(dsn, fake.url, sse_heartbeat_s=heartbeat), pool) as client:
        streams = [Stream(await client.get(f"/api/ai-jobs/{job_id}/events")) for _ in range(3)]
        for stream in streams:
            await stream.next_event()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for stream in streams:
            for _ in range(3):
                block = await asyncio.wait_for(stream.response.content.readuntil(b"\n\n"), 10)
                assert block == b": keepalive\n\n"
                stream.raw += block
        # Three keepalives on one stream take about three heartbeats (checked with room for a
        # busy machine): not a keepalive per tick of the clock the streams share.
        assert loop.time() - started > 1.5 * heartbeat

        await pool.execute(
            "UPDATE ai_jobs SET progress_message = 'Between keepalives' WHERE id = $1", job_id
        )
        for stream in streams:
            assert (await stream.until("Between keepalives"))[1]["status"] == "pending"
        await pool.execute(
            "UPDATE ai_jobs SET status = 'failed', error_message = 'Cancelled',"
            " finished_at = now() WHERE id = $1",
            job_id,
        )
        for stream in streams:
            events = await stream.rest(keepalives=True)
            assert [job["progressMessage"] for _, job in events] == [
                None,
                "Between keepalives",
                "Between keepalives",
            ]
            assert events[-1][1]["status"] == "failed"
            assert bytes(stream.raw).count(b": keepalive\n\n") >= 3


async def test_streams_end_cleanly_when_the_api_shuts_down(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    job_id = await pool.fetchval(
        "INSERT INTO ai_jobs (job_type, entity_id, created_by) VALUES ('ai-match', 1, 'test-user')"
        " RETURNING id"
    )
    assert settings.database_url
    server = TestServer(create_app(settings, settings.database_url, pool))
    await server.start_server()
    async with aiohttp.ClientSession(headers=auth_headers()) as session:
        streams = [
            Stream(await session.get(server.make_url(f"/api/ai-jobs/{job_id}/events")))
            for _ in range(5)
        ]
        for stream in streams:
            await stream.next_event()
        # Without the drain, shutdown would wait its full timeout for these handlers.
        await asyncio.wait_for(server.close(), 20)
        for stream in streams:
            events = await stream.rest()  # a clean end of the stream, not a reset
            assert [job["status"] for _, job in events] == ["pending"]


async def test_an_api_with_thousands_of_open_streams_stops_promptly_on_sigterm(
    dsn: str, pool: asyncpg.Pool
) -> None:
    """`aijobs api` holding 2,000 open streams and one upload that never finishes stops on
    SIGTERM: every stream ends cleanly, and the request that never completes is given up
    rather than waited for (the bound is generous: the machine may be busy)."""
    _raise_open_files_limit()
    job_id = await pool.fetchval(
        "INSERT INTO ai_jobs (job_type, entity_id, created_by) VALUES ('ai-match', 1, 'test-user')"
        " RETURNING id"
    )
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "AIJOBS_JWT_SECRET": TEST_JWT_SECRET,
        "AIJOBS_LOG_LEVEL": "warning",
        "AIJOBS_SSE_STREAMS_PER_USER": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "api",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    count = 2000
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=auth_headers()
        ) as session:
            await wait_answering(session, f"{base}/api/ai-jobs?limit=1")
            connecting = asyncio.Semaphore(100)

            async def subscribe() -> Stream:
                async with connecting:
                    response = await session.get(f"{base}/api/ai-jobs/{job_id}/events")
                    stream = Stream(response)
                    await stream.next_event()
                return stream

            streams = await asyncio.wait_for(
                asyncio.gather(*(subscribe() for _ in range(count))), 120
            )
            # A request whose body never arrives: its handler waits for the rest of it.
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/requirements HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + token_for().encode() + b"\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a": '
            )
            try:
                await writer.drain()
                await asyncio.sleep(0.5)

                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 40) == 0
                ended = await asyncio.wait_for(
                    asyncio.gather(*(stream.rest() for stream in streams)), 60
                )
            finally:
                writer.close()
        assert len(ended) == count
        # Each stream ended cleanly after its first event, with nothing more.
        assert all([job["status"] for _, job in events] == ["pending"] for events in ended)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- many clients, a lost listener ------------------------------------------------------


async def test_a_thousand_subscribers_all_get_the_end(
    client: Client, settings: Settings, pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mapping = await make_mapping(entities)
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    url = client.make_url(f"/api/ai-jobs/{job_id}/events")
    count = 1000
    subscribed = 0
    all_subscribed = asyncio.Event()
    # Bounded connecting, so that the server's accept backlog does not overflow.
    connecting = asyncio.Semaphore(100)

    async def subscriber(session: aiohttp.ClientSession, n: int) -> list[JobEvent]:
        nonlocal subscribed
        async with connecting:
            # As many viewers (operators, who see every job): one user may open only a few.
            response = await session.get(url, headers=auth_headers(f"viewer-{n}", "service_role"))
            stream = Stream(response)
            await stream.next_event()
        subscribed += 1
        if subscribed == count:
            all_subscribed.set()
        async with response:
            return await stream.rest()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=auth_headers()) as session:
        tasks = [asyncio.create_task(subscriber(session, n)) for n in range(count)]
        await asyncio.wait_for(all_subscribed.wait(), 60)
        assert settings.database_url
        async with running_worker(settings, settings.database_url, pool):
            streams = await asyncio.wait_for(asyncio.gather(*tasks), 60)

    final = await get_json(client, f"/api/ai-jobs/{job_id}")
    assert final["status"] == "completed"
    last_seq = (await logged_events(pool, job_id))[-1]["id"]
    assert len(streams) == count
    assert all(events[-1] == (last_seq, final) for events in streams)
    assert client.app is not None
    assert client.app[EVENT_HUB].subscriber_count == 0


async def test_every_subscriber_gets_every_change_across_a_terminated_listener(
    settings: Settings,
    worker: Any,
    pool: asyncpg.Pool,
    entities: EntityStore,
    fake: FakeAnthropic,
) -> None:
    # No poll to fall back on within the test: only the catch-up after reconnecting.
    async with api(dataclasses.replace(settings, poll_interval_s=300), pool) as client:
        fake.default = Delay(0.5)
        job_id = await map_controls_job(client, entities)
        path = f"/api/ai-jobs/{job_id}/events"
        streams = [Stream(await client.get(path)) for _ in range(20)]
        starts = []
        for stream in streams:
            seq, job = await stream.next_event()
            starts.append(seq)
            while job["status"] != "processing":
                _, job = await stream.next_event()
        assert client.app is not None
        hub = client.app[EVENT_HUB]
        backend = hub.listener.backend_pid
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", backend)

        received = [await stream.rest() for stream in streams]
        assert hub.listener.reconnects >= 1
        assert hub.listener.backend_pid != backend
    for start, events in zip(starts, received, strict=True):
        logged = await logged_events(pool, job_id, after=start)
        assert [seq for seq, _ in events[1:]] == [r["id"] for r in logged]
        assert events[-1][1]["status"] == "completed"


# -- polling ----------------------------------------------------------------------------


async def test_polling_gets_304_while_nothing_changed(
    client: Client, pool: asyncpg.Pool, entities: EntityStore
) -> None:
    mapping = await make_mapping(entities)
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    path = f"/api/ai-jobs/{job_id}"
    first = await client.get(path)
    etag = first.headers["ETag"]
    assert first.headers["Retry-After"] == "1"
    assert first.headers["Cache-Control"] == "no-cache"

    same = await client.get(path, headers={"If-None-Match": etag})
    assert same.status == 304
    assert await same.read() == b""
    assert (same.headers["ETag"], same.headers["Retry-After"]) == (etag, "1")
    weak = await client.get(path, headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status == 304

    await pool.execute("UPDATE ai_jobs SET progress_message = 'Waiting' WHERE id = $1", job_id)
    changed = await client.get(path, headers={"If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag
    assert (await changed.json())["progressMessage"] == "Waiting"

    await pool.execute(
        "UPDATE ai_jobs SET status = 'failed', error_message = 'Cancelled', finished_at = now()"
        " WHERE id = $1",
        job_id,
    )
    finished = await client.get(path)
    assert finished.status == 200
    assert "Retry-After" not in finished.headers


# -- the command line -------------------------------------------------------------------


async def aijobs(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("AIJOBS_")},
            "AIJOBS_TOKEN": token_for(),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_aijobs_watch_exits_0_when_completed_and_1_when_failed(
    client: Client, worker: Any, entities: EntityStore, fake: FakeAnthropic
) -> None:
    url = str(client.make_url("/"))
    fake.default = Delay(0.1)
    mapping = await make_mapping(entities)
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    code, out, err = await aijobs("watch", job_id, "--url", url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith("completed"), out
    # The model's text, as it is written, is indented under the progress lines (when the
    # watch comes in time for it: test_live_answers).
    progress = [line for line in lines if not line.startswith(" ")]
    assert all(line.split()[0] in ("pending", "processing", "completed") for line in progress)

    fake.enqueue(Refusal())
    other = await make_mapping(entities)
    failing = await dispatch(client, f"/api/gap-analysis/ai-match/{other['id']}")
    code, out, err = await aijobs("watch", failing, "--url", url)
    assert code == 1, (out, err)
    assert f"job {failing} failed" in err and "declined" in err

    code, _, err = await aijobs("watch", str(uuid.uuid4()), "--url", url)
    assert code == 2 and "not found" in err


async def test_aijobs_dispatch_then_watch(
    client: Client, worker: Any, entities: EntityStore, fake: FakeAnthropic
) -> None:
    url = str(client.make_url("/"))
    # Slow enough model calls that the watch, which subscribes a moment after dispatching,
    # is there before the first batch is done.
    fake.default = Delay(0.2)
    doc = await entities.create_document("Policy", "Access reviews happen quarterly.")
    await seed_controls(entities, 30)
    code, out, err = await aijobs("dispatch", "ai-map-controls", str(doc["id"]), "--url", url)
    assert code == 0, err
    job_id = uuid.UUID(out.strip())
    code, out, err = await aijobs("watch", str(job_id), "--url", url)
    assert code == 0, err

    code, out, err = await aijobs(
        "dispatch", "ai-map-controls", str(doc["id"]), "--url", url, "--watch"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert uuid.UUID(lines[0]) != job_id
    assert "Analyzed 1 of 2 batches" in out
    assert lines[-1].startswith("completed")

    code, _, err = await aijobs("dispatch", "ai-coverage", "987654", "--url", url)
    assert code == 2 and "404" in err
    # A wrong token: the 401 says how to give the right one.
    code, _, err = await aijobs(
        "dispatch", "ai-coverage", "1", "--url", url, "--token", "not-a-token"
    )
    assert code == 2 and "401" in err
    assert "--token" in err and "AIJOBS_TOKEN" in err


# -- the benchmark, tiny ----------------------------------------------------------------


async def test_sse_fanout_bench_runs(databases: DatabaseFactory) -> None:
    figures = await measure(databases.admin_dsn, subscribers=20, updates=5, gap_ms=5)
    assert figures["subscribers"] == 20
    assert figures["missed"] == 0
    # A delivery can be seen a hair before the committing client resumes: no sign asserted.
    assert math.isfinite(figures["p50_ms"])
    assert figures["rss_mb"] > 0


def test_the_watcher_knows_the_api_by_its_http_contract_only() -> None:
    source = Path(watch.__file__).read_text()
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {name for name in imported if name and name.startswith("service.")}


def test_the_watcher_parses_sse_split_anywhere() -> None:
    stream = (
        b"retry: 1500\r\n\r\n: keepalive\r\n\r\nevent: job\r\nid: 7\r\n"
        b'data: {"a":\r\ndata: 1}\r\n\r\nid: 8\ndata:x\n\n\xc3\xa9'
    )
    for size in (1, 2, 3, 5, len(stream)):
        parser = watch.SseParser()
        events = [
            event
            for start in range(0, len(stream), size)
            for event in parser.feed(stream[start : start + size])
        ]
        assert events == [
            watch.SseEvent("job", '{"a":\n1}', "7"),
            watch.SseEvent("message", "x", "8"),
        ]
        assert parser.retry_ms == 1500


def test_the_progress_display_redraws_one_line_on_a_terminal() -> None:
    job = {
        "status": "processing",
        "progressMessage": "Analyzing batch 1 of 4...",
        "progress": {"current": 1, "total": 4},
        "errorMessage": None,
    }
    out = io.StringIO()
    display = watch.ProgressDisplay(out, live=True)
    display.show(job)
    display.show(job)
    display.show({**job, "status": "failed", "errorMessage": "Cancelled", "progress": None})
    display.close()
    assert out.getvalue() == (
        "\r\x1b[Kprocessing [#####...............] 1/4 Analyzing batch 1 of 4..."
        "\r\x1b[Kfailed     Cancelled\n"
    )
